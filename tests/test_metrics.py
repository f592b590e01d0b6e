"""metrics: classification report and cluster purity/coverage."""

import numpy as np
import pytest

from mlsan_edge.metrics import purity_coverage, report


def test_purity_coverage_counts_majorities():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = [1, 1, 2, 3, 3, 3]  # a split in two; b and c merged
    pur, cov = purity_coverage(truth, pred)
    assert pur == pytest.approx(5 / 6)  # cluster 3's majority is b: c's clip is impure
    assert cov == pytest.approx(5 / 6)  # a's second cluster is not in a's largest
    assert purity_coverage([1, 2, 3], [7, 8, 9]) == (1.0, 1.0)
    assert purity_coverage([1, 1, 1, 1], [5, 5, 5, 5]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        purity_coverage([], [])


def test_report_accuracy_and_f1():
    r = report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["x", "y"])
    assert r["accuracy"] == pytest.approx(75.0) and r["n"] == 4


@pytest.mark.parametrize("seed", range(6))
def test_report_matches_scikit_learn(seed):
    """Random labels, with classes absent from the truth, from the predictions, or from both."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(7)]
    n = int(rng.integers(1, 60))
    allowed_true = rng.choice(7, size=int(rng.integers(1, 7)), replace=False)  # some classes never occur
    allowed_pred = rng.choice(7, size=int(rng.integers(1, 7)), replace=False)
    y_true, y_pred = rng.choice(allowed_true, n), rng.choice(allowed_pred, n)
    if seed == 0:
        y_pred = y_true.copy()  # perfect
    r = report(y_true, y_pred, classes)
    labels = list(range(7))
    assert r["n"] == n
    assert r["accuracy"] == pytest.approx(100 * metrics.accuracy_score(y_true, y_pred), abs=0.005)
    assert r["weighted_f1"] == pytest.approx(
        100 * metrics.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0), abs=0.005)
    present = sorted(set(y_true.tolist()))  # macro F1 over the classes in the truth
    assert r["macro_f1"] == pytest.approx(
        100 * metrics.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0), abs=0.005)
    per_class = metrics.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    assert set(r["per_class_f1"]) == {classes[c] for c in present}  # only classes with support
    for c in present:
        assert r["per_class_f1"][classes[c]] == pytest.approx(100 * per_class[c], abs=0.005)
    np.testing.assert_array_equal(r["confusion"], metrics.confusion_matrix(y_true, y_pred, labels=labels))
    assert r["support"] == {classes[c]: int((y_true == c).sum()) for c in labels}


def test_report_of_nothing():
    r = report(np.array([], np.int64), np.array([], np.int64), ["x", "y"])
    assert r["n"] == 0 and r["accuracy"] == 0.0 and r["weighted_f1"] == 0.0 and r["per_class_f1"] == {}


def test_purity_coverage_counts_unknown_speakers_as_singletons():
    from mlsan_edge.metrics import purity_coverage

    # actor a: 3 clips, one left unknown; actor b: 2 clips in one cluster
    pur, cov = purity_coverage(["a", "a", "a", "b", "b"], [1, 1, None, 2, 2])
    assert pur == 1.0 and cov == 0.8
    assert purity_coverage(["a", "b"], [None, None]) == (1.0, 1.0)


def test_calibration_error_bins_and_edges():
    from mlsan_edge.metrics import calibration_error

    assert calibration_error([], []) == 0.0
    assert calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)  # 1.0 falls in the last bin
    assert calibration_error([0.9, 0.9], [False, False]) == pytest.approx(0.9)
    # two bins: 0.25 -> half right (|0.5 - 0.25|), 0.95 -> all right (|1 - 0.95|), each half the items
    ece = calibration_error([0.25, 0.25, 0.95, 0.95], [1, 0, 1, 1], bins=15)
    assert ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    with pytest.raises(ValueError, match="differ in length"):
        calibration_error([0.5], [1, 0])
