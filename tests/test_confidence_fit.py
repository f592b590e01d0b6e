"""Temperatures from held-out predictions and cross-validation's folds (confidence_fit.py)."""

import numpy as np
import pytest

from conftest import requires_torch
from mlsan_edge.confidence import temper
from mlsan_edge.confidence_fit import crossfit, crossval_folds, fit_temperatures


def _sample(seed: int, sharpen, ood, c: int = 7) -> dict:
    """Labels drawn from true probabilities; the model `sharpen` (one per row or a number) times too sharp."""
    rng = np.random.default_rng(seed)
    n = len(ood)
    logits = rng.normal(0, 1.5, (n, c))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=pi) for pi in true_p])
    return {"probs": temper(true_p, 1 / np.broadcast_to(np.asarray(sharpen, float), (n,))[:, None]), "label": y,
            "ood": np.asarray(ood, float)}


def _fold(seed: int, n: int = 600) -> dict:
    """A cross-validation fold: in domain (ood ~0.4), 1.3x too sharp with a face, 1.5x audio only."""
    ood = np.random.default_rng(seed + 100).uniform(0.2, 0.5, n)
    face, audio = _sample(seed, 1.3, ood), _sample(seed + 50, 1.5, ood)
    return {**face, "probs_audio": audio["probs"], "label": face["label"], "label_audio": audio["label"]}


def test_fit_temperatures_separates_in_domain_from_far_voices():
    # far voices (ood 0.8-1.0) are 3x too sharp, in-domain ones (0.2-0.5) 1.5x: base + slope explain both
    near = _sample(0, 1.5, np.random.default_rng(1).uniform(0.2, 0.5, 2000))
    far_ood = np.random.default_rng(2).uniform(0.8, 1.0, 2000)
    far = _sample(3, 1 + 1.5 + 4 * (far_ood - 0.5), far_ood)
    t = fit_temperatures([near, far], [], knee=0.5)
    assert t["temperature_audio_only"] == pytest.approx(1.5, abs=0.3)
    assert t["slope"] > 2 and t["temperature"] == 1.0  # no face data: the given base
    t = fit_temperatures([near], [_sample(4, 1.3, np.full(2000, 0.3))], knee=0.5)
    assert t["temperature"] == pytest.approx(1.3, abs=0.15)


def test_crossfit_never_calibrates_a_fold_on_itself_and_lowers_ece():
    folds = []
    for k in range(4):
        f = _fold(k)
        folds.append({"probs": f["probs"], "probs_audio": f["probs_audio"], "label": f["label"], "ood": f["ood"]})
    r = crossfit(folds, [], knee=0.5)
    assert len(r["folds"]) == 4
    assert all(f["temperature"] == pytest.approx(1.3, abs=0.2) for f in r["folds"])
    assert r["ece_face_after_mean"] < r["ece_face_before_mean"]
    # a fold unlike the others does not pull its own temperature
    odd = dict(folds[3], probs=temper(folds[3]["probs"], 1 / 3.0))
    assert crossfit(folds[:3] + [odd], [], knee=0.5)["folds"][3]["temperature"] == pytest.approx(1.3, abs=0.2)


def test_crossval_folds_reads_the_saved_predictions_and_explains_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="crossval --json"):
        crossval_folds(tmp_path / "cv.json")
    f = _fold(0, n=20)
    np.savez(tmp_path / "cv.full.s0.f0.npz", **f)
    np.savez(tmp_path / "cv.full.s0.f1.npz", **f)
    got = crossval_folds(tmp_path / "cv.json")
    assert len(got) == 2 and np.array_equal(got[1]["label"], f["label"])


@requires_torch
def test_fit_confidence_hears_held_out_speakers_audio_only_and_joins_the_folds():
    from mlsan_edge.confidence_fit import fit_confidence
    from mlsan_edge.profile import GlobalStats
    from test_stages import make_model, make_table, tiny

    train_t, held = make_table(n_groups=6, length=10, seed=1), make_table(n_groups=4, length=10, seed=2)
    held.label[:] = np.arange(len(held)) % 7  # labelled held-out speakers
    stats = GlobalStats.fit(train_t)
    model = make_model(tiny("student"), train_t, seed=0)
    conf = fit_confidence(model, stats, train_t, [held])
    assert conf.temperature == 1.0 and conf.temperature_audio_only >= 1.0 and conf.slope >= 0
    assert conf.fitted_on["audio_only"] == f"{held.corpus} ({int(held.mask_audio.sum())})" and conf.fitted_on["face"] == "none (base given)"
    assert set(conf.distance) == {"audio", "visual"} and 0 < conf.knee < 1
    folds = [dict(_fold(k, n=300), probs_audio=_fold(k + 10, n=300)["probs"]) for k in range(3)]
    both = fit_confidence(model, stats, train_t, [held], crossval=folds)
    assert both.temperature == pytest.approx(1.3, abs=0.25)  # the folds are 1.3x too sharp with a face
    assert len(both.fitted_on["crossval_nested"]["folds"]) == 3
    assert "cross-validation held-out actors (900)" in both.fitted_on["audio_only"]
