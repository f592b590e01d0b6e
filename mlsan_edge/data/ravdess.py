"""RAVDESS speech (16 kHz FLAC) joined with OpenFace action units per clip.

Licence: RAVDESS and everything derived from it (features, weights trained on it) is
CC BY-NC-SA 4.0 (Livingstone & Russo 2018).

Layout expected under `root` (as in ../shared/data/ravdess):
    audio16k/Actor_XX/03-01-EE-II-SS-RR-AA.flac
    visual_au35.csv   (one row per clip; joined on `audio_file`)
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS, VISUAL_DIM

log = logging.getLogger(__name__)

# RAVDESS emotion code -> MELD emotion (calm folds into neutral)
RAVDESS_TO_MELD = {1: "neutral", 2: "neutral", 3: "joy", 4: "sadness", 5: "anger",
                   6: "fear", 7: "disgust", 8: "surprise"}
SENTENCES = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
AU_COLUMNS = (
    [f"AU{n:02d}_r_mean" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)]
    + [f"AU{n:02d}_c_frac" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)]
)
assert len(AU_COLUMNS) == VISUAL_DIM


class DataError(ValueError):
    """A data folder or file that does not look like what the loader expects."""


@dataclass(frozen=True)
class RavdessClip:
    path: Path
    actor: int
    emotion: str  # one of EMOTIONS
    intensity: int
    statement: int
    repetition: int
    visual: np.ndarray | None  # (VISUAL_DIM,) float32, or None when the clip has no AU row

    @property
    def label(self) -> int:
        return EMOTIONS.index(self.emotion)

    @property
    def text(self) -> str:
        return SENTENCES[self.statement]

    @property
    def speaker(self) -> str:
        return f"ravdess_actor_{self.actor:02d}"


def parse_name(name: str) -> dict[str, int]:
    """Fields of a RAVDESS file name `03-01-EE-II-SS-RR-AA.flac`."""
    parts = Path(name).stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise DataError(f"{name!r} is not a RAVDESS file name (expected 03-01-EE-II-SS-RR-AA.flac)")
    _, _, emo, inten, stmt, rep, actor = map(int, parts)
    if emo not in RAVDESS_TO_MELD:
        raise DataError(f"{name!r}: emotion code {emo} is not one of RAVDESS's 1-8")
    return {"emotion": emo, "intensity": inten, "statement": stmt, "repetition": rep, "actor": actor}


def read_action_units(csv_path: Path) -> dict[str, np.ndarray]:
    """audio_file -> (VISUAL_DIM,) float32 action-unit vector."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ["audio_file", *AU_COLUMNS] if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{csv_path} lacks the columns {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                            "expected OpenFace AU means/fractions as in ../shared/data/ravdess/visual_au35.csv")
        out = {}
        for row in reader:
            v = np.array([float(row[c]) for c in AU_COLUMNS], np.float32)
            out[row["audio_file"]] = v if np.all(np.isfinite(v)) else None
    return out


def load_ravdess(root: str | Path, actors: list[int] | None = None) -> list[RavdessClip]:
    """Every clip under `root`, optionally only those of `actors`, sorted by actor then name."""
    root = Path(root)
    audio_dir = root / "audio16k"
    if not audio_dir.is_dir():
        raise DataError(f"{root} is not a RAVDESS folder: expected {audio_dir} with Actor_XX/*.flac "
                        "(see ../shared/data/README.md)")
    csv_path = root / "visual_au35.csv"
    aus = read_action_units(csv_path) if csv_path.exists() else {}
    if not aus:
        log.warning("no %s: RAVDESS clips will be audio-only", csv_path)
    clips = []
    for path in sorted(audio_dir.glob("Actor_*/*.flac")):
        meta = parse_name(path.name)
        if actors is not None and meta["actor"] not in actors:
            continue
        clips.append(RavdessClip(path=path, actor=meta["actor"], emotion=RAVDESS_TO_MELD[meta["emotion"]],
                                 intensity=meta["intensity"], statement=meta["statement"],
                                 repetition=meta["repetition"], visual=aus.get(path.name)))
    if not clips:
        raise DataError(f"no RAVDESS clips found under {audio_dir}" + (f" for actors {actors}" if actors else ""))
    return clips
