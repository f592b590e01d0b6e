"""MELD (Friends dialogues): utterance text, speaker names, emotions, in dialogue order.

Licence: MELD is GPL-3.0 (declare-lab/MELD); weights trained on it carry that notice.
Only the text is available here; audio and visual modalities are marked missing.
"""

from __future__ import annotations

import csv
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from mlsan_edge.config import EMOTIONS
from mlsan_edge.data.ravdess import DataError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class MeldUtterance:
    dialogue: int
    index: int  # position within the dialogue (Utterance_ID)
    speaker: str
    text: str
    emotion: str

    @property
    def label(self) -> int:
        return EMOTIONS.index(self.emotion)


def clean_text(s: str) -> str:
    """MELD's CSVs carry mojibake from Windows-1252 ('â\\x80\\x99' for a right quote): repair it."""
    # each character back to its byte (cp1252 where it maps, else latin-1 for U+0080-U+009F),
    # then read the bytes as the UTF-8 they were; text that was not mojibake fails and stays
    try:
        raw = b"".join(c.encode("cp1252") if c.encode("cp1252", "ignore") else c.encode("latin-1") for c in s)
        s = raw.decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    s = unicodedata.normalize("NFKC", s).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(s.replace("\u0092", "'").split())


def load_meld(root: str | Path, split: str = "train") -> list[list[MeldUtterance]]:
    """Dialogues of `{root}/{split}_sent_emo.csv`, each a list of utterances in order.

    Raises DataError naming the file for a missing file, missing columns or unknown labels.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MELD split {split!r}; valid: {', '.join(SPLITS)}")
    path = Path(root) / f"{split}_sent_emo.csv"
    if not path.exists():
        raise DataError(f"MELD file not found: {path} (expected {split}_sent_emo.csv from declare-lab/MELD)")
    dialogues: dict[int, list[MeldUtterance]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the columns {missing}; expected MELD's {', '.join(REQUIRED_COLUMNS)}")
        try:
            rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path} is not a UTF-8 CSV file ({e}); expected MELD's {split}_sent_emo.csv") from e
        for line, row in enumerate(rows, start=2):
            if any(row.get(c) is None for c in REQUIRED_COLUMNS):  # a short row: csv fills None
                raise DataError(f"{path}: line {line} has fewer fields than the header; expected "
                                f"{', '.join(REQUIRED_COLUMNS)}")
            emo = row["Emotion"].strip().lower()
            if emo not in EMOTIONS:
                raise DataError(f"{path}: unknown emotion {emo!r} in row {row.get('Sr No.', '?')}; "
                                f"expected one of {', '.join(EMOTIONS)}")
            try:
                dialogue, index = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except ValueError as e:
                raise DataError(f"{path}: line {line}: Dialogue_ID and Utterance_ID must be integers, got "
                                f"{row['Dialogue_ID']!r}, {row['Utterance_ID']!r}") from e
            u = MeldUtterance(dialogue=dialogue, index=index,
                              speaker=row["Speaker"].strip(), text=clean_text(row["Utterance"]), emotion=emo)
            dialogues.setdefault(u.dialogue, []).append(u)
    if not dialogues:
        raise DataError(f"{path} holds no utterances")
    return [sorted(d, key=lambda u: u.index) for _, d in sorted(dialogues.items())]
