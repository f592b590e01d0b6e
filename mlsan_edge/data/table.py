"""A corpus as one table of per-utterance features, and its on-disk cache.

Every corpus (RAVDESS, MELD, user pickles) becomes an `UtteranceTable`: raw feature arrays with
presence masks, labels, speaker keys and stream positions. The features come from the same
front-ends the device runs (`mlsan_edge.features`), so training sees what the device computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from mlsan_edge.config import FEATURE_VERSION, TEXT_DIM, VISUAL_DIM, VOICE_DIM

log = logging.getLogger(__name__)


@dataclass
class UtteranceTable:
    """N utterances. Missing observations are rows of zeros with mask False."""

    corpus: str
    audio: np.ndarray  # (N, D_a) float32
    visual: np.ndarray  # (N, VISUAL_DIM)
    text: np.ndarray  # (N, TEXT_DIM)
    voice: np.ndarray  # (N, VOICE_DIM) unit-norm voice embeddings
    mask_audio: np.ndarray  # (N,) bool
    mask_visual: np.ndarray
    mask_text: np.ndarray
    mask_voice: np.ndarray
    label: np.ndarray  # (N,) int64, index into EMOTIONS (-1 = unknown)
    speaker: np.ndarray  # (N,) str, stable speaker key
    group: np.ndarray  # (N,) int64 dialogue / stream id
    position: np.ndarray  # (N,) int64 order within the group

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, idx: np.ndarray) -> "UtteranceTable":
        return UtteranceTable(self.corpus, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                              if f.name != "corpus"})

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "corpus"}
        arrays["speaker"] = arrays["speaker"].astype("U")
        np.savez_compressed(path, corpus=np.array(self.corpus), **arrays)

    @classmethod
    def load(cls, path: Path) -> "UtteranceTable":
        with np.load(path, allow_pickle=False) as z:
            return cls(corpus=str(z["corpus"]), **{f.name: z[f.name] for f in fields(cls) if f.name != "corpus"})

    def check(self) -> None:
        """Raise ValueError if any present feature holds NaN/inf (a broken front-end or file)."""
        for m in ("audio", "visual", "text", "voice"):
            x, mask = getattr(self, m), getattr(self, f"mask_{m}")
            bad = mask & ~np.all(np.isfinite(x), axis=1)
            if bad.any():
                raise ValueError(f"{self.corpus}: {int(bad.sum())} utterances have NaN/inf {m} features "
                                 f"(first at row {int(np.argmax(bad))}); re-extract or drop them")


ACTED_PREFIXES = ("ravdess", "emospeech:")  # corpora of acted clips, one stream per speaker (not dialogues)


def acted_rows(speaker: np.ndarray) -> np.ndarray:
    """(N,) bool: rows from an acted corpus (RAVDESS, EmoSpeech and their channel-augmented copies),
    which train with modality dropout and unweighted classes; the rest are dialogues (MELD, pickles)."""
    s = np.asarray(speaker).astype(str)
    return np.logical_or.reduce([np.char.startswith(s, p) for p in ACTED_PREFIXES])


def augmented_rows(speaker: np.ndarray) -> np.ndarray:
    """(N,) bool: rows of channel-augmented copies (speaker keys ending in `~chK`)."""
    return np.char.find(np.asarray(speaker).astype(str), "~ch") >= 0


def empty_table(corpus: str, n: int, audio_dim: int) -> dict:
    return dict(corpus=corpus, audio=np.zeros((n, audio_dim), np.float32),
                visual=np.zeros((n, VISUAL_DIM), np.float32), text=np.zeros((n, TEXT_DIM), np.float32),
                voice=np.zeros((n, VOICE_DIM), np.float32), mask_audio=np.zeros(n, bool),
                mask_visual=np.zeros(n, bool), mask_text=np.zeros(n, bool), mask_voice=np.zeros(n, bool))


def cache_key(*parts) -> str:
    h = hashlib.sha256(json.dumps([FEATURE_VERSION, *map(str, parts)]).encode()).hexdigest()
    return h[:16]


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("MLSAN_CACHE", Path.home() / ".cache" / "mlsan_edge"))
