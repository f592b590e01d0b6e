"""evaluate: hiding modalities (what the device sees without camera or text), argument checks,
and the stage-graph evaluation of the embedded sample: `replay_table` in stream order."""

import json

import numpy as np
import pytest

from mlsan_edge.config import EMOTIONS
from mlsan_edge.data.replay import replay_table, stream_order
from mlsan_edge.evaluate import STREAM_SEED, evaluate, evaluation_table, hide_modalities
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


@pytest.fixture(scope="module")
def sample_dir():
    from mlsan_edge.cli import SAMPLE_DIR  # the RAVDESS clips `mlsan-edge demo` runs on

    return SAMPLE_DIR


def test_stage_graph_evaluation_is_replay_table_in_stream_order(sample_dir, tmp_path):
    from mlsan_edge.backends.stages import Stages

    res = evaluate("default", "ravdess", sample_dir, stream=True, details=True, backend="onnxruntime",
                   precision="fp32", progress=False, json_out=tmp_path / "r.json")
    stages = Stages("default", backend="onnxruntime", precision="fp32")
    enc = {r: stages.bundle.path(r) for r in ("text_encoder", "voice_encoder") if r in stages.bundle.roles}
    table = evaluation_table("ravdess", sample_dir, "dev", enc, progress=False)
    order = stream_order(table, shuffle_groups=set(np.unique(table.group).tolist()), seed=STREAM_SEED)
    probs = replay_table(stages, table, order)["probs"]
    assert res["backend"] == "onnxruntime" and res["n"] == len(table) > 1
    assert [p["row"] for p in res["predictions"]] == order.tolist()
    for p in res["predictions"]:
        assert p["emotion"] == EMOTIONS[probs[p["row"]].argmax()]
        assert p["p"] == pytest.approx(float(probs[p["row"]].max()), abs=1e-4)
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == res["accuracy"]
    assert (tmp_path / "r.confusion.png").stat().st_size > 0


def test_json_without_matplotlib_warns_and_skips_the_png(sample_dir, tmp_path, monkeypatch):
    """The device install has no matplotlib: `mlsan-edge demo --json` still writes the JSON."""
    import mlsan_edge.evaluate as ev

    def no_matplotlib(*args, **kwargs):
        raise ImportError("plotting the confusion matrix needs matplotlib")

    monkeypatch.setattr(ev, "plot_confusion", no_matplotlib)
    with pytest.warns(RuntimeWarning, match="without the confusion-matrix PNG"):
        res = evaluate("default", "ravdess", sample_dir, stream=True, backend="onnxruntime", progress=False,
                       json_out=tmp_path / "r.json")
    assert "confusion_png" not in res and json.loads((tmp_path / "r.json").read_text())["n"] == res["n"]
    assert not (tmp_path / "r.confusion.png").exists()
