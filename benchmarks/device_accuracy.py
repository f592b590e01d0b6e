"""Does the device path keep the model's accuracy? `Runtime.stream` on a RAVDESS stream.

    python benchmarks/device_accuracy.py --bundle B [--actors 17,18,19,20] [--clips 15]

Clips of several actors (seeded shuffle, interleaved across actors) are joined with 1 s of
silence into one FLAC and run through the runtime exactly as `mlsan-edge run --audio file://X`
does: audio only, a fresh speaker cache, VAD segmentation, the cache's own speaker assignment.
Each event is matched to the clip it overlaps. Reports the share of clips with an event, emotion
accuracy over clips, and speaker purity/coverage (clusters vs actors). Use a bundle trained
without these actors. Writes benchmarks/results/device_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def purity_coverage(truth: list[int], pred: list[int]) -> tuple[float, float]:
    """Purity: share of events whose cluster's majority actor is theirs. Coverage: share of
    events whose actor's majority cluster is theirs (1.0 = each actor kept in one cluster)."""
    pairs = list(zip(truth, pred))
    by_cluster = Counter(pairs)
    pur = sum(max(n for (t, c), n in by_cluster.items() if c == cl) for cl in set(pred)) / len(pairs)
    cov = sum(max(n for (t, c), n in by_cluster.items() if t == ac) for ac in set(truth)) / len(pairs)
    return pur, cov


def main(argv=None) -> int:
    import soundfile as sf

    from mlsan_edge.data.ravdess import load_ravdess
    from mlsan_edge.features.audio import load_audio
    from mlsan_edge.runtime import RuntimeConfig, load_runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    p.add_argument("--actors", default="17,18,19,20")
    p.add_argument("--clips", type=int, default=15, help="clips per actor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None, help="speaker-cache threshold (default: the cache's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "device_accuracy.json"))
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    actors = [int(x) for x in a.actors.split(",")]
    clips = load_ravdess(a.data, actors)
    chosen = []
    for ac in actors:
        mine = [c for c in clips if c.actor == ac]
        chosen += [mine[i] for i in rng.permutation(len(mine))[:a.clips]]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    silence = np.zeros(16000, np.float32)
    pieces, spans, t = [silence], [], 1.0
    for c in chosen:
        w = load_audio(c.path)
        spans.append((t, t + len(w) / 16000))
        pieces += [w, silence]
        t += len(w) / 16000 + 1.0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "stream.flac"
        sf.write(wav, np.concatenate(pieces), 16000)
        with load_runtime(bundle=a.bundle, cache=None, config=RuntimeConfig(speaker_threshold=a.threshold)) as rt:
            events = list(rt.stream(audio=f"file://{wav}"))
    matched = {}
    for e in events:  # each event goes to the clip it overlaps most
        overlap = [max(0.0, min(e.end_s, hi) - max(e.start_s, lo)) for lo, hi in spans]
        i = int(np.argmax(overlap))
        if overlap[i] > 0 and i not in matched:
            matched[i] = e
    hits = [matched[i].emotion == chosen[i].emotion for i in matched]
    pur, cov = purity_coverage([chosen[i].actor for i in matched], [matched[i].speaker_id for i in matched])
    res = {"bundle": a.bundle, "speaker_threshold": a.threshold, "actors": actors, "clips": len(chosen), "events": len(events),
           "clips_with_event": round(len(matched) / len(chosen), 4),
           "emotion_accuracy_over_clips": round(100.0 * sum(hits) / len(chosen), 2),
           "emotion_accuracy_over_detected": round(100.0 * sum(hits) / max(len(matched), 1), 2),
           "speakers_found": len({e.speaker_id for e in events}), "speaker_purity": round(pur, 4),
           "speaker_coverage": round(cov, 4)}
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
