"""Out of domain: the device path on speech the model never trained on (issue #9's check).

Two streams through `load_runtime(bundle).stream(...)` with a fresh speaker cache each:

* talking: every shared GRID sentence (read speech, neutral; six speakers) and the six CREMA-D 1001
  utterances (one actor, six emotions), shuffled (seed 0) and joined with 1 s gaps into one mp4
  (`person_identity.build_stream`), audio only and audio + video;
* emospeech: short commands of EmoSpeech users recorded outside a studio (not a training corpus
  of the default bundle), `--emospeech N` clips of distinct users (seeded), 1 s gaps, audio only.

Events are matched to clips by time overlap. Reported per corpus and condition: clips, events,
emotion accuracy over clips (7 classes), the share of predictions that are neutral (against the
truth's share), and the mean top probability of right and of wrong answers.

    python benchmarks/out_of_domain.py [--bundle default] [--emospeech 120] [--json OUT]

Runs on the installed mlsan_edge (`PYTHONPATH=OLD_CHECKOUT` measures an earlier one for a "before").
Writes benchmarks/results/out_of_domain.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from person_identity import DATA, build_stream, clips  # benchmarks/person_identity.py

SHARED = DATA.parent  # ../shared/data
CREMA = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy", "NEU": "neutral", "SAD": "sadness"}


def talking_items(seed: int) -> list[tuple[Path, str]]:
    """(file, true emotion): GRID is neutral read speech, CREMA-D's emotion is in the file name."""
    items = [(p, "neutral" if p.suffix == ".mpg" else CREMA[p.name.split("_")[2]]) for p, _ in clips()]
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def emospeech_stream(n: int, seed: int, out: Path) -> list[dict]:
    """`n` EmoSpeech clips of distinct users, joined with 1 s of silence into a FLAC at `out`."""
    import soundfile as sf

    from mlsan_edge.features.audio import load_audio

    root = SHARED / "emospeech"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["speaker"], []).append(r)
    users = rng.permutation(sorted(by_user))
    picks = [by_user[u][int(rng.integers(len(by_user[u])))] for u in users]
    picks = (picks * (n // max(len(picks), 1) + 1))[:n]
    gap = np.zeros(16000, np.float32)
    parts, segs, t = [gap], [], 1.0
    for r in picks:
        a = load_audio(root / r["file"])
        segs.append({"file": r["file"], "person": r["speaker"], "emotion": r["emotion"], "start": t, "end": t + len(a) / 16000})
        parts += [a, gap]
        t += len(a) / 16000 + 1.0
    sf.write(out, np.concatenate(parts), 16000)
    return segs


def run(uri: str, video: str | None, bundle: str) -> list:
    from mlsan_edge.runtime import load_runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with load_runtime(bundle) as rt:
            return list(rt.stream(audio=uri, video=video))


def score(events, segs) -> dict:
    """Accuracy over clips (the event overlapping each clip most), neutral rate, confidence."""
    best: dict[int, tuple[float, object]] = {}
    for e in events:
        ov = [min(e.end_s, s["end"]) - max(e.start_s, s["start"]) for s in segs]
        k = int(np.argmax(ov))
        if ov[k] > 0 and ov[k] > best.get(k, (0.0, None))[0]:
            best[k] = (ov[k], e)
    right, conf_right, conf_wrong, neutral = 0, [], [], 0
    for k, (_, e) in best.items():
        p = max(e.probs.values())
        ok = e.emotion == segs[k]["emotion"]
        right += ok
        (conf_right if ok else conf_wrong).append(p)
        neutral += e.emotion == "neutral"
    n = len(segs)
    return {"clips": n, "events": len(events), "clips_with_event": len(best),
            "accuracy": round(100 * right / n, 1),
            "neutral_rate": round(100 * neutral / max(len(best), 1), 1),
            "truth_neutral_rate": round(100 * sum(s["emotion"] == "neutral" for s in segs) / n, 1),
            "confidence_right": round(float(np.mean(conf_right)), 3) if conf_right else None,
            "confidence_wrong": round(float(np.mean(conf_wrong)), 3) if conf_wrong else None,
            "predicted": {c: sum(e.emotion == c for _, e in best.values()) for c in sorted({e.emotion for _, e in best.values()})}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--emospeech", type=int, default=120, help="EmoSpeech clips (distinct users first)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "out_of_domain.json"))
    a = ap.parse_args()

    import mlsan_edge

    res = {"code": str(Path(mlsan_edge.__file__).parent), "bundle": a.bundle, "seed": a.seed, "corpora": {}}
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = Path(tmp) / "talking.mp4"
        items = talking_items(a.seed)
        segs = [dict(s, emotion=e) for s, (_, e) in zip(build_stream(items, mp4), items)]
        for cond, video in (("audio", None), ("audio+video", f"file://{mp4}")):
            events = run(f"file://{mp4}", video, a.bundle)
            for corpus, keep in (("GRID (neutral read speech, 6 speakers)", lambda s: s["file"].endswith(".mpg")),
                                 ("CREMA-D 1001 (6 emotions)", lambda s: s["file"].endswith(".flv"))):
                res["corpora"].setdefault(corpus, {})[cond] = score(events, [s for s in segs if keep(s)])
        flac = Path(tmp) / "emospeech.flac"
        esegs = emospeech_stream(a.emospeech, a.seed, flac)
        res["corpora"]["EmoSpeech (users outside a studio, 4 emotions)"] = {"audio": score(run(f"file://{flac}", None, a.bundle), esegs)}
    for corpus, conds in res["corpora"].items():
        for cond, r in conds.items():
            print(f"{corpus:48s} {cond:12s} acc {r['accuracy']:5.1f}%  neutral {r['neutral_rate']:5.1f}% "
                  f"(truth {r['truth_neutral_rate']:.0f}%)  conf right/wrong {r['confidence_right']}/{r['confidence_wrong']}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
