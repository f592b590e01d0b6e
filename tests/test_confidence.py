"""Temperature and distance to the training data (confidence.py)."""

import json

import numpy as np
import pytest

from mlsan_edge.confidence import (Confidence, distance_quantiles, feature_distance, fit_temperature, temper)


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
    good = Confidence(1.7, {"audio": {"p99": 2.0}}, {"data": "x"})
    (tmp_path / "confidence.json").write_text(json.dumps(good.to_dict()))
    assert Confidence.load(tmp_path / "confidence.json") == good
