"""The device runtime: sources -> VAD -> speaker -> features -> stages 1-3 -> events.

    >>> from mlsan_edge.runtime import load_runtime
    >>> with load_runtime("default", cache="speakers.db") as rt:
    ...     for event in rt.stream(audio="mic://default", video="camera://0"):
    ...         print(event.speaker_name or event.speaker_id, event.emotion)

Callers that own capture push whole utterances instead:

    >>> with rt.session() as s:
    ...     event = s.process(audio, sample_rate=16000, frames=[image1, image2], text="I see.")

or feed 512-sample chunks from their own loop, with no threads (`step.py`):

    >>> step = rt.step()
    >>> event = step.step(chunk)               # an Event when the chunk ended an utterance, else None

One conversation (a `stream()`, `session()` or `step()`) is one context history. The
per-utterance path is `Pipeline.process` (`pipeline.py`); `stream()` (`live.py`) runs capture,
VAD, processing and output on separate threads joined by bounded queues; when one fills, the
oldest pending item is dropped and counted (`Event.dropped`), so memory never grows.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mlsan_edge.config import SAMPLE_RATE
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.events import Event
from mlsan_edge.runtime.live import LiveStream
from mlsan_edge.runtime.pipeline import Job, Pipeline, notify
from mlsan_edge.runtime.queues import DropOldestQueue
from mlsan_edge.runtime.step import Step
from mlsan_edge.runtime.text_source import TextSource

# RuntimeConfig, TextSource and DropOldestQueue are also importable from here, where they used to live
__all__ = ["Runtime", "Session", "RuntimeConfig", "TextSource", "DropOldestQueue"]


class Runtime:
    """The parts loaded once, and the conversations that use them.

    Build it with `load_runtime`; `Runtime(stages, cache)` lets tests inject fakes. It loads
    nothing itself beyond the defaults named below.

    Args:
        stages: a `mlsan_edge.backends.stages.Stages` (or anything with its API, `new_history()` included).
        cache: a `SpeakerCache`.
        config: behaviour (VAD, budgets, queues, face).
        voice: a `VoiceEncoder` (default: the default bundle's, one thread).
        text_encoder: a `TextEncoder`, or a zero-argument callable returning one; loaded on the
            first text (default: the default bundle's).
        vad_model: the silero VAD ONNX file (default: the default bundle's).
    """

    def __init__(self, stages, cache, config: RuntimeConfig = RuntimeConfig(), voice=None, text_encoder=None,
                 vad_model: str | Path | None = None) -> None:
        self.pipeline = Pipeline(stages, cache, config, voice, text_encoder, vad_model)
        self.stages, self.cache, self.config = stages, cache, config
        self.voice, self.budgets, self.classes = self.pipeline.voice, self.pipeline.budgets, self.pipeline.classes
        self._closed = False

    @property
    def text_encoder(self):
        """The `TextEncoder` (loaded on first use)."""
        return self.pipeline.text_encoder

    def face_analyzer(self):
        """The shared `FaceAnalyzer` (None when config.face == "none")."""
        return self.pipeline.face_analyzer()

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        """Call `fn(event)` for every event of every stream, step and session (from the producing thread)."""
        self.pipeline.callbacks.append(fn)

    def stats(self) -> dict:
        """Rolling p50/p95/p99 per step (ms) and the budgets."""
        return {"percentiles": self.budgets.percentiles(), "budgets": self.config.budgets.to_dict()}

    # --- conversations ---------------------------------------------------------------------------
    def session(self, on_event: Callable[[Event], None] | None = None) -> "Session":
        """A push session (one conversation) for callers that own capture and cut utterances."""
        self._check_open()
        return Session(self, on_event)

    def step(self, text=None, on_event: Callable[[Event], None] | None = None) -> Step:
        """A synchronous step object (one conversation): `step(chunk) -> Event | None`, `flush()`.

        Args:
            text: what was said, as for `stream`.
            on_event: called with each event before `step` returns it.
        """
        self._check_open()
        return Step(self.pipeline, text, on_event)

    def stream(self, audio: str, video: str | None = None, text=None,
               on_event: Callable[[Event], None] | None = None, on_chunk=None, on_frame=None,
               stop: threading.Event | None = None) -> Iterator[Event]:
        """Events of a live or recorded stream, one per utterance, as they are ready.

        Args:
            audio: audio source URI (mic://default, file://speech.flac, file://clip.mp4, synth://tones).
            video: video source URI (camera://0, csi://0, file://clip.mp4) or None for audio only.
            text: None; a transcriber `fn(audio, start_s, end_s) -> str | None`; a list of strings
                (one per utterance, in order); timed segments [(start_s, end_s, text)]; or a `TextSource`.
            on_event: called with each event from the processing thread.
            on_chunk: `fn(chunk, in_speech)` for each audio chunk once the VAD took it (meters, displays).
            on_frame: `fn(frame, faces)` for each video frame, with its `FrameFaces` when it was
                analysed (else None): what a display draws.
            stop: set this `threading.Event` to end the stream from another thread (e.g. a window's
                quit key); the iterator then finishes and every source is closed.
        """
        self._check_open()
        return LiveStream(self.pipeline, audio, video, TextSource.of(text), on_event, on_chunk, on_frame, stop).run()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this runtime is closed; load_runtime() a new one")

    def close(self) -> None:
        """Release threads and the speaker cache (idempotent)."""
        if not self._closed:
            self._closed = True
            self.pipeline.close()
            close = getattr(self.cache, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- push sessions ------------------------------------------------------------------------------
class Session:
    """One conversation fed by the caller: each `process` call is one utterance (thread-safe)."""

    def __init__(self, runtime: Runtime, on_event=None) -> None:
        self.runtime = runtime
        self._conv = runtime.pipeline.conversation()
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
            job = Job(a, start, end, t_end, text=text)
            face_frames = None
            if frames is not None and len(frames) and self.runtime.face_analyzer() is not None:
                face_frames = lambda: (self._analyse(frames, start, end), 0.0)  # noqa: E731
            event = self.runtime.pipeline.process(self._conv, job, face_frames)
        notify(self._callbacks, event)
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
