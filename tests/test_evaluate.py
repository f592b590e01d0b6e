"""evaluate: hiding modalities (what the device sees without camera or text) and argument checks."""

import numpy as np
import pytest

from mlsan_edge.evaluate import evaluate, hide_modalities
from tests.test_replay import make_table


def test_hide_modalities_masks_and_zeroes_what_is_hidden():
    t = make_table()
    for m in ("text", "audio", "visual"):
        getattr(t, f"mask_{m}")[:] = True
    t.mask_voice[:] = True
    t.visual[:] = 1.0
    out = hide_modalities(t, ("audio",))
    assert out.mask_audio.all() and out.mask_voice.all()
    assert not out.mask_text.any() and not out.mask_visual.any() and not out.visual.any() and not out.text.any()
    no_audio = hide_modalities(make_table(), ("text",))
    assert not no_audio.mask_voice.any() and not no_audio.voice.any()  # the voice comes from the audio


def test_hide_modalities_rejects_unknown_or_empty():
    with pytest.raises(ValueError, match="subset of text, audio, visual"):
        hide_modalities(make_table(), ("audio", "video"))
    with pytest.raises(ValueError, match="non-empty"):
        hide_modalities(make_table(), ())


def test_actors_are_only_for_ravdess(tmp_path):
    (tmp_path / "meld").mkdir()
    with pytest.raises(ValueError, match="RAVDESS actors"):
        evaluate("default", "meld", tmp_path / "meld", actors=[1], backend="onnxruntime", progress=False)
