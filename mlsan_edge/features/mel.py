"""The one STFT/mel implementation (numpy), shared by the emotion front-end (`audio.py`, 64 mels)
and the GE2E voice front-end (`voice.py`, 40 mels). Matches librosa's `stft(center=True,
pad_mode="reflect")` with a periodic Hann window and `filters.mel(htk=False, norm="slaney")`."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mlsan_edge.config import SAMPLE_RATE


def _hz_to_mel(f) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale (librosa `htk=False`): linear below 1 kHz, log above."""
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = 400, n_mels: int = 40) -> np.ndarray:
    """Triangular, area-normalised (Slaney) mel filters from 0 Hz to sr/2.

    Returns:
        (n_mels, n_fft // 2 + 1) float64.
    """
    fft_hz = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights


@lru_cache(maxsize=8)
def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann of `win_length` samples, zero-padded to `n_fft` and centred (librosa's stft)."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left))


def power_spectrogram(wav: np.ndarray, n_fft: int, hop: int, win_length: int | None = None) -> np.ndarray:
    """|STFT|^2 of a centred, reflect-padded signal.

    Args:
        wav: (N,) samples, N >= 1.
        n_fft, hop, win_length: in samples (win_length defaults to n_fft).

    Returns:
        (1 + N // hop, n_fft // 2 + 1) float64; frame t is centred on sample t * hop.
    """
    wav = np.asarray(wav, np.float64).reshape(-1)
    pad = n_fft // 2
    # numpy's reflect pad also handles N <= pad (it reflects repeatedly), unlike librosa's check
    padded = np.pad(wav, pad, mode="reflect") if len(wav) > 1 else np.pad(wav, pad, mode="edge")
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, n_fft), strides=(padded.strides[0] * hop, padded.strides[0]))  # a view
    return np.abs(np.fft.rfft(frames * hann_window(win_length or n_fft, n_fft), axis=1)) ** 2
