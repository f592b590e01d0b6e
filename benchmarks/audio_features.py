"""Which statistics of the audio front-end carry emotion to unseen speakers: a linear probe per group.

    python benchmarks/audio_features.py [--data ../shared/data]

Every RAVDESS clip (cut by the VAD as training cuts it) and every EmoSpeech clip goes through
`features.audio.utterance_features`; its columns are split by `FEATURE_GROUPS`. A logistic
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_VAD = None


def _features(path: str) -> np.ndarray:
    global _VAD
    from mlsan_edge.features.assets import default_asset
    from mlsan_edge.features.audio import load_audio, utterance_features
    from mlsan_edge.features.vad import SileroVAD, speech_span

    if _VAD is None:
        _VAD = SileroVAD(default_asset("vad"))
    return utterance_features(speech_span(load_audio(path), vad=_VAD))


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
    from mlsan_edge.data.emospeech import emospeech_split, load_emospeech
    from mlsan_edge.data.ravdess import load_ravdess
    from mlsan_edge.features.audio import FEATURE_GROUPS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "audio_features.json"))
    a = p.parse_args(argv)
    rav = load_ravdess(Path(a.data) / "ravdess")
    emo = load_emospeech(Path(a.data) / "emospeech", None)
    with ProcessPoolExecutor(a.workers) as ex:
        rx = np.stack(list(ex.map(_features, [str(c.path) for c in rav], chunksize=16))).astype(np.float64)
        exs = np.stack(list(ex.map(_features, [str(c.path) for c in emo], chunksize=16))).astype(np.float64)
    ry, ractor = np.array([c.label for c in rav]), np.array([c.actor for c in rav])
    ey, espk = np.array([c.label for c in emo]), np.array([c.speaker for c in emo])
    esplit = np.array([emospeech_split(s) for s in espk])
    base = FEATURE_GROUPS["version2"]
    sets = {"version2": [base]}
    sets.update({f"version2 + {g}": [base, s] for g, s in FEATURE_GROUPS.items() if g != "version2"})
    sets["all (version 3)"] = list(FEATURE_GROUPS.values())
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
    doc = {"command": "python benchmarks/audio_features.py", "clips": {"ravdess": len(rav), "emospeech": len(emo)},
           "probe": "logistic regression C=0.05; RAVDESS 5 folds of 4 unseen actors + EmoSpeech eval users",
           "results": results}
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
