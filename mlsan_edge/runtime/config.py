"""`RuntimeConfig`: how the runtime behaves (VAD, budgets, queues, face, speaker matching).

No model dimensions live here: those come from the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlsan_edge.features.vad import VADConfig
from mlsan_edge.runtime.budgets import Budgets

SPEAKER_SCORING = ("auto", "scorer", "cosine")
CAMERA_POLICIES = ("audio_only", "stop")
FACE_ID_MODES = ("auto", "on", "none")
LIVE_SCHEMES = ("mic", "camera", "csi")  # sources that run in real time (files do unless ?realtime=1)


def is_live(uri: str | None) -> bool:
    """Whether a source URI delivers in real time (a device, or a file paced with `realtime=1`)."""
    return uri is not None and (uri.split("://")[0] in LIVE_SCHEMES or "realtime=1" in uri)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the runtime behaves (JSON-serialisable; no model dimensions: those come from the bundle)."""

    vad: VADConfig = field(default_factory=VADConfig)
    budgets: Budgets = field(default_factory=Budgets)
    budget_policy: str = "warn"  # on repeated overrun: "warn", or "degrade" (skip face/text next time)
    budget_patience: int = 3  # consecutive overruns that trigger the policy
    on_camera_failure: str = "audio_only"  # or "stop"
    face: str = "auto"  # "auto" (landmarks when a TFLite interpreter exists), "none", or a .tflite path
    face_fps: float = 10.0  # frames analysed per second of video (the rest are skipped)
    face_max_width: int = 320  # face detection runs on a copy at most this wide (px)
    # who a face is (face_identity.py, the [face-id] extra): "auto" (when dlib and the weights are
    # installed), "on" (required) or "none"; the speaking face is then the person's key
    face_id: str = "auto"
    face_id_refresh_s: float = 1.0  # a face track's descriptor is recomputed at most this often (s)
    # how voices are matched: "scorer" (the bundle's VoiceScorer: emotion directions projected
    # out, centred on the voices heard here, AS-norm; README "Speaker cache"), "cosine" (plain GE2E
    # cosine), or "auto": the scorer when the bundle has one, else cosine
    speaker_scoring: str = "auto"
    speaker_threshold: float | None = None  # match score for "same speaker"; None: the tuned default
    speaker_retention_days: float | None = None  # forget speakers not seen for this long (None: keep)
    cache_key_file: str | None = None  # encrypt the speaker cache with this file's key (speaker_crypto.py;
    #                                    None: $MLSAN_CACHE_KEY / $MLSAN_CACHE_KEY_FILE when set)
    audio_queue: int = 512  # 512-sample chunks between capture and VAD (16 s)
    utterance_queue: int = 8  # utterances waiting for the model
    event_queue: int = 64  # events waiting for the caller
    video_wait_live_s: float = 0.2  # live: how long to wait for frames up to the utterance's end
    video_wait_file_s: float = 30.0  # files: the frame reader may lag the (much faster) audio path
    feature_threads: int = 2  # voice tail and audio features run in parallel after the end
    # start the voice tail, audio features and (timed) text of an utterance during the VAD hangover,
    # once its audio is complete, and use them if the VAD closes that utterance (speculation.py)
    speculate: bool = True
    camera_retry_max_s: float = 10.0  # a lost camera is reopened with backoff 0.5, 1, 2, ... up to this (s)

    def __post_init__(self) -> None:
        if self.on_camera_failure not in CAMERA_POLICIES:
            raise ValueError(f"unknown on_camera_failure {self.on_camera_failure!r}; valid: {', '.join(CAMERA_POLICIES)}")
        if self.face_id not in FACE_ID_MODES:
            raise ValueError(f"unknown face_id {self.face_id!r}; valid: {', '.join(FACE_ID_MODES)}")
        if self.face_fps <= 0:
            raise ValueError(f"face_fps must be > 0, got {self.face_fps}")
        if self.speaker_scoring not in SPEAKER_SCORING:
            raise ValueError(f"unknown speaker_scoring {self.speaker_scoring!r}; valid: {', '.join(SPEAKER_SCORING)}")
