"""`mlsan-edge export` (packaging.write_bundle) packs the encoders and VAD a checkpoint was trained
with, checked by hash, and writes no absolute path into the bundle."""

from __future__ import annotations

import json

import pytest

from conftest import requires_torch
from mlsan_edge.feature_contract import FeatureContractError
from mlsan_edge.bundle import BundleError, check_feature_contract, expected_feature_contract, load_bundle
from mlsan_edge.profile import GlobalStats

pytestmark = requires_torch


def tiny_checkpoint(path, **meta_changes):
    from mlsan_edge import train
    from mlsan_edge.data.extract import file_sha
    from mlsan_edge.training_job import ENCODER_ROLES
    from test_stages import make_model, make_table, tiny

    table = make_table()
    default = load_bundle("default", verify=False)
    meta = {"encoders": {r: default.manifest.models[r].file for r in ENCODER_ROLES}, "encoder_bundle": "default",
            "encoder_sha256": {r: file_sha(default.path(r)) for r in ENCODER_ROLES},
            "distill": {"teacher": "/srv/runs/teacherN"}, **meta_changes}
    return train.save_checkpoint(path, make_model(tiny("student"), table), GlobalStats.fit(table), meta)


def test_export_packs_the_checkpoints_encoders_by_relative_path(tmp_path, torch_one_thread):
    from mlsan_edge.packaging import write_bundle
    from mlsan_edge.training_job import checkpoint_encoders

    b = load_bundle(write_bundle(tiny_checkpoint(tmp_path / "ck"), tmp_path / "b", calibration=None))
    default = load_bundle("default", verify=False)
    for role in ("text_encoder", "voice_encoder", "vad"):
        assert b.file_sha256(b.manifest.models[role].file) == default.file_sha256(default.manifest.models[role].file)
    assert "vad/NOTICE" in b.manifest.files and b.tokenizer_path.is_file()
    text = (b.root / "teacher" / "model.json").read_text()
    doc = json.loads(text)
    assert "/srv" not in text and "encoder_bundle" not in doc and doc["distill"]["teacher"] == "teacherN"
    assert doc["encoders"] == {"text_encoder": "encoders/text_encoder.int8.onnx",
                               "voice_encoder": "encoders/voice_encoder.onnx", "vad": "vad/silero_vad.onnx"}
    assert checkpoint_encoders(b.root / "teacher") == {r: b.root / f for r, f in doc["encoders"].items()}
    contract = b.manifest.feature_contract  # the whole contract, with the tiny network's audio width
    assert contract == {**contract, **expected_feature_contract(), "audio_dim": 6}
    with pytest.raises(FeatureContractError, match=r"feature_contract\.audio_dim is 6 but this mlsan_edge computes 372"):
        check_feature_contract(b)


def test_export_refuses_encoders_other_than_the_checkpoints(tmp_path):
    from mlsan_edge.packaging import write_bundle

    ck = tiny_checkpoint(tmp_path / "ck", encoder_sha256={"voice_encoder": "0123456789abcdef"})
    with pytest.raises(ValueError, match=r"voice_encoder.onnx is not the voice_encoder checkpoint .* was trained with"):
        write_bundle(ck, tmp_path / "b", calibration=None)
    assert not (tmp_path / "b").exists()
