"""`mlsan-edge run` and `mlsan-edge speakers`: the CLI side of the runtime (parsers + handlers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    """Add the `run` and `speakers` subcommands to an argparse subparsers object."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    r = sub.add_parser("run", help="recognise emotions on a live or recorded stream; one JSON line per utterance",
                       formatter_class=fmt)
    r.add_argument("--audio", required=True, help="audio URI: mic://default, file://speech.flac, file://clip.mp4")
    r.add_argument("--video", default=None, help="video URI: camera://0, csi://0, file://clip.mp4 (default: none)")
    r.add_argument("--text-from", default="none",
                   help="'none', a text file (one line per utterance) or .jsonl/.json of {start, end, text}")
    r.add_argument("--cache", default=None, help="speaker cache (SQLite; created 0600). Default: in memory")
    r.add_argument("--events", required=True, help="write events here as JSON lines ('-' for stdout)")
    r.add_argument("--bundle", default="default")
    r.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    r.add_argument("--on-camera-failure", default="audio_only", choices=["audio_only", "stop"])
    r.add_argument("--budget-policy", default="warn", choices=["warn", "degrade"])
    r.add_argument("--speaker-scoring", default="auto", choices=["auto", "scorer", "cosine"],
                   help="scorer: the bundle's emotion-robust voice scorer (fewer splits of one person into "
                        "several speakers); cosine: plain GE2E cosine; auto: the scorer when the bundle has one")
    r.add_argument("--speaker-threshold", type=float, default=None,
                   help="match score at which a voice is a known speaker (default: the tuned value of the "
                        "chosen scoring; higher splits more, lower merges more)")
    r.add_argument("--no-face", action="store_true", help="ignore the video's faces")
    _add_cache_options(r)
    r.set_defaults(func=run_command)

    s = sub.add_parser("speakers", help="list, enroll, rename, merge, forget, export or import speakers in a cache",
                       formatter_class=fmt)
    s.add_argument("action", choices=["list", "enroll", "rename", "merge", "forget", "export", "import"])
    s.add_argument("ids", nargs="*", help="rename: ID NEW_NAME; merge: KEEP ABSORB; forget: ID (ids or names); "
                   "export: OUT.json; import: IN.json")
    s.add_argument("--cache", required=True, help="speaker cache file")
    s.add_argument("--name", default=None, help="enroll: the speaker's name")
    s.add_argument("--audio", default=None, help="enroll: a few seconds of their speech (wav/flac/mp4)")
    s.add_argument("--bundle", default="default",
                   help="enroll: the bundle whose voice encoder and VAD embed the speech (use the one you `run`)")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_cache_options(s)
    s.set_defaults(func=speakers_command)


def _add_cache_options(p) -> None:
    p.add_argument("--retention-days", type=float, default=None,
                   help="forget speakers not seen for this many days (default: keep them)")
    p.add_argument("--key-file", default=None,
                   help="encrypt the cache's profiles with the key in this file (needs the [secure] extra; "
                        "default: $MLSAN_CACHE_KEY or $MLSAN_CACHE_KEY_FILE when set, else not encrypted)")


def run_command(a: argparse.Namespace) -> int:
    from mlsan_edge.runtime.config import RuntimeConfig
    from mlsan_edge.runtime.text_source import TextSource

    config = RuntimeConfig(on_camera_failure=a.on_camera_failure, budget_policy=a.budget_policy,
                           face="none" if a.no_face else "auto", speaker_threshold=a.speaker_threshold,
                           speaker_scoring=a.speaker_scoring, speaker_retention_days=a.retention_days,
                           cache_key_file=a.key_file)
    text = TextSource.from_file(a.text_from)
    out = sys.stdout if a.events == "-" else open(a.events, "w", encoding="utf-8")
    n = 0
    try:
        from mlsan_edge.runtime.load import load_runtime

        with load_runtime(a.bundle, backend=a.backend, cache=a.cache, config=config) as rt:
            events = rt.stream(audio=a.audio, video=a.video, text=text)
            try:
                for ev in events:
                    out.write(ev.to_json() + "\n")
                    out.flush()
                    n += 1
                    who = ev.speaker_name or f"#{ev.speaker_id}"
                    print(f"[{ev.start_s:7.2f}-{ev.end_s:7.2f}] {who:>10s} {ev.emotion:9s} "
                          f"p={ev.probs[ev.emotion]:.2f} {'face ' if ev.face_used else ''}"
                          f"{ev.timings_ms['total_after_end']:.0f} ms", file=sys.stderr)
            except KeyboardInterrupt:
                events.close()  # stops capture and joins the pipeline threads
                print(f"interrupted after {n} events", file=sys.stderr)
                return 130
            p = rt.stats()["percentiles"].get("total_after_end")
            if p:
                print(f"{n} events; after-end processing p50 {p['p50']:.1f} / p95 {p['p95']:.1f} / "
                      f"p99 {p['p99']:.1f} ms", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _open_cache(path: str, retention_days: float | None = None, key_file: str | None = None):
    from mlsan_edge.config import TEXT_DIM, VISUAL_DIM
    from mlsan_edge.features.audio import AUDIO_DIM
    from mlsan_edge.runtime.speakers import SpeakerCache

    return SpeakerCache(path, dims={"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM},
                        retention_days=retention_days, key_file=key_file)


def enrollment_embeddings(path: str | Path, voice=None, bundle="default"):
    """Voice embeddings of the speech in an audio file: one per VAD utterance (the whole file if none).

    The voice encoder and the VAD are `bundle`'s (the runtime that later matches these voices must
    run the same bundle); `voice` overrides the encoder.
    """
    import numpy as np

    from mlsan_edge.bundle import check_feature_contract, load_bundle
    from mlsan_edge.features.audio import load_audio
    from mlsan_edge.features.vad import segment
    from mlsan_edge.features.voice import VoiceEncoder

    b = load_bundle(bundle)
    check_feature_contract(b)
    wav = load_audio(path)
    voice = voice or VoiceEncoder(b.path("voice_encoder"))
    utts = [u.audio for u in segment(wav, vad=b.path("vad")) if u.duration_s >= 0.5] or [wav]
    return np.stack([voice.embed(u) for u in utts])


def speakers_command(a: argparse.Namespace) -> int:
    need = {"rename": 2, "merge": 2, "forget": 1, "list": 0, "enroll": 0, "export": 1, "import": 1}[a.action]
    if len(a.ids) != need:
        raise ValueError(f"speakers {a.action} takes {need} positional argument(s), got {len(a.ids)}: "
                         "rename ID NEW_NAME | merge KEEP ABSORB | forget ID | export OUT.json | import IN.json")
    if a.action == "enroll":  # the speech is checked before the cache is touched
        if not a.name or not a.audio:
            raise ValueError("speakers enroll needs --name NAME and --audio FILE")
        embeddings = enrollment_embeddings(a.audio, bundle=a.bundle)
    with _open_cache(a.cache, a.retention_days, a.key_file) as cache:
        if a.action == "list":
            rows = [s.to_dict() for s in cache.list()]
            if a.json:
                print(json.dumps(rows))
            else:
                for r in rows:
                    print(f"{r['id']:5d}  {r['name'] or '-':20s} {r['utterances']:5d} utterances  "
                          f"keys: {', '.join(r['keys']) or '-'}")
            return 0
        if a.action == "enroll":
            result = {"id": cache.enroll(a.name, embeddings), "name": a.name}
        elif a.action == "export":
            cache.export(a.ids[0])
            result = {"exported": len(cache), "to": a.ids[0]}
        elif a.action == "import":
            result = {"imported": len(cache.import_(a.ids[0])), "from": a.ids[0]}
        elif a.action == "rename":
            cache.rename(a.ids[0], a.ids[1])
            result = {"id": cache.resolve(a.ids[1]), "name": a.ids[1]}
        elif a.action == "merge":
            result = {"id": cache.merge(a.ids[0], a.ids[1])}
        else:
            cache.forget(a.ids[0])
            result = {"forgot": a.ids[0]}
    print(json.dumps(result) if a.json else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0
