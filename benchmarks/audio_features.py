"""Which statistics of the audio front-end carry emotion to unseen speakers: a linear probe per group.

    python benchmarks/audio_features.py [--data ../shared/data]

The audio features of the training tables (`data.extract`, cached: every RAVDESS clip cut by the
VAD, EmoSpeech's training and evaluation users), `features.audio.utterance_features`' output,
are split into columns by `FEATURE_GROUPS`. A logistic
regression (C = 0.05, standardised inputs) is trained on the other RAVDESS actors plus
EmoSpeech's training users and scored on

* RAVDESS: 5 folds of 4 unseen actors (accuracy over 7 classes, mean of the folds);
* EmoSpeech's evaluation users (300 clips of 24 users, 4 emotions; fold 0's model),

for the version-2 statistics alone, each newer group added alone, and everything, with two
normalisations: each speaker's vectors z-scored over that speaker's clips (what stage 1's
profile approximates) and one global standardisation (a stranger's first utterance). A linear
model: it ranks the groups; the network's figures are in the README. Writes
benchmarks/results/audio_features.json. RAVDESS and EmoSpeech are CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _speaker_z(x: np.ndarray, speaker: np.ndarray) -> np.ndarray:
    x = x.copy()
    for s in np.unique(speaker):
        i = speaker == s
        x[i] = (x[i] - x[i].mean(0)) / (x[i].std(0) + 1e-6)
    return x


def probe(rx, ry, ractor, ex, ey, esplit) -> tuple[float, float]:
    """(RAVDESS unseen-actor accuracy %, EmoSpeech evaluation-user accuracy %)."""
    from sklearn.linear_model import LogisticRegression

    train_es, eval_es = esplit == "train", esplit == "eval"
    accs, es_acc = [], None
    for fold in range(5):
        test = (ractor - 1) // 4 == fold
        x = np.vstack([rx[~test], ex[train_es]])
        mu, sd = x.mean(0), x.std(0) + 1e-9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=0.05, max_iter=2000).fit((x - mu) / sd, np.concatenate([ry[~test], ey[train_es]]))
        accs.append(np.mean(clf.predict((rx[test] - mu) / sd) == ry[test]))
        if fold == 0:
            es_acc = np.mean(clf.predict((ex[eval_es] - mu) / sd) == ey[eval_es])
    return round(100 * float(np.mean(accs)), 1), round(100 * float(es_acc), 1)


def main(argv=None) -> int:
    from mlsan_edge.data.extract import emospeech_table, ravdess_table
    from mlsan_edge.config import FEATURE_VERSION
    from mlsan_edge.features.audio import FEATURE_GROUPS
    from mlsan_edge.training_job import encoder_paths

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "audio_features.json"))
    a = p.parse_args(argv)
    # the training tables' features (the same VAD cut and front-end, cached in ~/.cache/mlsan_edge)
    enc = encoder_paths()
    rav = ravdess_table(Path(a.data) / "ravdess", enc["text_encoder"], enc["voice_encoder"], vad=enc["vad"])
    es = {split: emospeech_table(Path(a.data) / "emospeech", enc["text_encoder"], enc["voice_encoder"], split=split,
                                 vad=enc["vad"]) for split in ("train", "eval")}
    rx, ry, ractor = rav.audio.astype(np.float64), rav.label, rav.group
    exs = np.vstack([t.audio for t in es.values()]).astype(np.float64)
    ey, espk = np.concatenate([t.label for t in es.values()]), np.concatenate([t.speaker for t in es.values()])
    esplit = np.concatenate([np.full(len(t), split) for split, t in es.items()])
    base = FEATURE_GROUPS["version2"]
    sets = {"version2": [base]}
    sets.update({f"version2 + {g}": [base, s] for g, s in FEATURE_GROUPS.items() if g != "version2"})
    sets[f"all (version {FEATURE_VERSION})"] = list(FEATURE_GROUPS.values())
    results = {}
    for norm in ("per_speaker", "global"):
        r = _speaker_z(rx, ractor) if norm == "per_speaker" else rx
        e = _speaker_z(exs, espk) if norm == "per_speaker" else exs
        for name, cols in sets.items():
            idx = np.concatenate([np.arange(rx.shape[1])[s] for s in cols])
            acc = probe(r[:, idx], ry, ractor, e[:, idx], ey, esplit)
            results.setdefault(name, {"dims": int(len(idx))})[norm] = {"ravdess_unseen_actors": acc[0],
                                                                       "emospeech_eval_users": acc[1]}
            print(f"{norm:12s} {name:32s} RAVDESS {acc[0]:5.1f}  EmoSpeech {acc[1]:5.1f}", flush=True)
    doc = {"command": "python benchmarks/audio_features.py", "clips": {"ravdess": len(rav), "emospeech": len(exs)},
           "probe": "logistic regression C=0.05; RAVDESS 5 folds of 4 unseen actors + EmoSpeech eval users",
           "results": results}
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
