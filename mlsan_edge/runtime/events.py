"""What the runtime emits: one `Event` per utterance, serialisable as one JSON line."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

# Timed steps, in pipeline order. `total_after_end` runs from the utterance's end being known
# (the VAD chunk that closed it, or `Session.process` being called) to the event being ready.
STEPS: tuple[str, ...] = ("vad", "embedding", "cache", "audio_features", "face", "text",
                          "stage1", "stage2", "stage3", "total_after_end")


@dataclass
class Event:
    """The emotion of one utterance, who said it, and what it cost.

    Attributes:
        start_s, end_s: utterance bounds, seconds from the stream (or session) start.
        speaker_id: the speaker cache's id; speaker_name its display name or None.
        speaker_similarity: the speaker cache's score of the voice against the nearest known speaker
            (the VoiceScorer's AS-norm score, or cosine with speaker_scoring="cosine" or a bundle
            without a scorer); None when no speaker was known yet.
        new_speaker: True when this utterance created the speaker.
        identified_by: which key chose the speaker: "face" (the speaking face's descriptor), "voice",
            "both" (the face, and the voice agreed), or "none" (speaker_id None: a voice too short
            to tell and no face). Records written before this field read as "voice".
        voice_similarity: the voice's score against the chosen speaker (scorer units or cosine), or None.
        face_distance: Euclidean distance of the speaking face's descriptor to the chosen
            person's face (dlib units; <= 0.5 is the same person), or None (no face, or a new face).
        emotion: the most probable of the 7 classes; probs: class -> probability.
        trust: modality -> stage-2 weight; modalities: the modalities present, in model order.
        timings_ms: step -> milliseconds (`STEPS`; `vad` is the slowest VAD chunk of the utterance).
        over_budget: steps over their budget for this utterance.
        face_used: a face's landmarks produced this utterance's visual vector.
        face: attribution details (faces seen, method, correlation with the voice).
        degraded: what was skipped or missing and why (e.g. "face: skipped after 3 overruns").
        dropped: pending work dropped under overload so far (queue -> count).
        confidence: the calibrated probability of `emotion` (the bundle's temperature, fitted on
            held-out speakers; `mlsan_edge.confidence`): threshold this, not raw `probs`.
        ood: modality -> distance of its features to the training data over the training 99th
            percentile (1.0: as unusual as the most unusual 1 % the model learned from; a
            visual vector above 1.5 is not used and `trust["visual"]` is 0). Empty for a bundle
            without `confidence.json`.
    """

    start_s: float
    end_s: float
    speaker_id: int | None
    speaker_name: str | None
    speaker_similarity: float | None
    emotion: str
    probs: dict[str, float]
    trust: dict[str, float]
    modalities: list[str]
    timings_ms: dict[str, float]
    over_budget: list[str]
    face_used: bool = False
    new_speaker: bool = False
    face: dict = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    text: str | None = None
    identified_by: str = "voice"
    voice_similarity: float | None = None
    face_distance: float | None = None
    confidence: float | None = None
    ood: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        """The event of a `to_dict()`/`to_json()` record (ValueError naming the first bad field)."""
        if not isinstance(d, dict):
            raise ValueError(f"an event is a JSON object, got {type(d).__name__}")
        out = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"event lacks the field {f.name!r}")
                continue
            out[f.name] = v = d[f.name]
            kind = _FIELD_TYPES.get(f.name)
            if kind is not None and not (v is None and f.name in _MAY_BE_NONE) and not _is(v, kind):
                raise ValueError(f"event field {f.name!r} must be {kind}, got {v!r:.80}")
        return cls(**out)

    @classmethod
    def from_json(cls, line: str | bytes) -> "Event":
        """The event of one line written by `to_json()` (ValueError when it is not one)."""
        try:
            d = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"not an event JSON line: {e}") from e
        return cls.from_dict(d)

    def to_json(self) -> str:
        """One line of JSON (floats rounded: ms to 0.01, probabilities to 1e-4)."""
        d = self.to_dict()
        d["start_s"], d["end_s"] = round(self.start_s, 3), round(self.end_s, 3)
        sim = self.speaker_similarity
        d["speaker_similarity"] = round(float(sim), 4) if sim is not None and np.isfinite(sim) else None
        for k in ("voice_similarity", "face_distance", "confidence"):
            v = d[k]
            d[k] = round(float(v), 4) if v is not None and np.isfinite(v) else None
        d["probs"] = {k: round(float(v), 4) for k, v in self.probs.items()}
        d["trust"] = {k: round(float(v), 4) for k, v in self.trust.items()}
        d["ood"] = {k: round(float(v), 3) for k, v in self.ood.items()}
        d["timings_ms"] = {k: round(float(v), 2) for k, v in self.timings_ms.items()}
        return json.dumps(d, separators=(",", ":"))


_MAY_BE_NONE = ("speaker_id", "speaker_name", "speaker_similarity", "text", "voice_similarity", "face_distance",
                "confidence")
# what from_dict accepts per field
_FIELD_TYPES = {"start_s": "number", "end_s": "number", "speaker_id": "int", "speaker_name": "str",
                "speaker_similarity": "number", "emotion": "str", "probs": "dict[str, number]",
                "trust": "dict[str, number]", "modalities": "list[str]", "timings_ms": "dict[str, number]",
                "over_budget": "list[str]", "face_used": "bool", "new_speaker": "bool", "face": "dict",
                "degraded": "list[str]", "dropped": "dict[str, int]", "text": "str", "identified_by": "str",
                "voice_similarity": "number", "face_distance": "number", "confidence": "number",
                "ood": "dict[str, number]"}


def _is(v, kind: str) -> bool:
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    return {
        "number": lambda: num(v), "int": lambda: isinstance(v, int) and not isinstance(v, bool),
        "str": lambda: isinstance(v, str), "bool": lambda: isinstance(v, bool), "dict": lambda: isinstance(v, dict),
        "list[str]": lambda: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "dict[str, number]": lambda: isinstance(v, dict) and all(num(x) for x in v.values()),
        "dict[str, int]": lambda: isinstance(v, dict) and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in v.values()),
    }[kind]()
