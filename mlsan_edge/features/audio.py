"""Audio loading and the emotion front-end (numpy only; shared by training and the device).

`utterance_features(wav)` turns one utterance of 16 kHz mono audio into the fixed-size vector
the model's audio branch consumes: statistics of log-mel energies, MFCCs and their deltas,
frame energy, spectral shape and flux, pitch and voice quality (jitter, shimmer, harmonicity);
`FEATURE_GROUPS` says where each group sits. Everything is computed
with numpy so the device needs no torch and no librosa.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mlsan_edge.config import (AUDIO_DIM, HOP_LENGTH, N_BASE, N_DYNAMIC, N_FFT, N_LEVEL, N_MELS, N_MFCC,  # noqa: F401
                               N_STAT_EXTRA, SAMPLE_RATE, WIN_LENGTH)
from mlsan_edge.features.mel import hann_window, mel_filterbank, power_spectrogram

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file or buffer that cannot be used, with what to do about it."""


def resample(wav: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a mono float signal (windowed-sinc via scipy when present,
    else linear interpolation). Returns float32."""
    if sr_in == sr_out:
        return np.asarray(wav, np.float32)
    try:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sr_in), int(sr_out))
        return resample_poly(wav, sr_out // g, sr_in // g).astype(np.float32)
    except ImportError:
        n_out = int(round(len(wav) * sr_out / sr_in))
        t = np.linspace(0, len(wav) - 1, n_out)
        return np.interp(t, np.arange(len(wav)), wav).astype(np.float32)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at `sr` Hz.

    WAV/FLAC/OGG go through soundfile; anything else (mp4, flv, mp3...) through PyAV.
    Raises AudioError naming the file when it is missing, unreadable or empty.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    try:
        import soundfile as sf

        data, sr_in = sf.read(str(path), dtype="float32", always_2d=True)
        wav = data.mean(axis=1)
    except Exception as e:  # soundfile cannot read containers such as mp4: fall back to PyAV
        try:
            wav, sr_in = _decode_with_av(path)
        except Exception as e2:
            raise AudioError(
                f"cannot read audio from {path}: {e2} (soundfile said: {e}). "
                "Expected a WAV/FLAC file or a media file with an audio track."
            ) from e2
    if wav.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    if sr_in != sr:
        log.info("resampling %s from %d Hz to %d Hz", path.name, sr_in, sr)
        wav = resample(wav, sr_in, sr)
    return np.ascontiguousarray(wav, dtype=np.float32)


def _decode_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioError(f"{path} has no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), SAMPLE_RATE


# --- the emotion front-end ------------------------------------------------------------------
ACTIVE_DB = 40.0  # frames more than 40 dB below the loudest frame are treated as silence
# every utterance is brought to this speech level (dB re full scale, power over its active frames)
# before its statistics, so a microphone's gain moves only the last value, the level itself
REF_LEVEL_DB = -26.0
MAX_GAIN_DB = 60.0  # at most this much up or down (digital silence stays silence)
F0_MIN, F0_MAX = 60.0, 500.0  # Hz, search range of the pitch tracker
# N_STAT_EXTRA = 5 + 8 + 6 (energy, spectral shape, pitch summaries), N_DYNAMIC = 164, N_LEVEL = 1
# and AUDIO_DIM = 372 live in config.py


def _groups(sizes: dict[str, int]) -> dict[str, slice]:
    out, at = {}, 0
    for name, n in sizes.items():
        out[name], at = slice(at, at + n), at + n
    assert at == AUDIO_DIM, at
    return out


# where each group of statistics sits in `utterance_features`' output (benchmarks/audio_features.py)
FEATURE_GROUPS: dict[str, slice] = _groups({
    "version2": N_BASE,
    "mfcc_spread": 2 * N_MFCC, "mfcc_dynamics": 2 * N_MFCC, "mel_dynamics": N_MELS,
    "spectral_flux_tilt": 7, "energy_shape": 4, "voice_quality": 9, "level": N_LEVEL})


def _power(wav: np.ndarray) -> np.ndarray:
    """(frames, N_FFT // 2 + 1) power spectrum of the emotion front-end (25 ms Hann, 10 ms hop)."""
    return power_spectrogram(wav, N_FFT, HOP_LENGTH, WIN_LENGTH).astype(np.float32)


def _mel_weights() -> np.ndarray:
    return mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS).astype(np.float32)


def log_mel(wav: np.ndarray) -> np.ndarray:
    """Log-mel energies (frames, N_MELS) float32 of 16 kHz audio, 25 ms window, 10 ms hop."""
    mel = _power(wav) @ _mel_weights().T
    return np.log(mel + 1e-6).astype(np.float32)


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis (n_out, n_in)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def _deltas(x: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas along time of (frames, dims)."""
    if len(x) < 2:
        return np.zeros_like(x)
    padded = np.pad(x, ((width, width), (0, 0)), mode="edge")
    num = sum(k * (padded[width + k:len(x) + width + k] - padded[width - k:len(x) + width - k])
              for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def pitch_track(wav: np.ndarray, frame_len: int = 640, hop: int = HOP_LENGTH * 2) -> tuple[np.ndarray, np.ndarray]:
    """Normalised-autocorrelation pitch per 40 ms frame (20 ms hop).

    Returns (f0_hz, voicing) arrays of shape (frames,); f0 is 0 where voicing < 0.5.
    """
    wav = np.asarray(wav, np.float32)
    if len(wav) < frame_len:
        wav = np.pad(wav, (0, frame_len - len(wav)))
    n = 1 + (len(wav) - frame_len) // hop
    frames = wav[np.arange(frame_len)[None, :] + hop * np.arange(n)[:, None]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames, n=2 * frame_len, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :frame_len]
    lag_min, lag_max = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    # normalise by the energy of the overlapping part so long lags are not penalised
    energy = np.cumsum(frames[:, ::-1] ** 2, axis=1)[:, ::-1]
    norm = ac[:, lag_min:lag_max] / (np.sqrt(energy[:, :1] * energy[:, lag_min:lag_max]) + 1e-9)
    best = np.argmax(norm, axis=1)
    voicing = norm[np.arange(n), best]
    f0 = SAMPLE_RATE / (best + lag_min)
    return np.where(voicing >= 0.5, f0, 0.0).astype(np.float32), voicing.astype(np.float32)


def utterance_features(wav: np.ndarray) -> np.ndarray:
    """Fixed-size acoustic summary of one utterance: (AUDIO_DIM,) float32.

    Layout: MFCC mean (20), MFCC std (20), delta-MFCC std (20), log-mel mean (64),
    log-mel std (64), energy [mean, std, max, p90-p10, slope] (5), spectral
    [centroid mean/std, rolloff mean/std, flatness mean/std, zcr mean/std] (8),
    pitch [voiced fraction, mean log-f0, std, p10, p90, slope] (6); then `_dynamics`' 164:
    MFCC p90-p10 (20) and median-mean (20), mean |delta-MFCC| (20), delta-delta-MFCC std (20),
    delta-log-mel std (64), spectral [flux mean/std/p90, alpha ratio mean/std, tilt mean/std] (7),
    energy [skewness, kurtosis, delta std, active fraction] (4), voice quality [jitter, shimmer,
    harmonicity mean/std, voicing strength, |delta log-f0| mean/std, f0 p95-p5, voiced onsets
    per second] (9); last, the speech level in dB re full scale (1, `speech_level_db`).
    Every statistic before the level is computed on the utterance scaled to REF_LEVEL_DB, so a
    louder or quieter microphone changes the level and nothing else (feature version 4; before,
    the MFCC, log-mel and energy means carried the gain, and quiet recordings reached the log's
    floor). Statistics are over active frames (within ACTIVE_DB of the loudest), so leading and
    trailing silence and the VAD's padding do not dilute them.

    Args:
        wav: mono float32 audio at SAMPLE_RATE Hz, any length >= 1 sample.
    """
    wav = np.asarray(wav, np.float32).reshape(-1)
    if wav.size == 0:
        raise AudioError("empty audio: an utterance needs at least one sample")
    if not np.all(np.isfinite(wav)):
        raise AudioError("audio holds NaN or inf samples")
    power = _power(wav)
    level = speech_level_db(power)
    gain = 10 ** (np.clip(REF_LEVEL_DB - level, -MAX_GAIN_DB, MAX_GAIN_DB) / 20)
    wav, power = wav * np.float32(gain), power * np.float32(gain * gain)
    lm = np.log(power @ _mel_weights().T + 1e-6)
    frame_db, active = _active_frames(power)
    lm_a = lm[active]
    mfcc = lm_a @ _dct_matrix(N_MELS, N_MFCC).T
    d_mfcc = _deltas(mfcc)

    e = frame_db[active]
    t = np.linspace(-1, 1, len(e))
    energy = [e.mean(), e.std(), e.max(), np.percentile(e, 90) - np.percentile(e, 10),
              float(np.dot(t, e - e.mean()) / max(np.dot(t, t), 1e-9))]

    p = power[active]
    freqs = np.linspace(0, SAMPLE_RATE / 2, p.shape[1])
    total = p.sum(axis=1) + 1e-10
    centroid = (p @ freqs) / total / 1000.0  # kHz
    rolloff = freqs[np.argmax(np.cumsum(p, axis=1) >= 0.85 * total[:, None], axis=1)] / 1000.0
    flatness = np.exp(np.mean(np.log(p + 1e-10), axis=1)) / (p.mean(axis=1) + 1e-10)
    signs = np.signbit(wav).astype(np.int8)
    zc = np.abs(np.diff(signs)).astype(np.float32)
    n_fr = len(frame_db)
    zcr_frames = np.add.reduceat(zc, np.minimum(np.arange(n_fr) * HOP_LENGTH, max(len(zc) - 1, 0)))[:n_fr] / HOP_LENGTH
    zcr = zcr_frames[active[:len(zcr_frames)]]
    spectral = [centroid.mean(), centroid.std(), rolloff.mean(), rolloff.std(),
                flatness.mean(), flatness.std(), zcr.mean(), zcr.std()]

    f0, voicing = pitch_track(wav)
    voiced = f0 > 0
    if voiced.sum() >= 2:
        lf0 = 12 * np.log2(f0[voiced] / 100.0)  # semitones re 100 Hz
        tv = np.linspace(-1, 1, len(lf0))
        pitch = [voiced.mean(), lf0.mean(), lf0.std(), np.percentile(lf0, 10), np.percentile(lf0, 90),
                 float(np.dot(tv, lf0 - lf0.mean()) / max(np.dot(tv, tv), 1e-9))]
    else:
        pitch = [voiced.mean(), 0.0, 0.0, 0.0, 0.0, 0.0]

    out = np.concatenate([mfcc.mean(0), mfcc.std(0), d_mfcc.std(0), lm_a.mean(0), lm_a.std(0),
                          energy, spectral, pitch,
                          _dynamics(mfcc, d_mfcc, lm_a, e, p, freqs, active, frame_db, f0, voicing),
                          [level]]).astype(np.float32)
    assert out.shape == (AUDIO_DIM,), out.shape
    return out


# Parseval: a one-sided |STFT|^2 of a full-scale unit-power signal sums to (N_FFT / 2) * sum(window^2)
_POWER_PER_UNIT = (N_FFT / 2) * float(np.sum(hann_window(WIN_LENGTH, N_FFT) ** 2))


def _active_frames(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame level in dB (frames,) and the active frames: within ACTIVE_DB of the loudest
    (all of them when fewer than 3 are)."""
    frame_db = 10 * np.log10(power.sum(axis=1) + 1e-10)
    active = frame_db >= frame_db.max() - ACTIVE_DB
    if active.sum() < 3:
        active[:] = True
    return frame_db, active


def speech_level_db(power: np.ndarray) -> float:
    """The speech level of an utterance from its power spectrogram (`_power`): the mean square of
    its active frames in dB re full scale (a full-scale sine: -3 dB; silence: -100 dB or below)."""
    frame_db, active = _active_frames(power)
    return float(10 * np.log10(np.mean(10 ** (frame_db[active] / 10)) / _POWER_PER_UNIT + 1e-12))


def _skew_kurtosis(x: np.ndarray) -> tuple[float, float]:
    z = (x - x.mean()) / (x.std() + 1e-6)
    return float(np.mean(z ** 3)), float(np.mean(z ** 4) - 3.0)


def _dynamics(mfcc, d_mfcc, lm_a, e, p, freqs, active, frame_db, f0, voicing) -> np.ndarray:
    """The 164 statistics feature version 3 added (issue #9): how the voice moves and its quality,
    which a linear probe found carry across speakers and microphones (README "Audio front-end").
    Inputs are `utterance_features`' intermediate arrays over the active frames."""
    p10, p50, p90 = np.percentile(mfcc, [10, 50, 90], axis=0)
    shape = [p90 - p10, p50 - mfcc.mean(0), np.abs(d_mfcc).mean(0), _deltas(d_mfcc).std(0), _deltas(lm_a).std(0)]

    spec = p / (p.sum(axis=1, keepdims=True) + 1e-10)
    flux = np.sqrt((np.diff(spec, axis=0) ** 2).sum(axis=1)) if len(spec) > 1 else np.zeros(1)
    alpha = 10 * np.log10((p[:, freqs >= 1000].sum(1) + 1e-10) / (p[:, freqs < 1000].sum(1) + 1e-10))
    fz = (freqs - freqs.mean()) / freqs.std()
    lp = np.log(p + 1e-10)
    tilt = (lp - lp.mean(axis=1, keepdims=True)) @ fz / len(fz)
    spectral = [flux.mean(), flux.std(), np.percentile(flux, 90), alpha.mean(), alpha.std(), tilt.mean(), tilt.std()]

    energy = [*_skew_kurtosis(e), float(_deltas(e[:, None])[:, 0].std()), float(active.mean())]

    voice = np.zeros(9)
    voiced = f0 > 0
    frame = np.minimum(np.arange(len(f0)) * 2, len(active) - 1)  # each pitch frame's STFT frame (2 hops)
    on_active = active[frame]
    if on_active.any():
        voice[4] = voicing[on_active].mean()
    if voiced.sum() >= 4:
        idx = np.flatnonzero(voiced)
        pair = np.flatnonzero(np.diff(idx) == 1)  # consecutive voiced frames
        if len(pair) >= 2:
            a, b = idx[pair], idx[pair + 1]
            voice[0] = np.mean(np.abs(1 / f0[a] - 1 / f0[b])) / np.mean(1 / f0[voiced])  # jitter, relative
            db = frame_db[frame]
            voice[1] = np.mean(np.abs(db[a] - db[b]))  # shimmer, dB
            step = np.abs(12 * np.log2(f0[b] / f0[a]))
            voice[5], voice[6] = step.mean(), step.std()
        r = np.clip(voicing[voiced], 1e-3, 0.999)
        hnr = 10 * np.log10(r / (1 - r))
        voice[2], voice[3] = hnr.mean(), hnr.std()
        lf0 = 12 * np.log2(f0[voiced] / 100.0)
        voice[7] = np.percentile(lf0, 95) - np.percentile(lf0, 5)
        onsets = np.sum(np.diff(voiced.astype(np.int8)) == 1) + int(voiced[0])
        voice[8] = onsets / max(len(f0) * 2 * HOP_LENGTH / SAMPLE_RATE, 0.1)
    out = np.concatenate([*shape, spectral, energy, voice])
    assert out.shape == (N_DYNAMIC,), out.shape
    return out
