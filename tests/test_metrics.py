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
