"""Streaming voice-activity detection with silero-vad's ONNX model (no torch).

`SileroVAD` turns one 512-sample chunk of 16 kHz audio (32 ms) into a speech probability.
`Segmenter` follows silero's `VADIterator`: it takes one chunk at a time and returns an
`Utterance` when one has ended, else None; `flush()` closes the utterance still open at the
end of a stream. `segment(wav)` runs both over a whole buffer.

The model file is a bundle's `vad` role (`vad/silero_vad.onnx`: silero-vad 6.2.3, MIT; see the
bundle's LICENSES.md), vendored because the `silero_vad` package imports torch. `load_runtime` and
training pass their bundle's copy; with none named, the default bundle's is used.

Example:
    >>> seg = Segmenter()
    >>> for chunk in source:                      # (512,) float32 at 16 kHz
    ...     utt = seg.process(chunk.samples)
    ...     if utt is not None:
    ...         print(utt.start_s, utt.end_s, utt.audio.shape)
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsan_edge.config import SAMPLE_RATE
from mlsan_edge.features.assets import default_asset

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 512  # one silero window at 16 kHz = 32 ms; also the capture block size
CONTEXT_SAMPLES = 64  # the model expects the previous chunk's last 64 samples in front
STATE_SHAPE = (2, 1, 128)  # recurrent state: (layers, batch, hidden)
CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE  # 0.032 s


class SileroVAD:
    """Speech probability per 512-sample chunk of 16 kHz mono audio.

    Holds the recurrent state and the 64-sample context between calls, so chunks must be
    passed in stream order; call `reset()` between unrelated streams.

    Args:
        model_path: the silero ONNX file, normally `bundle.path("vad")`; None: the default bundle's.
        threads: onnxruntime intra-op threads (one is enough: ~0.2 ms per chunk on a CPU core).
    """

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(model_path) if model_path is not None else default_asset("vad")
        if not path.exists():
            raise FileNotFoundError(
                f"silero VAD model not found at {path}; a bundle ships it as vad/silero_vad.onnx. "
                "Reinstall mlsan-edge (pip install .) or pass model_path= to the ONNX file from the "
                "silero-vad wheel.")
        self.model_path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._x = np.zeros((1, CONTEXT_SAMPLES + CHUNK_SAMPLES), np.float32)  # context + chunk
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and context (start of a new stream)."""
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._x[:] = 0.0

    def __call__(self, chunk: np.ndarray) -> float:
        """Speech probability in [0, 1] of one chunk.

        Args:
            chunk: (512,) float32 samples in [-1, 1] at 16 kHz.
        """
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if chunk.shape[0] != CHUNK_SAMPLES:
            raise ValueError(f"silero VAD takes chunks of {CHUNK_SAMPLES} samples at {SAMPLE_RATE} Hz, "
                             f"got {chunk.shape[0]}; re-chunk the stream (Segmenter.feed does).")
        self._x[0, :CONTEXT_SAMPLES] = self._x[0, -CONTEXT_SAMPLES:]
        self._x[0, CONTEXT_SAMPLES:] = chunk
        out, self._state = self._sess.run(None, {"input": self._x, "state": self._state, "sr": self._sr})
        return float(out[0, 0])


@dataclass(frozen=True)
class VADConfig:
    """How speech probabilities become utterances. Times in ms unless the name says s."""

    threshold: float = 0.5  # probability that starts (and keeps) speech
    neg_threshold: float = 0.35  # speech ends only below this (hysteresis; silero: threshold - 0.15)
    min_speech_ms: int = 250  # shorter bursts (clicks, coughs) are dropped
    # silence needed to end an utterance. 500, not 300: 11 of 240 RAVDESS clips hold a pause of over
    # 300 ms inside the sentence and became two utterances; on the device path (actors 17-20, four
    # stream orders) 500 ms gets 56.3 % right on average, 300 ms 55.1 % (README "Device accuracy")
    min_silence_ms: int = 500
    speech_pad_ms: int = 100  # audio kept before the start and after the end
    max_utterance_s: float = 10.0  # longer speech is split, at its least speech-like chunk


@dataclass
class Utterance:
    """One stretch of speech.

    Attributes:
        start_s, end_s: stream time in seconds of the first and one-past-last sample of `audio`
            (padding included).
        audio: (n,) float32 samples at 16 kHz, n = (end_s - start_s) * 16000 (fewer when the
            capture dropped audio inside the utterance and `process(t_s=...)` re-synchronised).
        forced_split: True when the utterance was cut at `max_utterance_s`, not at a silence.
    """

    start_s: float
    end_s: float
    audio: np.ndarray
    forced_split: bool = False

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Segmenter:
    """Turns a stream of 512-sample chunks into utterances (like silero's `VADIterator`).

    Memory is bounded: the open utterance holds at most `max_utterance_s` plus padding.

    Args:
        config: thresholds and durations.
        vad: a `SileroVAD`, or the path of a silero ONNX file (e.g. `bundle.path("vad")`) to
            build one from; None: a `SileroVAD` of the default bundle's model. Any callable
            chunk -> probability works.
    """

    def __init__(self, config: VADConfig | None = None, vad=None) -> None:
        self.config = config or VADConfig()
        c = self.config
        if not 0.0 < c.neg_threshold <= c.threshold < 1.0:
            raise ValueError(f"VAD thresholds must satisfy 0 < neg_threshold <= threshold < 1, "
                             f"got neg_threshold={c.neg_threshold}, threshold={c.threshold}")
        self.vad = SileroVAD(vad) if vad is None or isinstance(vad, (str, Path)) else vad
        ms = SAMPLE_RATE // 1000
        self._pad = c.speech_pad_ms * ms
        self._min_speech = c.min_speech_ms * ms
        self._min_silence = c.min_silence_ms * ms
        self._max_chunks = max(2, int(c.max_utterance_s * SAMPLE_RATE) // CHUNK_SAMPLES)
        self._pending = np.zeros(0, np.float32)  # feed(): samples waiting for a full chunk
        self.reset()

    def reset(self) -> None:
        """Start a new stream at time 0 (also resets the VAD state)."""
        if hasattr(self.vad, "reset"):
            self.vad.reset()
        self._sample = 0  # stream position (samples) of the next chunk
        self._preroll: deque[np.ndarray] = deque(maxlen=self._pad // CHUNK_SAMPLES + 2)
        self._chunks: list[np.ndarray] = []  # the open utterance's speech chunks
        self._probs: list[float] = []
        self._pre = np.zeros(0, np.float32)  # padding audio just before the open utterance
        self._start = None  # sample where the open utterance's speech starts (None: silence)
        self._silence_from = None  # sample where the current run of silence began
        self._pending = np.zeros(0, np.float32)
        self.last_prob = 0.0

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open."""
        return self._start is not None

    def partial(self, padded: bool = False) -> np.ndarray | None:
        """Audio of the open utterance so far ((n,) float32, no end padding), or None.

        Lets the caller embed the voice while the person is still speaking.

        Args:
            padded: start with the padding the emitted `Utterance.audio` will start with, so the
                result is a prefix of it.
        """
        if self._start is None:
            return None
        return np.concatenate([self._pre, *self._chunks] if padded else self._chunks)

    def settled(self) -> Utterance | None:
        """The utterance `process` will return if the current silence lasts `min_silence_ms`,
        once its audio is complete; else None.

        An utterance ends `speech_pad_ms` after its speech, so its audio is fixed that long into
        the silence, while the VAD still waits out the rest of its hangover: work on it can
        start early (`runtime/step.py`). It is exactly the utterance the close returns unless
        speech resumes (then None again) or the maximum length splits it first (a different
        utterance: compare before reusing anything).
        """
        sf = self._silence_from
        if self._start is None or sf is None or self._sample < sf + self._pad:
            return None
        return self._closing(sf)

    def process(self, chunk: np.ndarray, t_s: float | None = None) -> Utterance | None:
        """Advance by one chunk.

        Args:
            chunk: (512,) float32 at 16 kHz.
            t_s: stream time of the chunk's first sample; when given it re-synchronises the
                segmenter's clock (e.g. after a capture overflow dropped audio).

        Returns:
            The utterance that this chunk ended, or None.
        """
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if t_s is not None:
            self._sample = int(round(t_s * SAMPLE_RATE))
        p = self.last_prob = self.vad(chunk)
        c = self.config
        here, self._sample = self._sample, self._sample + chunk.shape[0]
        out = None
        if self._start is None:
            if p >= c.threshold:
                self._start, self._silence_from = here, None
                self._chunks, self._probs = [chunk], [p]
                pre = np.concatenate(self._preroll) if self._preroll else np.zeros(0, np.float32)
                self._pre = pre[max(0, pre.shape[0] - min(self._pad, here)):]
            else:
                self._preroll.append(chunk)
            return None
        self._chunks.append(chunk)
        self._probs.append(p)
        if p >= c.threshold:
            self._silence_from = None
        elif p < c.neg_threshold and self._silence_from is None:
            self._silence_from = here
        if self._silence_from is not None and self._sample - self._silence_from >= self._min_silence:
            out = self._close(self._silence_from)
        elif len(self._chunks) >= self._max_chunks:
            out = self._split()
        return out

    def feed(self, audio: np.ndarray) -> list[Utterance]:
        """Process audio of any length (16 kHz float32), keeping the remainder for next time."""
        audio = np.concatenate([self._pending, np.asarray(audio, np.float32).reshape(-1)])
        n = audio.shape[0] // CHUNK_SAMPLES * CHUNK_SAMPLES
        self._pending = audio[n:].copy()
        utts = [self.process(audio[i:i + CHUNK_SAMPLES]) for i in range(0, n, CHUNK_SAMPLES)]
        return [u for u in utts if u is not None]

    def flush(self) -> Utterance | None:
        """End of stream: close the open utterance (if long enough) and reset."""
        out = None
        if self._start is not None:
            end = self._silence_from if self._silence_from is not None else self._sample
            out = self._close(end, pad_end=False)
        sample = self._sample
        self.reset()
        self._sample = sample
        return out

    # --- internals ------------------------------------------------------------------------
    def _closing(self, speech_end: int, pad_end: bool = True, body: np.ndarray | None = None) -> Utterance | None:
        """The utterance [start - pad, speech_end + pad) of the open speech, or None when its
        speech is shorter than `min_speech_ms` (changes no state)."""
        start = self._start
        if speech_end - start < self._min_speech:
            return None
        body = np.concatenate(self._chunks) if body is None else body
        end = min(self._sample, speech_end + self._pad) if pad_end else speech_end
        return self._make(start, body[: end - start])

    def _close(self, speech_end: int, pad_end: bool = True) -> Utterance | None:
        """Emit [start - pad, speech_end + pad) and return to silence."""
        start, body = self._start, np.concatenate(self._chunks)
        utt = self._closing(speech_end, pad_end, body)
        if utt is None:
            log.debug("dropped %.0f ms of speech (< min_speech_ms)", (speech_end - start) * 1000 / SAMPLE_RATE)
        self._start, self._silence_from, self._chunks, self._probs = None, None, [], []
        # what was buffered after the speech ended becomes the pre-roll of the next utterance
        tail = body[max(0, speech_end - start):]
        self._preroll.clear()
        for i in range(0, tail.shape[0], CHUNK_SAMPLES):
            self._preroll.append(tail[i:i + CHUNK_SAMPLES])
        return utt

    def _split(self) -> Utterance:
        """Max length reached: cut at the least speech-like chunk of the second half."""
        half = len(self._probs) // 2
        cut = half + int(np.argmin(self._probs[half:]))
        cut = max(cut, 1)
        cut_sample = self._start + cut * CHUNK_SAMPLES
        utt = self._make(self._start, np.concatenate(self._chunks[:cut]), forced=True)
        self._chunks, self._probs = self._chunks[cut:], self._probs[cut:]
        self._start = cut_sample
        self._pre = np.zeros(0, np.float32)  # the next part starts right at the cut: no overlap
        log.info("utterance longer than %.1f s: split at %.2f s", self.config.max_utterance_s,
                 cut_sample / SAMPLE_RATE)
        return utt

    def _make(self, start: int, body: np.ndarray, forced: bool = False) -> Utterance:
        """An utterance of the pre-roll padding + `body`, whose first sample is at `start`."""
        audio = np.concatenate([self._pre, body])
        return Utterance(start_s=(start - self._pre.shape[0]) / SAMPLE_RATE,
                         end_s=(start + body.shape[0]) / SAMPLE_RATE,
                         audio=np.ascontiguousarray(audio, np.float32), forced_split=forced)


def segment(wav: np.ndarray, config: VADConfig | None = None, vad=None) -> list[Utterance]:
    """Utterances of a whole (n,) float32 16 kHz buffer (the streaming path, run offline)."""
    seg = Segmenter(config, vad)
    utts = seg.feed(wav)
    tail = seg._pending.shape[0]
    if tail:  # zero-pad the last partial chunk so its speech is not lost
        utts += seg.feed(np.zeros(CHUNK_SAMPLES - tail, np.float32))
    last = seg.flush()
    return utts + ([last] if last is not None else [])


def speech_span(wav: np.ndarray, config: VADConfig | None = None, vad=None) -> np.ndarray:
    """What the runtime would hand on of a one-sentence recording: from the first utterance's
    start to the last one's end (VAD padding included), or all of `wav` when the VAD finds no
    speech. Training features are computed on this, so they match what the device sees."""
    utts = segment(wav, config, vad)
    if not utts:
        return wav
    a, b = int(round(utts[0].start_s * SAMPLE_RATE)), int(round(utts[-1].end_s * SAMPLE_RATE))
    return wav[a:b] if b - a >= CHUNK_SAMPLES else wav
