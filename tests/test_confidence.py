"""Temperature and distance to the training data (confidence.py)."""

import json

import numpy as np
import pytest

from mlsan_edge.confidence import (Confidence, distance_quantiles, feature_distance, fit_base_and_slope, fit_temperature,
                                   temper)


def test_temper_keeps_the_ranking_and_flattens():
    p = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05]])
    q = temper(p, 2.0)
    assert (q.argmax(1) == p.argmax(1)).all()
    assert (q.max(1) < p.max(1)).all()
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(temper(p, 1.0), p, atol=1e-7)


def test_fit_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, c = 4000, 5
    logits = rng.normal(0, 1.5, (n, c))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=pi) for pi in true_p])
    over = temper(true_p, 1 / 3.0)  # three times too sharp
    assert fit_temperature(over, y) == pytest.approx(3.0, rel=0.15)


def _overconfident(n: int, c: int, sharpen: float, seed: int = 0):
    """Probabilities `sharpen` times too sharp, and labels drawn from the true ones."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, c))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=pi) for pi in true_p])
    return temper(true_p, 1 / sharpen), y


def test_fit_base_and_slope_finds_a_flat_overconfidence_and_a_growing_one():
    p, y = _overconfident(3000, 5, 2.5)
    ood = np.random.default_rng(1).uniform(0, 1, len(y))  # unrelated to how wrong the model is
    base, slope = fit_base_and_slope(p, y, ood, knee=0.5)
    assert base == pytest.approx(2.5, abs=0.4) and slope < 1.0
    # sharper the farther the voice: the slope carries it, the base stays near 1
    ood = np.linspace(0, 2, len(y))
    far = np.concatenate([temper(pi[None], 1 / (1 + 2 * max(0, o - 0.5)))
                          for pi, o in zip(temper(p, 2.5), ood)])  # back to true, then sharpened with distance
    base, slope = fit_base_and_slope(far, y, ood, knee=0.5)
    assert base < 1.5 and slope == pytest.approx(2.0, abs=0.7)


def test_audio_only_and_live_face_temperatures():
    conf = Confidence(1.2, {}, {}, slope=1.0, knee=0.5, temperature_audio_only=2.0)
    assert conf.temperature_at(None) == 1.2  # face features as training saw them
    assert conf.temperature_at(None, audio_only=True) == 2.0
    assert conf.temperature_at(None, live_face=True) == 2.0  # a live face never makes it surer than the voice
    assert conf.temperature_at(1.0, audio_only=True) == pytest.approx(2.5)
    assert Confidence(3.0, temperature_audio_only=2.0).temperature_at(None, live_face=True) == 3.0
    assert Confidence(1.5).temperature_at(0.2, audio_only=True) == 1.5  # no audio-only base: the face one
    p = np.array([0.7, 0.2, 0.1])
    assert conf.calibrate(p, None, audio_only=True).max() < conf.calibrate(p, None).max() < 0.7


def test_distance_and_ood_ratio():
    mean, var = np.zeros(4), np.full(4, 4.0)
    assert feature_distance(np.full(4, 2.0), mean, var) == pytest.approx(1.0)
    x = np.random.default_rng(0).normal(0, 2.0, (5000, 4))
    q = distance_quantiles(x, mean, var)
    assert q["p50"] < q["p95"] < q["p99"]
    conf = Confidence(1.0, {"audio": q})
    assert conf.ood(np.full(4, 2.0), "audio", mean, var) == pytest.approx(1.0 / q["p99"])
    assert conf.ood(None, "audio", mean, var) is None and conf.ood(np.zeros(4), "visual", mean, var) is None


def test_load_missing_is_identity_and_bad_temperature_is_refused(tmp_path):
    c = Confidence.load(tmp_path / "confidence.json")
    assert c.temperature == 1.0 and c.distance == {}
    (tmp_path / "confidence.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="positive"):
        Confidence.load(tmp_path / "confidence.json")
    (tmp_path / "confidence.json").write_text(json.dumps({"temperature": 1.0, "temperature_audio_only": 0}))
    with pytest.raises(ValueError, match="positive"):
        Confidence.load(tmp_path / "confidence.json")
    good = Confidence(1.7, {"audio": {"p99": 2.0}}, {"data": "x"}, 0.5, 0.4, 2.2)
    (tmp_path / "confidence.json").write_text(json.dumps(good.to_dict()))
    assert Confidence.load(tmp_path / "confidence.json") == good
