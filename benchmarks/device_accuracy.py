"""Does the device path keep the model's accuracy? `Runtime.stream` on a RAVDESS stream, beside `eval`.

    python benchmarks/device_accuracy.py --bundle B [--actors 17,18,19,20] [--clips 60]

Clips of several actors (seeded shuffle, interleaved across actors) are joined with 1 s of
silence into one FLAC and run through the runtime exactly as `mlsan-edge run --audio file://X`
does: audio only, a fresh speaker cache, VAD segmentation, the cache's own speaker assignment.
Each event is matched to the clip it overlaps. Reported:

* device: share of clips with an event, emotion accuracy over clips, speaker purity/coverage,
  mean event confidence and its expected calibration error (ECE, 15 bins) over the clips;
* eval: `mlsan-edge eval --actors ... --stream --modalities audio` with the bundle's ONNX
  student — the same network and front-end, but each actor a separate stream with its true
  identity;
* replay: the eval's features replayed in the device's stream order (one interleaved stream,
  `replay_table`), once with the true actors as speakers and once with the speakers the device
  assigned. Device vs replay-with-device-speakers isolates what the live front-end changes;
  replay-true vs replay-device isolates what speaker clustering costs; eval vs replay-true what
  the interleaving (and its shared context window) costs.

Use a bundle trained without these actors. Writes benchmarks/results/device_accuracy.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

ROOT = Path(__file__).resolve().parents[1]


def _shown(path: str) -> str:
    """`path` as a command line would give it here: relative when under the checkout's parent."""
    p = Path(path).resolve()
    return os.path.relpath(p) if p.is_relative_to(REPO.parent) else str(path)


def replay_accuracy(stages, table, rows: list[int], speakers: list[str]) -> float:
    """Accuracy (%) of `replay_table` over `rows` in that order as one stream, with `speakers`
    as their identities (`table` already audio-only)."""
    from mlsan_edge.data.replay import replay_table

    t = copy.copy(table)
    t.group = np.zeros_like(table.group)
    spk = table.speaker.astype(object)
    spk[rows] = speakers
    t.speaker = spk.astype(str)
    out = replay_table(stages, t, np.asarray(rows))
    return round(100.0 * float(np.mean(out["probs"][rows].argmax(1) == t.label[rows])), 2)


def main(argv=None) -> int:
    import soundfile as sf

    from mlsan_edge.data.ravdess import load_ravdess
    from mlsan_edge.evaluate import evaluate
    from mlsan_edge.metrics import calibration_error, purity_coverage
    from mlsan_edge.features.audio import load_audio
    from mlsan_edge.features.vad import VADConfig
    from mlsan_edge.runtime import RuntimeConfig, load_runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    p.add_argument("--actors", default="17,18,19,20")
    p.add_argument("--clips", type=int, default=60, help="clips per actor (60 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None, help="speaker-cache threshold (default: the tuned one)")
    p.add_argument("--speaker-scoring", default="auto", choices=["auto", "scorer", "cosine"])
    p.add_argument("--min-silence-ms", type=int, default=None,
                   help="VAD silence that ends an utterance (default: VADConfig's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "device_accuracy.json"))
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    actors = [int(x) for x in a.actors.split(",")]
    clips = load_ravdess(a.data, actors)
    chosen = []
    for ac in actors:
        mine = [i for i, c in enumerate(clips) if c.actor == ac]
        chosen += [mine[i] for i in rng.permutation(len(mine))[:a.clips]]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    silence = np.zeros(16000, np.float32)
    pieces, spans, t = [silence], [], 1.0
    for i in chosen:
        w = load_audio(clips[i].path)
        spans.append((t, t + len(w) / 16000))
        pieces += [w, silence]
        t += len(w) / 16000 + 1.0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "stream.flac"
        sf.write(wav, np.concatenate(pieces), 16000)
        vad = VADConfig() if a.min_silence_ms is None else VADConfig(min_silence_ms=a.min_silence_ms)
        config = RuntimeConfig(speaker_threshold=a.threshold, speaker_scoring=a.speaker_scoring, vad=vad)
        with load_runtime(bundle=a.bundle, cache=None, config=config) as rt:
            events = list(rt.stream(audio=f"file://{wav}"))
    matched = {}
    for e in events:  # each event goes to the clip it overlaps most
        overlap = [max(0.0, min(e.end_s, hi) - max(e.start_s, lo)) for lo, hi in spans]
        k = int(np.argmax(overlap))
        if overlap[k] > 0 and k not in matched:
            matched[k] = e
    hits = [matched[k].emotion == clips[chosen[k]].emotion for k in matched]
    pur, cov = purity_coverage([clips[chosen[k]].actor for k in matched], [matched[k].speaker_id for k in matched])
    device = {"clips": len(chosen), "events": len(events), "clips_with_event": round(len(matched) / len(chosen), 4),
              "emotion_accuracy_over_clips": round(100.0 * sum(hits) / len(chosen), 2),
              "emotion_accuracy_over_detected": round(100.0 * sum(hits) / max(len(matched), 1), 2),
              "speakers_found": len({e.speaker_id for e in events}), "speaker_purity": round(pur, 4),
              "speaker_coverage": round(cov, 4)}
    # calibration of what the device says: the event's confidence against being right
    conf = [matched[k].confidence if matched[k].confidence is not None else max(matched[k].probs.values())
            for k in matched]
    device["mean_confidence"] = round(float(np.mean(conf)), 4) if conf else None
    device["ece_percent"] = round(100.0 * calibration_error(conf, hits), 2) if conf else None

    ev = evaluate(a.bundle, "ravdess", a.data, stream=True, actors=actors, modalities=("audio",),
                  backend="onnxruntime", model="student", progress=False)
    # the eval's table rows are the clips in load_ravdess order, which `clips` shares
    from mlsan_edge.data.extract import ravdess_table
    from mlsan_edge.evaluate import hide_modalities
    from mlsan_edge.backends.stages import Stages

    stages = Stages(a.bundle, backend="onnxruntime")
    b = stages.bundle
    table = hide_modalities(ravdess_table(a.data, b.path("text_encoder"), b.path("voice_encoder"), actors=actors,
                                          progress=False), ("audio",))
    rows = [chosen[k] for k in sorted(matched)]
    replay = {"true_speakers": replay_accuracy(stages, table, rows, [f"actor{clips[r].actor}" for r in rows]),
              "device_speakers": replay_accuracy(stages, table, rows,
                                                 [f"spk{matched[k].speaker_id}" for k in sorted(matched)])}
    res = {"bundle": a.bundle, "speaker_scoring": a.speaker_scoring, "speaker_threshold": a.threshold,
           "vad_min_silence_ms": vad.min_silence_ms,
           "actors": actors, "clips_per_actor": a.clips, "seed": a.seed, "device": device,
           "eval": {"accuracy": ev["accuracy"], "n": ev["n"], "command": f"mlsan-edge eval --bundle {a.bundle} "
                    f"--dataset ravdess --data {_shown(a.data)} --actors {a.actors} --stream --modalities audio "
                    "--backend onnxruntime --model student"},
           "replay_in_device_order": replay}
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
