"""Training tables with channel-augmented copies (data/extract.py) on the embedded RAVDESS sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import mlsan_edge
from mlsan_edge.data.extract import GROUP_STRIDE, ravdess_table
from mlsan_edge.data.table import acted_rows, augmented_rows

MINI = Path(mlsan_edge.__file__).parent / "assets" / "sample" / "ravdess_mini"


def test_augmented_copies_are_new_streams_of_the_same_clips(tmp_path):
    t = ravdess_table(MINI, None, use_text=False, workers=1, cache_dir=tmp_path, progress=False, augment_copies=1)
    n = len(t) // 2
    assert len(t) == 2 * n == 16
    orig, copy = np.arange(n), np.arange(n, 2 * n)
    assert list(t.speaker[copy]) == [s + "~ch1" for s in t.speaker[orig]]
    assert (t.group[copy] == t.group[orig] + GROUP_STRIDE).all() and (t.label[copy] == t.label[orig]).all()
    assert augmented_rows(t.speaker).tolist() == [False] * n + [True] * n
    assert acted_rows(t.speaker).all() and not acted_rows(np.array(["meld:Ross"])).any()
    assert not t.mask_visual[copy].any() and t.mask_audio.all()
    # another channel: other features, same position order within each stream
    assert np.abs(t.audio[copy] - t.audio[orig]).mean() > 0.1
    assert (t.position[copy] == t.position[orig]).all()
    # cached: the same table again without extraction, and a different key without copies
    again = ravdess_table(MINI, None, use_text=False, workers=1, cache_dir=tmp_path, progress=False, augment_copies=1)
    np.testing.assert_array_equal(again.audio, t.audio)
    plain = ravdess_table(MINI, None, use_text=False, workers=1, cache_dir=tmp_path, progress=False)
    assert len(plain) == n and len(list(tmp_path.glob("*.npz"))) == 2
    np.testing.assert_allclose(plain.audio, t.audio[orig], atol=1e-5)
