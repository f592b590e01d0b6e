"""The voice embedding of an utterance, mostly computed while the person is still speaking.

GE2E embeds an utterance as the mean of 1.6 s partials taken every 0.77 s
(`mlsan_edge.features.voice`). A partial whose audio is complete can be embedded before the
utterance ends, so only the last one or two are left after the end (EDGE.md: run everything
incrementally, leave one small call for the end).

The one catch is volume normalisation: resemblyzer raises the whole utterance to -30 dBFS, a
gain known only at the end. The mel power spectrogram scales exactly with the gain squared, but
the LSTM does not, so a partial embedded early with the gain of the audio so far is reused only
when that gain is within `GAIN_TOLERANCE_DB` of the final one (else it is recomputed). Measured
on RAVDESS, a 1 dB gain error keeps each partial's cosine to the exact one >= 0.995 (0.5 dB:
>= 0.999). With nothing reused the result equals `VoiceEncoder.embed` exactly.
"""

from __future__ import annotations

import numpy as np

from mlsan_edge.features.voice import (GE2E_HOP, GE2E_N_FFT, INT16_MAX, PARTIAL_FRAMES, PARTIAL_STEP, TARGET_DBFS,
                                       VoiceEncoder, mel_spectrogram, utterance_partials)

GAIN_TOLERANCE_DB = 1.0
CHECK_SAMPLES = 512  # the prefix must match the final utterance's first samples to reuse anything


def gain_db(wav: np.ndarray) -> float:
    """The gain `normalize_volume` applies to `wav` (dB, >= 0); inf for digital silence."""
    rms = float(np.sqrt(np.mean((np.asarray(wav, np.float64) * INT16_MAX) ** 2)))
    if rms == 0.0:
        return float("inf")
    return max(0.0, TARGET_DBFS - 20.0 * np.log10(rms / INT16_MAX))


class StreamingVoiceEmbedder:
    """Embeds complete partials of an open utterance; `finish` embeds what is left.

    Not thread-safe: one instance per audio stream, fed from one thread.
    """

    def __init__(self, encoder: VoiceEncoder) -> None:
        self.encoder = encoder
        self.reset()

    def reset(self) -> None:
        self._head: np.ndarray | None = None  # first samples of the open utterance
        self._cached: dict[int, tuple[np.ndarray, float]] = {}  # partial index -> (embedding, gain dB)
        self.reused = self.computed = 0

    def update(self, prefix: np.ndarray) -> int:
        """Embed the partials of `prefix` (the open utterance from its first sample) that are now
        complete and not embedded yet. Returns how many were embedded."""
        if prefix.shape[0] < CHECK_SAMPLES:
            return 0
        if self._head is None:
            self._head = prefix[:CHECK_SAMPLES].copy()
        k = len(self._cached)
        # a partial's frames are exact once the audio reaches past its last frame's window
        ready = []
        while (k * PARTIAL_STEP + PARTIAL_FRAMES) * GE2E_HOP + GE2E_N_FFT <= prefix.shape[0]:
            ready.append(k)
            k += 1
        if not ready:
            return 0
        g = gain_db(prefix)
        if not np.isfinite(g):
            return 0
        mel = mel_spectrogram(prefix) * np.float32(10.0 ** (g / 10.0))  # power scales with gain^2
        parts = np.stack([mel[i * PARTIAL_STEP:i * PARTIAL_STEP + PARTIAL_FRAMES] for i in ready])
        for i, e in zip(ready, self.encoder.embed_partials(parts)):
            self._cached[i] = (e, g)
        return len(ready)

    def finish(self, audio: np.ndarray) -> np.ndarray:
        """The utterance embedding (256,) of the complete `audio`; resets for the next utterance."""
        try:
            return self.embed(audio)
        finally:
            self._head, self._cached = None, {}

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """As `finish`, without the reset: the partials embedded so far are kept, so `finish(audio)`
        later gives the same vector when no `update` embedded more in between. `runtime/step.py`
        embeds an utterance this way during the VAD hangover, in case speech resumes."""
        parts = utterance_partials(audio)  # exact front-end (gain, padding) of VoiceEncoder.embed
        g = gain_db(audio)
        same = self._head is not None and audio.shape[0] >= CHECK_SAMPLES and \
            np.array_equal(audio[:CHECK_SAMPLES], self._head)
        embeds: list[np.ndarray | None] = [None] * len(parts)
        if same:
            for i, (e, gi) in self._cached.items():
                if i < len(parts) and abs(gi - g) <= GAIN_TOLERANCE_DB:
                    embeds[i] = e
        todo = [i for i, e in enumerate(embeds) if e is None]
        if todo:
            for i, e in zip(todo, self.encoder.embed_partials(parts[todo])):
                embeds[i] = e
        self.reused += len(parts) - len(todo)
        self.computed += len(todo)
        mean = np.mean(np.stack(embeds), axis=0, keepdims=True)  # (1, 256)
        # normalised as VoiceEncoder.embed_batch does, so that nothing reused is bit-exact
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True))[0].astype(np.float32)
