"""training_job: the voice scorer fitted from the training table's RAVDESS voices."""

from types import SimpleNamespace

import numpy as np

from mlsan_edge.training_job import fit_voice_scorer


def table(speakers, voiced):
    rng = np.random.default_rng(0)
    return SimpleNamespace(speaker=np.array(speakers), mask_voice=np.array(voiced),
                           voice=rng.normal(size=(len(speakers), 8)).astype(np.float32))


def test_fits_on_ravdess_voices_only():
    t = table(["ravdess_actor_01"] * 5 + ["ravdess_actor_02"] * 5 + ["meld:Joey"] * 4,
              [True] * 9 + [False] + [False] * 4)
    sc = fit_voice_scorer(t)
    assert sc is not None and sc.cohort.shape == (9, 8)  # 9 voiced RAVDESS rows; MELD has no voice


def test_none_without_two_ravdess_speakers(caplog):
    assert fit_voice_scorer(table(["ravdess_actor_01"] * 3 + ["meld:Joey"] * 3, [True] * 6)) is None
    assert "fewer than 2 RAVDESS speakers" in caplog.text
