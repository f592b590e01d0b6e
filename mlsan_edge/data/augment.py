"""Channel augmentation: the same speech as other microphones, rooms and lines would deliver it.

The audio model learned 24 actors in one studio; its features carried that channel (level,
microphone response, room), and on any other microphone it was confidently wrong (issue #9).
Training features are therefore also computed on copies of every training clip passed through a
random *channel*, drawn once per speaker and copy (a person is recorded through one set-up at a
time), with the noise drawn afresh per clip:

    gain          -20 to +10 dB (level is not emotion), with clipping at full scale
    response      flat, telephone (300-3400 Hz band + 8-bit mu-law, G.711-like), laptop
                  (thin bass, presence peak, roll-off above 6 kHz) or far-field (dull, hollow)
    room          none, or a synthetic room impulse response (exponentially decaying noise,
                  RT60 0.15-0.8 s, with a direct path)
    noise         white, pink or babble (other speakers' clips summed) at 0-30 dB SNR
    codec         none, or a lossy round trip through PyAV (MP3 at 24-48 kbit/s)

Everything is numpy (the codec needs PyAV, a base dependency); `augment(wav, channel, rng)` is a
pure function of its inputs, so a table built twice with the same seeds is the same table.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

import numpy as np

from mlsan_edge.config import SAMPLE_RATE

log = logging.getLogger(__name__)

RESPONSES = ("flat", "telephone", "laptop", "farfield")
NOISES = ("white", "pink", "babble")


@dataclass(frozen=True)
class Channel:
    """One recording set-up: drawn once per (speaker, copy) by `random_channel`."""

    gain_db: float
    response: str  # one of RESPONSES
    rt60_s: float  # 0: no room
    noise: str  # one of NOISES
    snr_db: tuple[float, float]  # per-clip SNR drawn uniformly in this range
    codec_kbps: int  # 0: no codec round trip

    def describe(self) -> str:
        room = f"room RT60 {self.rt60_s:.2f} s" if self.rt60_s else "no room"
        codec = f"MP3 {self.codec_kbps} kbit/s" if self.codec_kbps else "no codec"
        return (f"{self.response}, {self.gain_db:+.0f} dB, {room}, {self.noise} noise "
                f"{self.snr_db[0]:.0f}-{self.snr_db[1]:.0f} dB SNR, {codec}")


def seed_of(*parts) -> int:
    """A stable 32-bit seed from strings/ints (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:4], "little")


def random_channel(rng: np.random.Generator) -> Channel:
    lo = float(rng.uniform(0, 25))
    return Channel(gain_db=float(rng.uniform(-20, 10)),
                   response=str(rng.choice(RESPONSES, p=[0.25, 0.25, 0.3, 0.2])),
                   rt60_s=float(rng.uniform(0.15, 0.8)) if rng.random() < 0.6 else 0.0,
                   noise=str(rng.choice(NOISES)), snr_db=(lo, min(30.0, lo + 8)),
                   codec_kbps=int(rng.choice([24, 32, 48])) if rng.random() < 0.3 else 0)


# --- the parts ---------------------------------------------------------------------------------
def _response_db(kind: str, freqs: np.ndarray) -> np.ndarray:
    """Gain in dB of a microphone/line response at `freqs` Hz."""
    f = np.maximum(freqs, 1.0)
    if kind == "flat":
        return np.zeros_like(f)
    if kind == "telephone":
        return np.where((f >= 300) & (f <= 3400), 0.0, -60.0)
    if kind == "laptop":  # small capsule: thin below 250 Hz, presence peak, roll-off above 6 kHz
        return (-12 * np.clip(np.log2(250 / f), 0, None) + 5 * np.exp(-0.5 * (np.log2(f / 3000) / 0.5) ** 2)
                - 12 * np.clip(np.log2(f / 6000), 0, None))
    if kind == "farfield":  # distance: high frequencies absorbed, a hollow mid notch from reflections
        return -8 * np.clip(np.log2(f / 1500), 0, None) - 6 * np.exp(-0.5 * (np.log2(f / 800) / 0.3) ** 2)
    raise ValueError(f"unknown response {kind!r}; valid: {', '.join(RESPONSES)}")


def _filter(wav: np.ndarray, response: str) -> np.ndarray:
    if response == "flat":
        return wav
    n = int(2 ** np.ceil(np.log2(len(wav) + 1)))
    spec = np.fft.rfft(wav, n)
    spec *= 10 ** (_response_db(response, np.fft.rfftfreq(n, 1 / SAMPLE_RATE)) / 20)
    out = np.fft.irfft(spec, n)[: len(wav)]
    if response == "telephone":  # 8-bit mu-law, as G.711 quantises
        mu = 255.0
        peak = max(float(np.abs(out).max()), 1e-6)
        y = np.sign(out / peak) * np.log1p(mu * np.abs(out / peak)) / np.log1p(mu)
        y = np.round(y * 127) / 127
        out = peak * np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    return out


def room_impulse(rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic RIR: a direct path, then noise decaying by 60 dB over `rt60_s`."""
    n = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s)
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0  # the first reflections arrive a few ms later
    rir = 0.6 * tail / np.sqrt(np.sum(tail ** 2) + 1e-12)
    rir[0] = 1.0
    return rir


def _convolve(wav: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = int(2 ** np.ceil(np.log2(len(wav) + len(h))))
    return np.fft.irfft(np.fft.rfft(wav, n) * np.fft.rfft(h, n), n)[: len(wav)]


def _noise(kind: str, n: int, rng: np.random.Generator, babble: list[np.ndarray] | None) -> np.ndarray:
    if kind == "babble" and babble:
        out = np.zeros(n)
        for k in rng.choice(len(babble), size=min(4, len(babble)), replace=False):
            src = np.tile(babble[k], int(np.ceil(n / max(len(babble[k]), 1))) + 1)
            off = int(rng.integers(0, max(1, len(src) - n)))
            out += src[off: off + n]
        return out
    x = rng.standard_normal(n)
    if kind == "pink" or kind == "babble":  # babble without sources: pink
        spec = np.fft.rfft(x)
        spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1.0))
        x = np.fft.irfft(spec, n)
    return x


def _codec(wav: np.ndarray, kbps: int) -> np.ndarray:
    """MP3 encode + decode through PyAV; the input back unchanged (with a log line) if it fails."""
    try:
        import av

        buf = io.BytesIO()
        with av.open(buf, "w", format="mp3") as out:
            st = out.add_stream("mp3", rate=SAMPLE_RATE)
            st.bit_rate = kbps * 1000
            frame = av.AudioFrame.from_ndarray(np.clip(wav, -1, 1).astype(np.float32)[None, :], format="flt",
                                               layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for p in st.encode(frame):
                out.mux(p)
            for p in st.encode(None):
                out.mux(p)
        buf.seek(0)
        with av.open(buf, "r") as inp:
            res = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            parts = [f.to_ndarray().reshape(-1) for fr in inp.decode(audio=0) for f in res.resample(fr)]
        y = np.concatenate(parts) if parts else wav
    except Exception as e:  # an FFmpeg build without an MP3 encoder: skip the codec, keep the rest
        log.debug("codec round trip skipped: %s", e)
        return wav
    y = y[: len(wav)]
    return np.pad(y, (0, len(wav) - len(y))) if len(y) < len(wav) else y


def augment(wav: np.ndarray, channel: Channel, rng: np.random.Generator,
            babble: list[np.ndarray] | None = None) -> np.ndarray:
    """`wav` (float32, 16 kHz) as heard through `channel`; per-clip randomness from `rng`."""
    x = np.asarray(wav, np.float64)
    if x.size == 0:
        return np.asarray(wav, np.float32)
    if channel.rt60_s > 0:
        x = _convolve(x, room_impulse(channel.rt60_s, rng))
    x = _filter(x, channel.response)
    power = float(np.mean(x ** 2)) + 1e-12
    noise = _noise(channel.noise, len(x), rng, babble)
    snr = float(rng.uniform(*channel.snr_db))
    noise *= np.sqrt(power / (float(np.mean(noise ** 2)) + 1e-12) / 10 ** (snr / 10))
    x = (x + noise) * 10 ** (channel.gain_db / 20)
    x = np.clip(x, -1.0, 1.0)
    if channel.codec_kbps:
        x = _codec(x.astype(np.float32), channel.codec_kbps)
    return np.asarray(x, np.float32)
