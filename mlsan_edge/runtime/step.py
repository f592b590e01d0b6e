"""The synchronous step: one 512-sample audio chunk in, an `Event` or None out.

In the spirit of silero-vad's `VADIterator`, with no threads and no queues:

    >>> step = runtime.step()
    >>> for chunk in chunks:                    # (512,) float32 at 16 kHz, in stream order
    ...     event = step.step(chunk)
    ...     if event is not None:
    ...         print(event.emotion)
    >>> event = step.flush()                    # the utterance still open at the end, if any

`UtteranceSegmenter` is the audio half (VAD + the voice embedding computed while the person
speaks, and the utterance's work started during the VAD hangover: `speculation.py`);
`Pipeline.process` the rest. `Runtime.stream` (`live.py`) runs the same two pieces on separate
threads.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from mlsan_edge.features.voice_stream import StreamingVoiceEmbedder
from mlsan_edge.runtime.events import Event
from mlsan_edge.runtime.face_tracking import FaceFeed
from mlsan_edge.runtime.pipeline import Job, Pipeline, notify
from mlsan_edge.runtime.speculation import Speculation
from mlsan_edge.runtime.text_source import TextSource

log = logging.getLogger(__name__)


class UtteranceSegmenter:
    """VAD + streaming voice embedding: 512-sample chunks in, a `Job` when an utterance ends.

    While an utterance is open, the voice partials whose audio is complete are embedded
    (`StreamingVoiceEmbedder`), so little is left to do when it ends. Once its audio is complete
    (`speech_pad_ms` into the silence that may end it, `Segmenter.settled()`), the embedder sees
    that audio only and, with `speculate`, the voice tail is embedded and the audio features and
    text are started while the VAD waits out its hangover; the `Job` carries them when the VAD
    closes that same utterance (`speculation.py`).

    Args:
        segmenter: a `mlsan_edge.features.vad.Segmenter` (one per stream).
        embedder: a `StreamingVoiceEmbedder` (one per stream).
        speculate: `fn(utterance) -> Speculation` starting an utterance's work ahead
            (`Pipeline.speculate`), or None: no work starts before the VAD closes the utterance.
    """

    def __init__(self, segmenter, embedder: StreamingVoiceEmbedder,
                 speculate: Callable[[object], Speculation] | None = None) -> None:
        self.segmenter, self.embedder, self.speculate = segmenter, embedder, speculate
        self._spec: Speculation | None = None  # the work started for the settled utterance
        self._worst_ms = 0.0  # the slowest VAD chunk of the open utterance
        self._bad = {"non_finite": 0, "clipped": 0}  # repaired samples since the last utterance

    @classmethod
    def of(cls, pipeline: Pipeline, text: TextSource | None = None) -> "UtteranceSegmenter":
        """A new one running the pipeline's VAD model and voice encoder; with
        `config.speculate`, utterances' work starts in the hangover (`text`: the stream's text)."""
        spec = (lambda utt: pipeline.speculate(utt, text)) if pipeline.config.speculate else None
        return cls(pipeline.segmenter(), StreamingVoiceEmbedder(pipeline.voice), spec)

    def push(self, samples: np.ndarray, t_s: float | None = None) -> Job | None:
        """Advance by one chunk.

        Args:
            samples: (512,) float32 at 16 kHz.
            t_s: stream time of the chunk's first sample (None: right after the previous chunk).

        Returns:
            The utterance this chunk ended, with its voice embedding, or None.
        """
        seg = self.segmenter
        t = time.perf_counter()
        utt = seg.process(self._sanitise(samples), t_s)
        t_end = time.perf_counter()
        self._worst_ms = max(self._worst_ms, (t_end - t) * 1000)
        if utt is not None:
            return self._job(utt, t_end)
        if not seg.in_speech:
            self._drop()
            self.embedder.reset()
            return None
        settled = seg.settled()
        if settled is None:  # speaking, or not far enough into a silence
            self._drop()
            self.embedder.update(seg.partial(padded=True))
        elif self._spec is None or not self._spec.matches(settled):
            self._drop()
            # only the utterance's own audio from here: what the embedder holds is what a close gives
            self.embedder.update(settled.audio)
            if self.speculate is not None:
                self._spec = self._start(settled)
        return None

    def flush(self) -> Job | None:
        """End of stream: the utterance still open (if long enough), or None."""
        utt = self.segmenter.flush()
        if utt is None:
            self._drop()
            return None
        return self._job(utt, time.perf_counter())

    def _start(self, utt) -> Speculation | None:
        """Start the settled utterance's work: features and text on the pipeline's threads, the
        voice tail here (the embedder is this thread's)."""
        try:
            spec = self.speculate(utt)
        except RuntimeError as e:  # the pipeline is closing: the close path computes everything
            log.debug("no speculation: %s", e)
            return None
        t = time.perf_counter()
        try:
            spec.embedding = self.embedder.embed(utt.audio)
        except ValueError:  # silent audio: left to Pipeline.process, as without speculation
            spec.embedding = None
        spec.embed_ms = (time.perf_counter() - t) * 1000
        return spec

    def _drop(self) -> None:
        if self._spec is not None:
            self._spec.cancel()
            self._spec = None

    def _sanitise(self, samples: np.ndarray) -> np.ndarray:
        """NaN/inf samples become 0 and samples beyond full scale are clipped to [-1, 1], counted
        for the next event's `degraded`: one bad sample must not poison the VAD's recurrent state
        or end the stream (a glitching driver, a float WAV written without limiting)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        finite = np.isfinite(x)
        if not finite.all():
            self._bad["non_finite"] += int((~finite).sum())
            x = np.where(finite, x, np.float32(0.0))
        over = np.abs(x) > 1.0
        if over.any():
            self._bad["clipped"] += int(over.sum())
            x = np.clip(x, -1.0, 1.0)
        return x

    def _notes(self) -> list[str]:
        notes = []
        if self._bad["non_finite"]:
            notes.append(f"audio: {self._bad['non_finite']} NaN/inf samples replaced by 0")
        if self._bad["clipped"]:
            notes.append(f"audio: {self._bad['clipped']} samples beyond full scale clipped")
        self._bad = {"non_finite": 0, "clipped": 0}
        return notes

    def _job(self, utt, t_end: float) -> Job:
        job = Job(utt.audio, utt.start_s, utt.end_s, t_end, vad_ms=self._worst_ms)
        job.notes = self._notes()
        if getattr(utt, "forced_split", False):
            job.notes.append(f"audio: utterance split at the VAD's maximum length "
                             f"({self.segmenter.config.max_utterance_s:g} s)")
        t = time.perf_counter()
        spec, self._spec = self._spec, None
        if spec is not None and spec.matches(utt):  # the utterance the work was started for
            job.embedding, job.speculation = spec.embedding, spec
            self.embedder.reset()
        else:
            if spec is not None:
                spec.cancel()
            try:
                job.embedding = self.embedder.finish(utt.audio)
            except ValueError:  # silent audio: Pipeline.process embeds (and fails) with a clear error
                job.embedding = None
        job.embed_ms = (time.perf_counter() - t) * 1000
        self._worst_ms = 0.0
        return job


class Step:
    """One conversation fed chunk by chunk from the caller's thread (not thread-safe).

    Args:
        pipeline: the runtime's `Pipeline` (`Runtime.step()` passes it).
        text: what was said: see `Runtime.stream`.
        on_event: called with each event before `step` returns it.
    """

    def __init__(self, pipeline: Pipeline, text=None, on_event=None) -> None:
        self.pipeline = pipeline
        self.conversation = pipeline.conversation()
        self.text = TextSource.of(text)
        self.utterances = UtteranceSegmenter.of(pipeline, self.text)
        self.on_event = on_event
        self._faces: FaceFeed | None = None  # made on the first video frame

    def frame(self, t_s: float, image: np.ndarray) -> None:
        """Analyse one BGR video frame (H, W, 3) uint8 at stream time `t_s` (frames beyond
        `config.face_fps` are skipped). Pass an utterance's frames before the chunk that ends it."""
        if self._faces is None:
            fa = self.pipeline.face_analyzer()
            if fa is None:  # config.face == "none"
                return
            self._faces = FaceFeed(fa, self.pipeline.config.face_fps)
        self._faces.add(t_s, image)

    def step(self, chunk, t_s: float | None = None) -> Event | None:
        """Advance by one chunk: (512,) float32 at 16 kHz, or an `AudioChunk` (samples + time).

        Returns:
            The event of the utterance this chunk ended, or None.
        """
        if t_s is None:
            t_s = getattr(chunk, "t", None)
        job = self.utterances.push(getattr(chunk, "samples", chunk), t_s)
        return None if job is None else self._process(job)

    def flush(self) -> Event | None:
        """End of stream: the event of the utterance still open, or None."""
        job = self.utterances.flush()
        return None if job is None else self._process(job)

    def _process(self, job: Job) -> Event:
        frames = None
        if self._faces is not None:
            window = self._faces.buffer.window(job.start_s, job.end_s)
            frames = lambda: (window, 0.0)  # noqa: E731
        event = self.pipeline.process(self.conversation, job, frames, self.text)
        if self.on_event is not None:
            notify([self.on_event], event)
        return event
