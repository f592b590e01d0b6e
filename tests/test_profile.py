"""The online speaker profile: Welford statistics, shrinkage, merging and serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlsan_edge.profile import PRIOR_COUNT, VAR_FLOOR, ModalityStats, SpeakerProfile

DIMS = {"audio": 5, "visual": 3, "text": 4}


def observations(n: int, dim: int, seed: int, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, scale, size=(n, dim))


def fed(xs: np.ndarray) -> ModalityStats:
    s = ModalityStats(xs.shape[1])
    for x in xs:
        s.update(x)
    return s


@pytest.mark.parametrize("n", [1, 2, 17, 500])
def test_welford_matches_numpy(n):
    xs = observations(n, 6, seed=n, loc=3.0, scale=2.0)
    s = fed(xs)
    assert s.count == n
    np.testing.assert_allclose(s.mean, xs.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.m2 / s.count, xs.var(0), rtol=1e-9, atol=1e-12)


def test_welford_is_stable_with_a_large_offset():
    xs = observations(1000, 3, seed=1) + 1e6  # the naive sum-of-squares formula loses all precision here
    np.testing.assert_allclose(fed(xs).m2 / 1000, xs.var(0), rtol=1e-6)


def test_calibration_is_global_at_count_zero():
    g_mean, g_var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1e-6])
    mean, var, conf = ModalityStats(3).calibration(g_mean, g_var)
    np.testing.assert_allclose(mean, g_mean)
    np.testing.assert_allclose(var, np.maximum(g_var, VAR_FLOOR))
    assert conf == 0.0 and mean.dtype == var.dtype == np.float32


def test_calibration_approaches_the_speaker():
    g_mean, g_var = np.zeros(4), np.full(4, 0.01)  # a corpus narrower than this speaker
    xs = observations(2000, 4, seed=2, loc=5.0, scale=0.5)
    s, dist, confs = ModalityStats(4), [], []
    for i, x in enumerate(xs, start=1):
        s.update(x)
        if i in (1, 4, 16, 64, 256, 2000):
            mean, var, conf = s.calibration(g_mean, g_var)
            dist.append(np.abs(mean - xs[:i].mean(0)).max())
            confs.append(conf)
            assert conf == pytest.approx(i / (i + PRIOR_COUNT))
    assert all(a > b for a, b in zip(dist, dist[1:]))  # monotonically closer to the speaker's mean
    assert all(a < b for a, b in zip(confs, confs[1:])) and confs[-1] > 0.99
    np.testing.assert_allclose(mean, xs.mean(0), atol=0.02)
    np.testing.assert_allclose(var, xs.var(0), rtol=0.05)  # the speaker's spread, not the global one
    # a speaker narrower than the corpus is never standardised by their narrow spread (issue #9)
    np.testing.assert_allclose(s.calibration(g_mean, np.ones(4))[1], np.ones(4))


def test_calibration_after_one_observation_is_the_documented_mixture():
    s = ModalityStats(2)
    x = np.array([4.0, -4.0])
    s.update(x)
    mean, var, w = s.calibration(np.zeros(2), np.ones(2), prior=3.0)
    assert w == pytest.approx(0.25)
    np.testing.assert_allclose(mean, 0.25 * x)
    np.testing.assert_allclose(var, 0.25 * (0 + (x - 0.25 * x) ** 2) + 0.75 * 1.0, rtol=1e-6)


def feed_profile(p: SpeakerProfile, seed: int, n: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    seen = []
    for i in range(n):
        feats = {m: rng.normal(seed, 1.0, d) for m, d in DIMS.items()}
        if i % 3 == 1:
            feats["visual"] = None  # a missing modality
        voice, latent = rng.normal(size=p.voice_dim), rng.normal(size=7)
        p.update(feats, voice=voice, latent=latent)
        seen.append((feats, voice, latent))
    return seen


def test_merge_equals_one_profile_fed_both_streams():
    a, b, both = (SpeakerProfile(DIMS, voice_dim=8) for _ in range(3))
    for seed, n, target in ((1, 9, a), (2, 5, b)):
        for feats, voice, latent in feed_profile(target, seed, n):
            both.update(feats, voice=voice, latent=latent)
    a.merge(b)
    for m in DIMS:
        assert a.stats[m].count == both.stats[m].count
        np.testing.assert_allclose(a.stats[m].mean, both.stats[m].mean, rtol=1e-10)
        np.testing.assert_allclose(a.stats[m].m2, both.stats[m].m2, rtol=1e-10)
    assert a.count == both.count == 14
    np.testing.assert_allclose(a.voice_centroid(), both.voice_centroid(), rtol=1e-6)
    np.testing.assert_allclose(a.prototype(), both.prototype(), rtol=1e-6)


def test_merge_with_empty_profiles():
    a, empty = SpeakerProfile(DIMS, voice_dim=8), SpeakerProfile(DIMS, voice_dim=8)
    feed_profile(a, 3, 4)
    before = json.dumps(a.to_dict())
    a.merge(empty)
    assert json.dumps(a.to_dict()) == before
    fresh = SpeakerProfile(DIMS, voice_dim=8)
    fresh.merge(a)
    assert json.dumps(fresh.to_dict()) == before


def test_json_round_trip():
    p = SpeakerProfile(DIMS, voice_dim=8)
    feed_profile(p, 4, 6)
    q = SpeakerProfile.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.dims == p.dims and q.voice_dim == p.voice_dim and q.count == p.count
    for m in DIMS:
        np.testing.assert_array_equal(q.stats[m].mean, p.stats[m].mean)
        np.testing.assert_array_equal(q.stats[m].m2, p.stats[m].m2)
        assert q.stats[m].count == p.stats[m].count
    np.testing.assert_array_equal(q.voice_centroid(), p.voice_centroid())
    np.testing.assert_array_equal(q.prototype(), p.prototype())
    g = np.zeros(DIMS["audio"]), np.ones(DIMS["audio"])
    for x, y in zip(q.stats["audio"].calibration(*g), p.stats["audio"].calibration(*g)):
        np.testing.assert_array_equal(x, y)
    empty = SpeakerProfile.from_dict(json.loads(json.dumps(SpeakerProfile(DIMS).to_dict())))
    assert empty.count == 0 and empty.prototype() is None and empty.voice_centroid() is None


def test_nan_observations_are_ignored():
    s = ModalityStats(3)
    s.update([1.0, 2.0, 3.0])
    s.update([np.nan, 0.0, 0.0])
    s.update([0.0, np.inf, 0.0])
    assert s.count == 1
    np.testing.assert_array_equal(s.mean, [1.0, 2.0, 3.0])
    assert np.all(np.isfinite(s.calibration(np.zeros(3), np.ones(3))[1]))
    p = SpeakerProfile(DIMS, voice_dim=4)
    p.update({"audio": np.full(5, np.nan)}, voice=np.array([np.nan, 1.0, 0.0, 0.0]))
    p.update({}, voice=np.zeros(4))  # a zero vector has no direction
    assert p.count == 0 and p.voice_centroid() is None


def test_wrong_width_and_voice_centroid():
    with pytest.raises(ValueError, match="vector of 3 values, got 4"):
        ModalityStats(3).update(np.zeros(4))
    p = SpeakerProfile(DIMS, voice_dim=3)
    p.update({}, voice=np.array([10.0, 0.0, 0.0]))
    p.update({}, voice=np.array([0.0, 0.1, 0.0]))  # each embedding counts equally, whatever its norm
    c = p.voice_centroid()
    assert c.dtype == np.float32 and np.linalg.norm(c) == pytest.approx(1.0)
    np.testing.assert_allclose(c, [2 ** -0.5, 2 ** -0.5, 0.0], rtol=1e-6)
    assert p.count == p.voice_count == 2  # count includes voice-only observations
