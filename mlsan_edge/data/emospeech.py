"""EmoSpeech: 2000 short spoken commands by 105 users, recorded outside a studio, 4 emotions.

Licence: CC BY-NC-SA 4.0 (EmoSpeech dataset v0.1, RakshakTeam); weights trained on it inherit it.

Layout expected under `root` (as in ../shared/data/emospeech):
    audio/*.flac   16 kHz mono, cut to the speech with 0.3 s on each side
    labels.csv     file, speaker, emotion (already one of MELD's 7: calm -> neutral, angry ->
                   anger, fearful -> fear, happy -> joy), raw_label, keyword

Speakers are split once, by a hash of their id, so that every tool agrees without a list:
`emospeech_eval_speaker(s)` (sha1 % 5 == 0, 24 of 105 users, 300 clips) are evaluation
speakers, never trained on; `emospeech_calibration_speaker(s)` (sha1 % 5 == 1) are held out of
training too and used only to fit the bundle's temperature; the rest are training speakers.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mlsan_edge.config import EMOTIONS


class EmoSpeechError(ValueError):
    """A folder or labels file that does not look like EmoSpeech."""


@dataclass(frozen=True)
class EmoSpeechClip:
    path: Path
    speaker: str  # the user hash prefix of labels.csv
    emotion: str  # one of EMOTIONS
    keyword: str  # what was said ("help", "stop", "bacho", ...)

    @property
    def label(self) -> int:
        return EMOTIONS.index(self.emotion)

    @property
    def speaker_key(self) -> str:
        return f"emospeech:{self.speaker}"


def _bucket(speaker: str) -> int:
    return int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 5


def emospeech_eval_speaker(speaker: str) -> bool:
    """True for the EmoSpeech users kept for evaluation (never trained on)."""
    return _bucket(speaker.removeprefix("emospeech:")) == 0


def emospeech_calibration_speaker(speaker: str) -> bool:
    """True for the users held out of training to fit the bundle's confidence temperature."""
    return _bucket(speaker.removeprefix("emospeech:")) == 1


def emospeech_split(speaker: str) -> str:
    """"eval", "calibration" or "train"."""
    return "eval" if emospeech_eval_speaker(speaker) else "calibration" if emospeech_calibration_speaker(speaker) \
        else "train"


def load_emospeech(root: str | Path, split: str | None = None) -> list[EmoSpeechClip]:
    """The clips under `root` (all, or those of one `split`: "train", "calibration", "eval"), in
    labels.csv order grouped by speaker."""
    root = Path(root)
    labels = root / "labels.csv"
    if not labels.exists():
        raise EmoSpeechError(f"{root} is not an EmoSpeech folder: expected {labels} and audio/*.flac "
                             "(see ../shared/data/emospeech/README.md)")
    if split not in (None, "train", "calibration", "eval"):
        raise ValueError(f"unknown EmoSpeech split {split!r}; valid: train, calibration, eval")
    with open(labels, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "speaker", "emotion"} - set(reader.fieldnames or [])
        if missing:
            raise EmoSpeechError(f"{labels} lacks the columns {sorted(missing)}; expected file, speaker, emotion")
        rows = list(reader)
    clips = []
    for i, r in enumerate(rows, start=2):
        if r["emotion"] not in EMOTIONS:
            raise EmoSpeechError(f"{labels} line {i}: emotion {r['emotion']!r} is not one of {', '.join(EMOTIONS)}")
        if split is not None and emospeech_split(r["speaker"]) != split:
            continue
        clips.append(EmoSpeechClip(root / r["file"], r["speaker"], r["emotion"], r.get("keyword", "")))
    clips.sort(key=lambda c: c.speaker)  # stable: file order within a speaker
    if not clips:
        raise EmoSpeechError(f"no EmoSpeech clips under {root}" + (f" in split {split!r}" if split else ""))
    return clips
