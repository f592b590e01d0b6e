"""Out of domain: the device path on speech the model never trained on (issue #9's check).

The same code as `mlsan-edge eval --dataset clips` (`mlsan_edge.runtime.clip_eval.evaluate_clips`):
each corpus's clips, in list order, joined with 1 s gaps into one stream and run through
`load_runtime(bundle).stream(...)` with a fresh in-memory speaker cache; events matched to clips by
time overlap (the event overlapping a clip most is its answer; no event counts as wrong).

* GRID-13: the shipped list `talking_grid13` (the 13 shared GRID sentences, neutral read speech,
  six speakers), audio only and audio + video;
* GRID words: `talking_grid_words` (every word of the 8 GRID sentences with a word alignment, s1
  and s2, each said "alone": its span widened by 0.1 s; 0.2-0.8 s, neutral), audio only and audio +
  video: the short commands and digits a voice interface hears, too short for the speaker cache;
* CREMA-D 1001: `talking_cremad1001` (the six utterances of cremad_1001_6emotions_13s.mp4: one actor,
  six emotions), audio only and audio + video;
* EmoSpeech: `--emospeech N` clips (default 150) of the evaluation users
  (`mlsan_edge.data.emospeech.emospeech_eval_speaker`, never trained on), round-robin over the 24
  users (`mlsan_edge.data.clip_lists.emospeech_rows`, seeded), audio only.

Reported per corpus and condition: clips, events, clips_with_event, accuracy over clips (7
classes), macro F1, neutral_rate (share of answers that are neutral) against truth_neutral_rate,
mean confidence of right and of wrong answers, ECE (15 bins) and the OOD-flag rate when events
carry one.

    python benchmarks/out_of_domain.py [--bundle default] [--emospeech 150] [--seed 0] [--gain-db 0] [--json OUT]

`--gain-db G` plays every clip G dB louder (quieter when negative): how much a microphone's gain moves
the answers.

Writes benchmarks/results/out_of_domain.json. `out_of_domain_before_issue9.json` is the same
protocol and code on the default bundle before issue #9 (`--bundle` the bundle of commit c52d73a,
trained on RAVDESS and MELD only, without confidence.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KEEP = ("clips", "events", "clips_with_event", "accuracy", "macro_f1", "neutral_rate", "event_neutral_rate",
        "neutral_by_utterance", "truth_neutral_rate",
        "confidence_right", "confidence_wrong", "ece", "ood_rate", "face_used", "predicted", "per_speaker", "seconds")
GRID = "GRID-13 (neutral read speech, 6 speakers)"
WORDS = "GRID words (48 single neutral words, 2 speakers)"
CREMA = "CREMA-D 1001 (6 emotions)"
EMOSPEECH = "EmoSpeech eval speakers (users outside a studio, 4 emotions)"


def emospeech_clips(root: Path, n: int, seed: int) -> list:
    """`n` clips of EmoSpeech's evaluation users as `Clip`s (round-robin over the users)."""
    from mlsan_edge.data.clip_lists import emospeech_rows
    from mlsan_edge.runtime.clip_list import Clip

    return [Clip(root / p, s, e, where=f"emospeech {p}") for p, s, e in emospeech_rows(root, n, seed)]


def corpora(shared: Path, n_emospeech: int, seed: int) -> dict[str, tuple[list, tuple[str, ...]]]:
    """corpus -> (clips, conditions)."""
    from mlsan_edge.runtime.clip_list import read_clip_list

    talking = shared / "talking"
    return {GRID: (read_clip_list("talking_grid13", talking), ("audio", "audio+video")),
            WORDS: (read_clip_list("talking_grid_words", talking), ("audio", "audio+video")),
            CREMA: (read_clip_list("talking_cremad1001", talking), ("audio", "audio+video")),
            EMOSPEECH: (emospeech_clips(shared / "emospeech", n_emospeech, seed), ("audio",))}


def measure(clips: list, condition: str, bundle: str, gain_db: float = 0.0) -> dict:
    from mlsan_edge.runtime.clip_eval import evaluate_clips

    r = evaluate_clips(clips, bundle, face="none" if condition == "audio" else "auto", gap_s=1.0, progress=False,
                       gain_db=gain_db)
    if condition != "audio" and not r["video"]:
        raise RuntimeError("audio+video asked, but the runtime has no face path (pip install 'mlsan-edge[face]')")
    return {k: r[k] for k in KEEP if k in r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--emospeech", type=int, default=150, help="EmoSpeech clips (round-robin over the eval users)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the EmoSpeech pick")
    ap.add_argument("--gain-db", type=float, default=0.0, help="every clip this many dB louder (< 0: quieter)")
    ap.add_argument("--data", default=str(SHARED), help="folder holding talking/ and emospeech/")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "out_of_domain.json"))
    a = ap.parse_args()

    import mlsan_edge
    from mlsan_edge.bundle import load_bundle

    b = load_bundle(a.bundle, verify=False)
    res = {"code": f"mlsan_edge {mlsan_edge.__version__}", "bundle": a.bundle, "bundle_name": b.manifest.name,
           "bundle_provenance": {k: v for k, v in b.manifest.provenance.items() if k in ("git_commit", "date")},
           "seed": a.seed, "gap_s": 1.0, "gain_db": a.gain_db, "date": time.strftime("%Y-%m-%d"), "corpora": {}}
    for corpus, (clips, conditions) in corpora(Path(a.data), a.emospeech, a.seed).items():
        for cond in conditions:
            r = res["corpora"].setdefault(corpus, {})[cond] = measure(clips, cond, a.bundle, a.gain_db)
            print(f"{corpus:62s} {cond:12s} n {r['clips']:3d}  acc {r['accuracy']:5.1f}%  neutral "
                  f"{r['neutral_rate']:5.1f}% (truth {r['truth_neutral_rate']:.0f}%)  conf right/wrong "
                  f"{r['confidence_right']}/{r['confidence_wrong']}  ECE {r['ece']:.3f}", flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
