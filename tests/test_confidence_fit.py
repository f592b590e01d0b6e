"""Cross-fitted temperature from cross-validation's held-out predictions (confidence_fit.py)."""

import numpy as np
import pytest

from mlsan_edge.confidence import temper
from mlsan_edge.confidence_fit import crossfit_temperature, crossval_folds


def _fold(seed: int, sharpen: float, n: int = 1500, c: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, c))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=pi) for pi in true_p])
    return {"probs": temper(true_p, 1 / sharpen), "label": y, "ood": rng.uniform(0, 1, n),
            "slope": np.array(0.0), "knee": np.array(0.5)}


def test_crossfit_recovers_the_temperature_and_never_calibrates_a_fold_on_itself():
    folds = [_fold(k, 1.6) for k in range(4)]
    r = crossfit_temperature(folds)
    assert r["temperature"] == pytest.approx(1.6, abs=0.25)
    assert len(r["folds"]) == 4 and all(f["temperature"] == pytest.approx(1.6, abs=0.3) for f in r["folds"])
    assert r["ece_after_mean"] < r["ece_before_mean"] and r["ece_after_pooled"] < r["ece_before_pooled"]
    # a fold unlike the others does not pull its own temperature
    odd = crossfit_temperature([_fold(k, 1.6) for k in range(3)] + [_fold(9, 3.0)])
    assert odd["folds"][3]["temperature"] == pytest.approx(1.6, abs=0.3)


def test_crossval_folds_reads_the_saved_predictions_and_explains_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="crossval --json"):
        crossval_folds(tmp_path / "cv.json")
    f = _fold(0, 1.0, n=20)
    np.savez(tmp_path / "cv.full.s0.f0.npz", **f)
    np.savez(tmp_path / "cv.full.s0.f1.npz", **f)
    got = crossval_folds(tmp_path / "cv.json")
    assert len(got) == 2 and np.array_equal(got[1]["label"], f["label"])
