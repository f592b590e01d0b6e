"""The device runtime: sources -> VAD -> speaker -> features -> stages 1-3 -> events.

    >>> from mlsan_edge.runtime import load_runtime
    >>> with load_runtime("default", cache="speakers.db") as rt:
    ...     for event in rt.stream(audio="mic://default", video="camera://0"):
    ...         print(event.speaker_name or event.speaker_id, event.emotion)

Callers that own capture push whole utterances instead:

    >>> with rt.session() as s:
    ...     event = s.process(audio, sample_rate=16000, frames=[image1, image2], text="I see.")

Data flows one way per utterance: VAD segment -> voice embedding -> speaker cache (identify) ->
FiLM/gate parameters (read from the cache) -> audio features -> face features -> text ->
stage 1 -> stage 2 -> stage 3 -> event -> profile update and the speaker's parameters for their
next utterance (after the prediction, as in training).
One conversation (a `stream()` call or a `session()`) is one context history.

`stream()` (`stream.py`) runs capture, VAD, processing and output on separate threads joined
by bounded queues; when one fills, the oldest pending item is dropped and counted
(`Event.dropped`), so memory never grows. Voice partials and face frames are processed while
the person speaks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mlsan_edge.config import EMOTIONS, MODALITIES, SAMPLE_RATE, TEXT_DIM, VISUAL_DIM, VOICE_DIM
from mlsan_edge.runtime.budgets import BudgetTracker, Budgets
from mlsan_edge.runtime.events import Event
from mlsan_edge.features.vad import VADConfig

log = logging.getLogger(__name__)

SPEAKER_SCORING = ("auto", "scorer", "cosine")
CAMERA_POLICIES = ("audio_only", "stop")
LIVE_SCHEMES = ("mic", "camera", "csi")


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
    # how voices are matched: "scorer" (the bundle's VoiceScorer: emotion directions projected
    # out, centred on the voices heard here, AS-norm; README "Speaker cache"), "cosine" (plain GE2E
    # cosine), or "auto": the scorer when the bundle has one, else cosine
    speaker_scoring: str = "auto"
    speaker_threshold: float | None = None  # match score for "same speaker"; None: the tuned default
    audio_queue: int = 512  # 512-sample chunks between capture and VAD (16 s)
    utterance_queue: int = 8  # utterances waiting for the model
    event_queue: int = 64  # events waiting for the caller
    video_wait_live_s: float = 0.2  # live: how long to wait for frames up to the utterance's end
    video_wait_file_s: float = 30.0  # files: the frame reader may lag the (much faster) audio path
    feature_threads: int = 2  # voice tail and audio features run in parallel after the end

    def __post_init__(self) -> None:
        if self.on_camera_failure not in CAMERA_POLICIES:
            raise ValueError(f"unknown on_camera_failure {self.on_camera_failure!r}; valid: {', '.join(CAMERA_POLICIES)}")
        if self.face_fps <= 0:
            raise ValueError(f"face_fps must be > 0, got {self.face_fps}")
        if self.speaker_scoring not in SPEAKER_SCORING:
            raise ValueError(f"unknown speaker_scoring {self.speaker_scoring!r}; valid: {', '.join(SPEAKER_SCORING)}")


class DropOldestQueue:
    """A bounded FIFO whose `put` drops (and counts) the oldest item when full; `close()` ends it."""

    def __init__(self, maxsize: int) -> None:
        self._q: deque = deque()
        self._max = max(1, int(maxsize))
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item, block: bool = False) -> None:
        """Append `item`; when full, drop the oldest (live input) or, with `block`, wait for room
        (recorded input, which can always be read later: nothing is lost)."""
        with self._cond:
            if block:
                self._cond.wait_for(lambda: len(self._q) < self._max or self.closed)
            if len(self._q) >= self._max:
                self._q.popleft()
                self.dropped += 1
            self._q.append(item)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The oldest item; raises queue.Empty on timeout, EOFError once closed and drained."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._q or self.closed, timeout):
                raise queue.Empty
            if self._q:
                item = self._q.popleft()
                self._cond.notify_all()
                return item
            raise EOFError


# --- text ---------------------------------------------------------------------------------------
class TextSource:
    """Text per utterance: a transcriber `fn(audio, start_s, end_s) -> str | None`, a list of
    strings taken in order, or timed segments [(start_s, end_s, text)] matched by overlap."""

    def __init__(self, spec) -> None:
        self._fn = self._lines = self._segments = None
        if spec is None:
            return
        if callable(spec):
            self._fn = spec
        elif isinstance(spec, str):
            self._lines = deque([spec])
        else:
            items = list(spec)
            if items and not isinstance(items[0], str):
                self._segments = [(float(a), float(b), str(t)) for a, b, t in items]
            else:
                self._lines = deque(items)

    @classmethod
    def from_file(cls, path: str | Path | None) -> "TextSource":
        """'none'/None: no text; .jsonl/.json of {start, end, text}: timed; else one line per utterance."""
        if path is None or str(path).lower() == "none":
            return cls(None)
        import json

        p = Path(path)
        raw = p.read_text(encoding="utf-8")
        if p.suffix in (".jsonl", ".json"):
            rows = json.loads(raw) if p.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x.strip()]
            return cls([(r["start"], r["end"], r["text"]) for r in rows])
        return cls([x.strip() for x in raw.splitlines()])

    def __call__(self, audio: np.ndarray, start_s: float, end_s: float) -> str | None:
        if self._fn is not None:
            return self._fn(audio, start_s, end_s)
        if self._lines is not None:
            return (self._lines.popleft() or None) if self._lines else None
        if self._segments:
            best = max(self._segments, key=lambda s: min(end_s, s[1]) - max(start_s, s[0]))
            if min(end_s, best[1]) - max(start_s, best[0]) > 0:
                return best[2]
        return None


# --- one utterance through the model -------------------------------------------------------------
@dataclass
class _Job:
    """An utterance waiting for the model."""

    audio: np.ndarray
    start_s: float
    end_s: float
    t_end: float  # perf_counter when its end was known
    vad_ms: float = 0.0
    embedding: np.ndarray | None = None  # from the streaming embedder, when it ran
    embed_ms: float = 0.0  # embedding work left after the end (set by whoever finishes it)
    frames: list | None = None  # FrameFaces for the push API
    text: str | None = None
    exclude_wait: bool = False  # recorded video: waiting for frames is not counted as processing


class _Conversation:
    """Per-dialogue state: the context history and who spoke last."""

    def __init__(self, stages) -> None:
        self.history = _new_history(stages)
        self.prev_speaker: int | None = None
        self.degraded: set[str] = set()  # persistent conditions, e.g. the camera failed
        self.lock = threading.Lock()

    def reset(self) -> None:
        self.history.reset()
        self.prev_speaker = None


def _new_history(stages):
    if hasattr(stages, "new_history"):
        return stages.new_history()
    import importlib

    mod = importlib.import_module(type(stages).__module__)
    return mod.ContextHistory(stages.history_len, stages.hidden)


class Runtime:
    """Everything loaded once: stages, encoders, speaker cache, face analysis, budgets.

    Build it with `load_runtime`; `Runtime(stages, cache)` lets tests inject fakes.

    Args:
        stages: a `mlsan_edge.backends.stages.Stages` (or anything with its API).
        cache: a `SpeakerCache`.
        config: behaviour (VAD, budgets, queues, face).
        voice: a `VoiceEncoder` (default: the packaged one, one thread).
        text_encoder: a `TextEncoder`, loaded on first text when None.
    """

    def __init__(self, stages, cache, config: RuntimeConfig = RuntimeConfig(), voice=None, text_encoder=None) -> None:
        from mlsan_edge.features.audio import utterance_features
        from mlsan_edge.features.voice import VoiceEncoder

        self.stages, self.cache, self.config = stages, cache, config
        self.classes = tuple(getattr(stages, "classes", EMOTIONS))
        self.voice = voice if voice is not None else VoiceEncoder(num_threads=1)
        self._text_encoder = text_encoder
        self._audio_features = utterance_features
        self.budgets = BudgetTracker(config.budgets, config.budget_policy, config.budget_patience)
        self._pool = ThreadPoolExecutor(max(1, config.feature_threads), thread_name_prefix="mlsan-feat")
        self._model_lock = threading.Lock()  # stages may hold non-reentrant sessions
        self._face = None
        self._face_lock = threading.Lock()
        from mlsan_edge.runtime.face import VisualBaselines

        self.baselines = VisualBaselines()
        gs = stages.global_stats
        self._visual_fill = np.asarray(gs.mean.get("visual", np.zeros(VISUAL_DIM)), np.float32)
        self.dims = {"audio": int(stages.audio_dim), "visual": VISUAL_DIM, "text": TEXT_DIM}
        self._callbacks: list[Callable[[Event], None]] = []
        self._closed = False

    # --- lazily loaded parts --------------------------------------------------------------------
    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from mlsan_edge.features.text import TextEncoder

            self._text_encoder = TextEncoder(num_threads=1)
        return self._text_encoder

    def face_analyzer(self):
        """The shared `FaceAnalyzer` (None when config.face == "none")."""
        with self._face_lock:
            if self._face is None and self.config.face != "none":
                from mlsan_edge.runtime.face import FaceAnalyzer

                self._face = FaceAnalyzer(self.config.face, self.config.face_max_width)
            return self._face

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        """Call `fn(event)` for every event of every stream and session (from the producing thread)."""
        self._callbacks.append(fn)

    def stats(self) -> dict:
        """Rolling p50/p95/p99 per step (ms) and the budgets."""
        return {"percentiles": self.budgets.percentiles(), "budgets": self.config.budgets.to_dict()}

    # --- the per-utterance path -----------------------------------------------------------------
    def _process(self, conv: _Conversation, job: _Job, face_frames: Callable[[], tuple[list, float]] | None,
                 text_source: TextSource | None, dropped: dict[str, int]) -> Event:
        """Run one utterance through the model; returns its event (profile updated afterwards)."""
        from mlsan_edge.runtime.face import visual_features

        tm: dict[str, float] = {"vad": job.vad_ms}
        degraded: list[str] = sorted(conv.degraded)
        clock = time.perf_counter

        # voice tail and audio features in parallel (onnxruntime and numpy FFTs release the GIL)
        def embed():
            t = clock()
            e = job.embedding if job.embedding is not None else self.voice.embed(job.audio)
            return e, (clock() - t) * 1000 + job.embed_ms

        def afeat():
            t = clock()
            return self._audio_features(job.audio), (clock() - t) * 1000

        fut_a = self._pool.submit(afeat)
        emb, tm["embedding"] = embed()

        t = clock()
        match = self.cache.identify(emb)
        sid = match.speaker_id
        # FiLM/gate parameters come from the speaker's earlier utterances (`speaker_voice`), so
        # they were computed and cached after the speaker's previous utterance; only a new (or
        # enrolled, imported, merged) speaker needs them computed now
        blob = self.cache.get_params(sid)
        params_cached = blob is not None
        if params_cached:
            params = self.stages.params_from_bytes(blob)
        else:
            params = self._compute_params(sid, emb)
        tm["cache"] = (clock() - t) * 1000

        # face
        t = clock()
        visual, face_info, face_used = None, {}, False
        if face_frames is not None:
            if self.budgets.should_skip("face"):
                degraded.append("face: skipped after repeated budget overruns")
            else:
                frames, wait_ms = face_frames()
                if wait_ms:
                    tm["face_wait"] = wait_ms
                res = visual_features(frames, job.audio, job.start_s, sid, self.baselines)
                a = res.attribution
                face_info = {"faces": a.n_faces, "method": a.method, "frames": res.frames,
                             "correlation": None if a.correlation is None else round(a.correlation, 3),
                             "analysed_frames": len(frames)}
                if res.vector is not None:
                    visual = np.where(np.isfinite(res.vector), res.vector, self._visual_fill).astype(np.float32)
                    face_used = True
                elif res.reason:
                    degraded.append(f"visual: {res.reason}")
                    face_info["reason"] = res.reason
        tm["face"] = (clock() - t) * 1000 - (tm.get("face_wait", 0.0) if job.exclude_wait else 0.0)

        # text
        t = clock()
        text_vec, text = None, job.text
        if text is None and text_source is not None:
            text = text_source(job.audio, job.start_s, job.end_s)
        if text and self.budgets.should_skip("text"):
            degraded.append("text: skipped after repeated budget overruns")
            text = None
        if text:
            text_vec = self.text_encoder.embed(text)
        tm["text"] = (clock() - t) * 1000

        audio_vec, tm["audio_features"] = fut_a.result()

        with self._model_lock:
            t = clock()
            calibrated = self.stages.stage1(audio_vec, visual, params)
            tm["stage1"] = (clock() - t) * 1000
            t = clock()
            fused, trust = self.stages.stage2(text_vec, calibrated, params)
            tm["stage2"] = (clock() - t) * 1000
            t = clock()
            probs, latent = self.stages.stage3(fused, conv.prev_speaker == sid, conv.history)
            tm["stage3"] = (clock() - t) * 1000
        conv.prev_speaker = sid
        # waiting for a recorded video's decoder to catch up is not processing: leave it out
        tm["total_after_end"] = (clock() - job.t_end) * 1000 - (tm.get("face_wait", 0.0) if job.exclude_wait else 0.0)
        over = self.budgets.record(tm)

        probs = np.asarray(probs, np.float64).reshape(-1)
        present = [m for m, v in zip(MODALITIES, (text_vec, audio_vec, visual)) if v is not None]
        name = self.cache.name(sid)
        similarity = float(match.similarity) if np.isfinite(match.similarity) else None  # None: first voice
        event = Event(
            start_s=float(job.start_s), end_s=float(job.end_s), speaker_id=sid, speaker_name=name,
            speaker_similarity=similarity, new_speaker=bool(match.is_new),
            emotion=self.classes[int(np.argmax(probs))], probs=dict(zip(self.classes, map(float, probs))),
            trust={k: float(v) for k, v in dict(trust).items()}, modalities=present,
            timings_ms={k: float(v) for k, v in tm.items()}, over_budget=over, face_used=face_used,
            face=face_info, degraded=degraded, dropped=dict(dropped), text=text)
        event.params_cached = params_cached  # not serialised: for tests and benchmarks

        # after the prediction, as in training (mlsan_edge.data.replay.profile_inputs); the
        # parameters for the speaker's next utterance are computed now, off the latency path
        t = clock()
        self.cache.update_profile(sid, {"audio": audio_vec, "visual": visual, "text": text_vec},
                                  latent=np.asarray(latent))
        self._compute_params(sid)
        event.timings_ms["profile_update"] = (clock() - t) * 1000
        for cb in self._callbacks:
            _safe_call(cb, event)
        return event

    def _compute_params(self, sid: int, current_voice: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """FiLM/gate parameters for the speaker's next utterance from their profile as it stands;
        cached in the speaker cache under the profile version they were computed from."""
        from mlsan_edge.profile import profile_row, speaker_voice
        from mlsan_edge.profile import ModalityStats

        version = self.cache.profile_version(sid)
        profile = self.cache.get_profile(sid)
        for m, d in self.dims.items():
            profile.stats.setdefault(m, ModalityStats(d))  # e.g. a speaker enrolled with voice only
        with self._model_lock:
            params = self.stages.speaker_params(profile_row(profile, self.stages.global_stats),
                                                speaker_voice(profile, current_voice))
        self.cache.put_params(sid, self.stages.params_to_bytes(params), version)
        return params

    # --- public API ---------------------------------------------------------------------------
    def session(self, on_event: Callable[[Event], None] | None = None) -> "Session":
        """A push session (one conversation) for callers that own capture."""
        self._check_open()
        return Session(self, on_event)

    def stream(self, audio: str, video: str | None = None, text=None,
               on_event: Callable[[Event], None] | None = None) -> Iterator[Event]:
        """Events of a live or recorded stream, one per utterance, as they are ready.

        Args:
            audio: audio source URI (mic://default, file://speech.flac, file://clip.mp4, synth://tones).
            video: video source URI (camera://0, csi://0, file://clip.mp4) or None for audio only.
            text: None; a transcriber `fn(audio, start_s, end_s) -> str | None`; a list of strings
                (one per utterance, in order); timed segments [(start_s, end_s, text)]; or a `TextSource`.
            on_event: called with each event from the processing thread.
        """
        self._check_open()
        from mlsan_edge.runtime.live import LiveStream

        return LiveStream(self, audio, video, text if isinstance(text, TextSource) else TextSource(text), on_event).run()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this runtime is closed; load_runtime() a new one")

    def close(self) -> None:
        """Release threads and the speaker cache (idempotent)."""
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True)
            close = getattr(self.cache, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _safe_call(cb, event) -> None:
    try:
        cb(event)
    except Exception:  # a caller's bug must not stop the pipeline
        log.exception("event callback %r failed", cb)


# --- push sessions ------------------------------------------------------------------------------
class Session:
    """One conversation fed by the caller: each `process` call is one utterance (thread-safe)."""

    def __init__(self, runtime: Runtime, on_event=None) -> None:
        self.runtime = runtime
        self._conv = _Conversation(runtime.stages)
        self._conv.reset()
        self._clock_s = 0.0  # stream time of the next utterance's start
        self._callbacks = [on_event] if on_event else []
        self._lock = threading.Lock()
        self.closed = False

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        self._callbacks.append(fn)

    def process(self, audio: np.ndarray, sample_rate: int, frames: Sequence | None = None,
                text: str | None = None) -> Event:
        """Recognise one utterance.

        Args:
            audio: (n,) mono float samples in [-1, 1] (int16 is scaled) of one utterance.
            sample_rate: Hz; resampled to 16 kHz when different.
            frames: BGR images (H, W, 3) uint8 spread evenly over the utterance, or `Frame(t, image)`
                with t in seconds from the utterance's first sample; None for no video.
            text: what was said, if known.

        Returns:
            The utterance's `Event` (start_s/end_s count from the session's first utterance).
        """
        t_end = time.perf_counter()
        from mlsan_edge.features.audio import resample

        a = np.asarray(audio)
        if a.ndim != 1:
            raise ValueError(f"process() takes mono audio of shape (n,), got {a.shape}; average the channels first")
        if np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.float32) / 32768.0
        a = resample(a.astype(np.float32), int(sample_rate), SAMPLE_RATE)
        if a.size < SAMPLE_RATE // 10:
            raise ValueError(f"utterance of {a.size} samples at 16 kHz is too short; pass at least 0.1 s of speech")
        with self._lock:
            if self.closed:
                raise RuntimeError("this session is closed; open another with runtime.session()")
            start = self._clock_s
            end = start + a.size / SAMPLE_RATE
            self._clock_s = end
            job = _Job(a, start, end, t_end, text=text)
            face_frames = None
            if frames is not None and len(frames) and self.runtime.face_analyzer() is not None:
                face_frames = lambda: (self._analyse(frames, start, end), 0.0)  # noqa: E731
            event = self.runtime._process(self._conv, job, face_frames, None, {})
        for cb in self._callbacks:
            _safe_call(cb, event)
        return event

    def _analyse(self, frames: Sequence, start: float, end: float) -> list:
        fa = self.runtime.face_analyzer()
        fa.reset()
        n = len(frames)
        step = max(1, int(round(n / max(1.0, (end - start) * self.runtime.config.face_fps))))
        out = []
        for i in range(0, n, step):
            f = frames[i]
            if hasattr(f, "image"):
                t, img = start + float(f.t), f.image
            else:
                t, img = start + (i + 0.5) * (end - start) / n, f
            out.append(fa.analyze(t, img))
        return out

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
