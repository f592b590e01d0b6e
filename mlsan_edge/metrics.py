"""Classification, calibration and clustering metrics in numpy (no scikit-learn on the device) and the
confusion-matrix plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = truth, columns = prediction."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def purity_coverage(truth, pred) -> tuple[float, float]:
    """How speaker clusters `pred` match true identities `truth` (equal-length label sequences).

    Purity: share of items whose cluster's majority label is theirs. Coverage: share of items in
    their label's largest cluster (1.0 = every identity kept in one cluster). A None in `pred` (the
    runtime left the speaker unknown, e.g. a voice too short to tell) is a cluster of its own: pure,
    but it never adds to its identity's coverage."""
    _, t = np.unique(np.asarray(truth), return_inverse=True)
    ids: dict = {}
    p = np.array([-1 if x is None else ids.setdefault(x, len(ids)) for x in pred], np.int64)
    unknown = p < 0
    p[unknown] = len(ids) + np.arange(int(unknown.sum()))  # each unknown a singleton cluster
    if t.size == 0:
        raise ValueError("purity and coverage need at least one item")
    table = np.zeros((t.max() + 1, p.max() + 1), np.int64)  # identity x cluster counts
    np.add.at(table, (t, p), 1)
    return float(table.max(axis=0).sum() / t.size), float(table.max(axis=1).sum() / t.size)


def report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str] | tuple[str, ...]) -> dict:
    """accuracy, weighted/macro F1 and per-class F1 (all in percent), n and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(support, 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": round(100.0 * float((y_true == y_pred).mean()), 2) if len(y_true) else 0.0,
        "weighted_f1": round(100.0 * float((f1 * support).sum() / max(support.sum(), 1)), 2),
        "macro_f1": round(100.0 * float(f1[present].mean()) if present.any() else 0.0, 2),
        "per_class_f1": {c: round(100.0 * float(f), 2) for c, f, p in zip(classes, f1, present) if p},
        "support": {c: int(s) for c, s in zip(classes, support)},
        "confusion": cm.tolist(),
    }


def calibration_error(confidence, correct, bins: int = 15) -> float:
    """Expected calibration error: the mean |accuracy - confidence| over `bins` equal-width
    confidence bins, weighted by the share of items in each (0 = calibrated; 0.0 for no items).

    Args:
        confidence: (n,) the probability given to each answer, in [0, 1].
        correct: (n,) whether each answer was right.
    """
    conf = np.clip(np.asarray(confidence, np.float64).reshape(-1), 0.0, 1.0)
    ok = np.asarray(correct, np.float64).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} vs {ok.size}")
    if conf.size == 0:
        return 0.0
    b = np.minimum((conf * bins).astype(np.int64), bins - 1)  # [k/bins, (k+1)/bins); 1.0 in the last bin
    gap = np.abs(np.bincount(b, ok, bins) - np.bincount(b, conf, bins))  # per bin: |sum(ok) - sum(conf)|
    return float(gap.sum() / conf.size)


def plot_confusion(cm: np.ndarray | list, classes, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG (counts written in each cell).

    Raises:
        ImportError: matplotlib is not installed (it is in the [train] and [dev] extras, not the
            device install).
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plotting the confusion matrix needs matplotlib: pip install 'mlsan-edge[train]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
