"""Channel augmentation (data/augment.py): deterministic, shape-preserving, and doing what it says."""

import numpy as np
import pytest

from mlsan_edge.data.augment import Channel, augment, random_channel, room_impulse, seed_of

SR = 16000


def _vowel(seconds=1.0, f0=140.0):
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 30))).astype(np.float32)


def _band_energy(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return spec[(f >= lo) & (f < hi)].sum()


def test_same_seed_same_audio_and_shape():
    w = _vowel()
    ch = random_channel(np.random.default_rng(3))
    a = augment(w, ch, np.random.default_rng(7))
    b = augment(w, ch, np.random.default_rng(7))
    assert a.dtype == np.float32 and a.shape == w.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0


def test_noise_at_the_requested_snr():
    w = _vowel()
    ch = Channel(0.0, "flat", 0.0, "white", (10.0, 10.0), 0)
    y = augment(w, ch, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(w.astype(np.float64) ** 2) / np.mean((y - w).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.5)


def test_telephone_removes_the_band_above_3400_hz():
    w = _vowel(f0=220.0)
    ch = Channel(0.0, "telephone", 0.0, "white", (60.0, 60.0), 0)
    y = augment(w, ch, np.random.default_rng(0))
    ratio = _band_energy(y, 4000, 8000) / _band_energy(w, 4000, 8000)
    assert ratio < 0.05


def test_gain_scales_the_level():
    w = _vowel() * 0.1
    ch = Channel(-20.0, "flat", 0.0, "white", (60.0, 60.0), 0)
    y = augment(w, ch, np.random.default_rng(0))
    assert np.sqrt(np.mean(y ** 2)) / np.sqrt(np.mean(w ** 2)) == pytest.approx(0.1, rel=0.05)


def test_room_impulse_decays():
    h = room_impulse(0.5, np.random.default_rng(0))
    assert h[0] == 1.0 and len(h) == 8000
    early, late = np.abs(h[100:1000]).mean(), np.abs(h[-1000:]).mean()
    assert late < early / 100


def test_babble_uses_the_sources_and_seed_is_stable():
    w = _vowel()
    ch = Channel(0.0, "flat", 0.0, "babble", (5.0, 5.0), 0)
    y = augment(w, ch, np.random.default_rng(0), babble=[_vowel(f0=300.0), _vowel(f0=90.0)])
    assert np.isfinite(y).all() and not np.allclose(y, w)
    assert seed_of("a", 1) == seed_of("a", 1) != seed_of("a", 2)


def test_codec_round_trip_keeps_length():
    w = _vowel()
    ch = Channel(0.0, "flat", 0.0, "white", (60.0, 60.0), 32)
    y = augment(w, ch, np.random.default_rng(0))
    assert y.shape == w.shape and np.isfinite(y).all()


def test_empty_audio_passes_through():
    assert augment(np.zeros(0, np.float32), random_channel(np.random.default_rng(0)), np.random.default_rng(0)).size == 0
