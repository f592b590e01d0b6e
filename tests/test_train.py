"""train: the stranger profiles of `profile_dropout` (what the device gives a voice it cannot tell)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conftest import requires_torch
from mlsan_edge.data.replay import profile_inputs, stream_order
from mlsan_edge.profile import GlobalStats
from test_replay import make_table

pytestmark = requires_torch  # mlsan_edge.train imports torch


def _acted(t):
    """The toy table's speakers as RAVDESS actors (acted rows, one stream per group)."""
    return replace(t, speaker=np.array([f"ravdess:{s}" for s in t.speaker]))


def test_stranger_rows_get_a_first_utterances_profile_and_the_rest_are_untouched():
    from mlsan_edge.train import stranger_profiles

    t = _acted(make_table(groups=(8, 6)))
    stats = GlobalStats.fit(t)
    order = stream_order(t)
    prof = profile_inputs(t, order, stats)
    before = {k: v.copy() for k, v in prof.items()}
    firsts = {}
    for i in order:  # each speaker's first utterance: the profile a stranger gets
        firsts.setdefault(t.speaker[i], i)
    first = next(iter(firsts.values()))
    later = np.array([i for i in order if i not in firsts.values()][:5])
    stranger_profiles(prof, t, later, stats)
    for k in prof:
        if k in ("voice", "mask_voice"):
            continue
        for i in later:
            np.testing.assert_allclose(prof[k][i], before[k][first], rtol=1e-6, err_msg=k)
    # the voice input of a first utterance is its own embedding (none when it has no voice)
    np.testing.assert_array_equal(prof["mask_voice"][later], t.mask_voice[later])
    for i in later[t.mask_voice[later]]:
        np.testing.assert_allclose(prof["voice"][i], t.voice[i])
    rest = np.setdiff1d(np.arange(len(t)), later)
    for k in prof:
        np.testing.assert_array_equal(prof[k][rest], before[k][rest], err_msg=k)
    assert any(not np.allclose(before["profile_audio_mean"][i], prof["profile_audio_mean"][i]) for i in later)


def test_profile_dropout_off_leaves_the_batches_as_they_were_and_on_changes_them():
    from mlsan_edge.train import TrainConfig, epoch_batches

    t = _acted(make_table(groups=(8, 6, 5)))
    stats = GlobalStats.fit(t)
    cfg = TrainConfig(ravdess_repeats=1, neutral_first=False, batch_streams=64)

    def batches(c):
        return epoch_batches(t, stats, c, 0, np.random.default_rng(0))

    a, b = batches(cfg), batches(replace(cfg, profile_dropout=0.0))
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    c = batches(replace(cfg, profile_dropout=1.0))
    conf = np.concatenate([x["profile_conf"][x["valid"]] for x in c])
    np.testing.assert_array_equal(conf, 0.0)  # every acted utterance as a stranger's
    assert np.abs(np.concatenate([x["profile_conf"][x["valid"]] for x in a])).sum() > 0
