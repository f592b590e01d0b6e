"""A person's keys beside their voice profile: a face descriptor centroid and enrolled voices.

The speaker cache (`speakers.py`) knows a person by up to three keys:

* the **voice centroid** of the `SpeakerProfile` (the contract's one profile rule; every voice
  heard of them, as before);
* the **face**: the mean of the 128-d face descriptors (`face_identity.py`) of the face tracks
  their utterances were attributed to; matched by Euclidean distance (`FACE_THRESHOLD`);
* the **enrolled voices**: the voices given at enrolment (`speakers enroll`), each kept (up to
  `MAX_ENROL_VOICES`) beside their unit sum, apart from the moving centroid, so a named person
  stays a fixed verification target (`named_persons.py` scores a voice against each of them);
* the **learned voices**: up to `MAX_LEARNED_VOICES` later voices of the named person that
  verified with a high score against the enrolled ones (adaptive enrolment, `named_persons.py`).

`PersonKeys` is stored as JSON in the speaker row's `identity` column, sealed like the profile
when the cache has a key (the enrolled and learned voices are biometric data like the centroid);
`FaceIndex` is the in-memory nearest-face search.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from mlsan_edge.runtime.face_identity import FACE_DIM

MAX_ENROL_VOICES = 32  # enrolment voices kept one by one (the sum keeps them all)
MAX_LEARNED_VOICES = 16  # learned voices kept (the oldest goes first)
_DECIMALS = 6  # stored precision of a kept voice (float32 holds ~7 digits)
_VERSIONS = itertools.count(1)  # process-wide, so no two states of any person share a version


@dataclass
class PersonKeys:
    """Face and enrolled-voice keys of one person (sums and counts, so merging is exact)."""

    face_sum: np.ndarray = field(default_factory=lambda: np.zeros(FACE_DIM, np.float64))  # (128,)
    face_count: int = 0
    enrol_sum: np.ndarray | None = None  # (voice_dim,) sum of unit enrolment voices
    enrol_count: int = 0
    enrol_voices: list = field(default_factory=list)  # (voice_dim,) float32 unit enrolment voices, oldest first
    learned_voices: list = field(default_factory=list)  # (voice_dim,) float32 unit learned voices, oldest first
    version: int = field(default_factory=lambda: next(_VERSIONS))  # new on every change of the voices
    #                                                  (not stored): caches key on (id, version)

    def face(self) -> np.ndarray | None:
        """(128,) float32 face centroid, or None when the face was never seen."""
        return (self.face_sum / self.face_count).astype(np.float32) if self.face_count else None

    def enrolled_voice(self) -> np.ndarray | None:
        """(voice_dim,) unit centroid of the enrolment voices, or None."""
        if not self.enrol_count or self.enrol_sum is None:
            return None
        c = self.enrol_sum / self.enrol_count
        return (c / max(float(np.linalg.norm(c)), 1e-12)).astype(np.float32)

    def add_face(self, descriptor: np.ndarray) -> None:
        self.face_sum = self.face_sum + np.asarray(descriptor, np.float64).reshape(FACE_DIM)
        self.face_count += 1

    def add_enrolled(self, unit_voice: np.ndarray) -> None:
        v = np.asarray(unit_voice, np.float64).reshape(-1)
        self.enrol_sum = v if self.enrol_sum is None else self.enrol_sum + v
        self.enrol_count += 1
        self.enrol_voices = (self.enrol_voices + [v.astype(np.float32)])[-MAX_ENROL_VOICES:]
        self.version = next(_VERSIONS)

    def add_learned(self, unit_voice: np.ndarray) -> None:
        """Keep a later voice that verified against the enrolled ones (the oldest learned one goes
        beyond `MAX_LEARNED_VOICES`)."""
        v = np.asarray(unit_voice, np.float32).reshape(-1)
        self.learned_voices = (self.learned_voices + [v])[-MAX_LEARNED_VOICES:]
        self.version = next(_VERSIONS)

    def merge(self, other: "PersonKeys") -> None:
        self.face_sum, self.face_count = self.face_sum + other.face_sum, self.face_count + other.face_count
        if other.enrol_count:
            self.enrol_sum = other.enrol_sum.copy() if self.enrol_sum is None else self.enrol_sum + other.enrol_sum
            self.enrol_count += other.enrol_count
        self.enrol_voices = (self.enrol_voices + other.enrol_voices)[-MAX_ENROL_VOICES:]
        self.learned_voices = (self.learned_voices + other.learned_voices)[-MAX_LEARNED_VOICES:]
        self.version = next(_VERSIONS)

    def __bool__(self) -> bool:
        return bool(self.face_count or self.enrol_count)

    def to_dict(self) -> dict:
        d: dict = {}
        if self.face_count:
            d.update(face_sum=self.face_sum.tolist(), face_count=int(self.face_count))
        if self.enrol_count:
            d.update(enrol_sum=self.enrol_sum.tolist(), enrol_count=int(self.enrol_count))
        for k in ("enrol_voices", "learned_voices"):
            if getattr(self, k):
                d[k] = np.round(np.stack(getattr(self, k)).astype(np.float64), _DECIMALS).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "PersonKeys":
        d = d or {}
        k = cls()
        if d.get("face_count"):
            k.face_sum, k.face_count = np.asarray(d["face_sum"], np.float64), int(d["face_count"])
        if d.get("enrol_count"):
            k.enrol_sum, k.enrol_count = np.asarray(d["enrol_sum"], np.float64), int(d["enrol_count"])
        # a cache from before the voices were kept one by one has only the sum: verified against it
        k.enrol_voices = [np.asarray(v, np.float32) for v in d.get("enrol_voices", [])][-MAX_ENROL_VOICES:]
        k.learned_voices = [np.asarray(v, np.float32) for v in d.get("learned_voices", [])][-MAX_LEARNED_VOICES:]
        return k


class FaceIndex:
    """Nearest face centroid among the persons that have one (not thread-safe: the cache's lock)."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self._c = np.zeros((0, FACE_DIM), np.float32)

    def rebuild(self, keys: dict[int, PersonKeys]) -> None:
        rows = [(sid, k.face()) for sid, k in keys.items() if k.face_count]
        self.ids = np.asarray([r[0] for r in rows], np.int64)
        self._c = np.stack([r[1] for r in rows]) if rows else np.zeros((0, FACE_DIM), np.float32)

    def nearest(self, descriptor: np.ndarray) -> tuple[int | None, float]:
        """(person id, Euclidean distance) of the nearest face; (None, inf) when no face is known."""
        if not len(self.ids):
            return None, float("inf")
        d = np.linalg.norm(self._c - np.asarray(descriptor, np.float32)[None], axis=1)
        i = int(np.argmin(d))
        return int(self.ids[i]), float(d[i])

    def __contains__(self, sid: int) -> bool:
        return bool(np.any(self.ids == sid))


__all__ = ["PersonKeys", "FaceIndex", "MAX_ENROL_VOICES", "MAX_LEARNED_VOICES"]
