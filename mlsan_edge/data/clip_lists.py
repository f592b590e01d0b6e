"""Write the labelled clip lists that `mlsan-edge eval --dataset clips` reads (the lists that ship in
mlsan_edge/assets/clips/ come from here).

    python -m mlsan_edge.data.clip_lists talking   --root ../shared/data/talking   --out mlsan_edge/assets/clips
    python -m mlsan_edge.data.clip_lists emospeech --root ../shared/data/emospeech --out LIST.csv \\
        [--clips 150] [--seed 0] [--speakers ID,ID...]

A list is a CSV with columns path, speaker, emotion (and optional start, end), paths relative to
the corpus folder given as `--root` at evaluation; '#' lines say what the clips are and their
licence (the format: mlsan_edge/runtime/clip_list.py, which this data-side module may not import).
EmoSpeech lists hold the evaluation speakers (`emospeech_eval_speaker`), or the speakers named.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS
from mlsan_edge.data.emospeech import load_emospeech

CREMA = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy", "NEU": "neutral", "SAD": "sadness"}
GRID_NOTE = ("GRID corpus (Cooke, Barker, Cunningham, Shao 2006), zenodo.org/records/3625687; licence CC BY 4.0. "
             "Read speech: every clip is neutral.")
CREMA_NOTE = ("CREMA-D (Cao et al. 2014), actor 1001; licence ODbL 1.0 (database) + DbCL 1.0 (contents). "
              "Emotion from the file name (ANG, DIS, FEA, HAP, NEU, SAD).")
EMOSPEECH_NOTE = ("EmoSpeech dataset v0.1 (RakshakTeam), users recorded outside a studio; licence CC BY-NC-SA 4.0 "
                  "(non-commercial, share-alike). calm -> neutral, angry -> anger, fearful -> fear, happy -> joy.")


def write_clip_list(rows: list[tuple[str, str, str]], out: str | Path, notes: list[str] = ()) -> Path:
    """(path, speaker, emotion) rows as a clip list at `out`, each note a '#' line above the header."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        for n in notes:
            f.write(f"# {n}\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "speaker", "emotion"])
        for p, s, e in rows:
            if e not in EMOTIONS:
                raise ValueError(f"{p}: emotion {e!r} is not one of {', '.join(EMOTIONS)}")
            w.writerow([p, s, e])
    return out


def grid_rows(talking: str | Path) -> list[tuple[str, str, str]]:
    """Every GRID sentence under talking/grid (s1_bbaf2n.mpg: speaker s1), neutral."""
    files = sorted(Path(talking, "grid").glob("*.mpg"))
    if not files:
        raise FileNotFoundError(f"no GRID clips (*.mpg) under {Path(talking, 'grid')}")
    return [(f"grid/{p.name}", p.name.split("_")[0], "neutral") for p in files]


def cremad_rows(talking: str | Path) -> list[tuple[str, str, str]]:
    """The CREMA-D clips under talking/cremad_1001 (1001_DFA_ANG_XX.flv: actor 1001, anger)."""
    files = sorted(Path(talking, "cremad_1001").glob("*.flv"))
    if not files:
        raise FileNotFoundError(f"no CREMA-D clips (*.flv) under {Path(talking, 'cremad_1001')}")
    return [(f"cremad_1001/{p.name}", "cremad" + p.name.split("_")[0], CREMA[p.name.split("_")[2]]) for p in files]


def emospeech_rows(root: str | Path, n: int | None = None, seed: int = 0,
                   speakers: list[str] | None = None) -> list[tuple[str, str, str]]:
    """EmoSpeech clips of the evaluation speakers (or of `speakers`), paths relative to `root`.

    All of them (grouped by speaker, labels.csv order) when `n` is None; else `n` clips taken
    round-robin over the speakers in a seeded order, each speaker's clips in a seeded order, so
    every speaker appears before any appears twice (one or a few clips each)."""
    root = Path(root)
    if speakers:
        clips = [c for c in load_emospeech(root) if c.speaker in set(speakers)]
        unknown = sorted(set(speakers) - {c.speaker for c in clips})
        if unknown:
            raise ValueError(f"no EmoSpeech clips for speaker(s) {', '.join(unknown)} under {root}")
    else:
        clips = load_emospeech(root, split="eval")
    if n is not None:
        rng = np.random.default_rng(seed)
        by: dict[str, list] = {}
        for c in clips:
            by.setdefault(c.speaker, []).append(c)
        queues = [[by[s][i] for i in rng.permutation(len(by[s]))] for s in rng.permutation(sorted(by))]
        picked, k = [], 0
        while len(picked) < n and any(k < len(q) for q in queues):
            picked += [q[k] for q in queues if k < len(q)][:n - len(picked)]
            k += 1
        clips = picked
    return [(c.path.relative_to(root).as_posix(), c.speaker, c.emotion) for c in clips]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("corpus", choices=["talking", "emospeech"])
    ap.add_argument("--root", required=True, help="../shared/data/talking or ../shared/data/emospeech")
    ap.add_argument("--out", required=True, help="talking: a folder (two lists); emospeech: the list's path")
    ap.add_argument("--clips", type=int, default=None, help="emospeech: this many clips (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speakers", default=None, help="emospeech: these speakers (comma-separated) instead of "
                    "the evaluation speakers")
    a = ap.parse_args(argv)
    run = "mlsan-edge eval --dataset clips --data {} --root ../shared/data/{}"
    if a.corpus == "talking":
        out = Path(a.out)
        for name, rows, note in (("talking_grid13.csv", grid_rows(a.root), GRID_NOTE),
                                 ("talking_cremad1001.csv", cremad_rows(a.root), CREMA_NOTE)):
            print(write_clip_list(rows, out / name, [note, "paths relative to ../shared/data/talking: "
                                                     + run.format(name, "talking")]))
        return
    speakers = [s for s in (a.speakers or "").split(",") if s]
    rows = emospeech_rows(a.root, a.clips, a.seed, speakers or None)
    who = f"speakers {', '.join(speakers)}" if speakers else \
        "the evaluation speakers (mlsan_edge.data.emospeech.emospeech_eval_speaker: sha1(speaker) % 5 == 0)"
    print(write_clip_list(rows, a.out, [EMOSPEECH_NOTE, f"{len(rows)} clips of {who}",
                                        "paths relative to ../shared/data/emospeech: "
                                        + run.format(Path(a.out).name, "emospeech")]))


if __name__ == "__main__":
    main()
