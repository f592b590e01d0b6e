"""The bundle: round trip, every refusal with a message naming the field or file, atomic writes,
the feature contract check, and a default bundle with one copy of each asset and no build paths."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import mlsan_edge.bundle as bundle_mod
from mlsan_edge.feature_contract import FeatureContractError
from mlsan_edge.bundle import (
    MANIFEST_NAME,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    BundleError,
    Manifest,
    check_feature_contract,
    expected_feature_contract,
    load_bundle,
    sha256_file,
)
from mlsan_edge.bundle_writer import BundleWriter
from test_backends import IO, make_tiny_onnx, write_bundle

CONTRACT = {"sample_rate": 16000, "hop": 160, "dims": {"audio": 16, "text": 8}, "normalisation": "per-utterance"}


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return write_bundle(tmp_path / "bundle")


def edit_manifest(root: Path, change) -> None:
    m = json.loads((root / MANIFEST_NAME).read_text())
    change(m)
    (root / MANIFEST_NAME).write_text(json.dumps(m))


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


def test_round_trip(tmp_path):
    src = make_tiny_onnx(tmp_path / "src.onnx")
    with BundleWriter(tmp_path / "b", name="tiny", classes=["a", "b"], feature_contract=CONTRACT,
                      provenance={"data": "synthetic", "git_commit": "abc", "date": "2026-11-26", "command": "x"},
                      metrics={"ravdess_unseen_acc": 0.5}) as w:  # fmt: skip
        w.add_model("student.fp32", "models/student.fp32.onnx", src=src, **IO)
        (w.dir / "notes.txt").write_text("calibration: 10 utterances")  # any file gets hashed
        w.metrics["meld_dev_wf1"] = 0.6
    b = load_bundle(tmp_path / "b")
    m = b.manifest
    assert (m.schema_version, m.name, m.classes, m.feature_contract) == (SCHEMA_VERSION, "tiny", ("a", "b"), CONTRACT)
    assert m.metrics == {"ravdess_unseen_acc": 0.5, "meld_dev_wf1": 0.6} and m.provenance["git_commit"] == "abc"
    assert set(m.files) == {"models/student.fp32.onnx", "notes.txt"}
    assert m.files["notes.txt"]["sha256"] == sha256_file(b.root / "notes.txt")
    assert b.path("student.fp32") == (tmp_path / "b" / "models" / "student.fp32.onnx").resolve()
    spec = b.model_spec("student.fp32")
    assert [(t.name, t.shape, t.dtype) for t in spec.inputs] == [("audio", ("batch", 16), "float32"), ("text", ("batch", 8), "float32")]
    info = json.loads(b.to_json())
    assert info["path"] == str((tmp_path / "b").resolve()) and Path(info["path"]).is_absolute()
    assert Manifest.from_dict(info) == m  # `path` is extra and ignored
    assert siblings(tmp_path / "b") == []  # no temp folders left
    with pytest.raises(ValueError, match=r"no model 'teacher'; roles: \['student.fp32'\]"):
        b.path("teacher")


def test_default_provenance_is_filled_in(tmp_path):
    with BundleWriter(tmp_path / "b", name="t", classes=["a"], feature_contract={}) as w:
        (w.dir / "x.bin").write_bytes(b"x")
    prov = load_bundle(tmp_path / "b").manifest.provenance
    assert set(prov) == {"data", "git_commit", "date", "command"} and prov["date"].startswith("20")


def test_default_resolves_to_the_packaged_bundle(bundle_dir, monkeypatch):
    assert bundle_mod.DEFAULT_BUNDLE_DIR.parts[-4:] == ("mlsan_edge", "assets", "bundles", "default")
    monkeypatch.setattr(bundle_mod, "DEFAULT_BUNDLE_DIR", bundle_dir)
    assert load_bundle("default").root == bundle_dir.resolve()
    assert load_bundle().root == bundle_dir.resolve()


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"nope is not a bundle: expected a folder with manifest.json"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"empty is not a bundle"):
        load_bundle(tmp_path / "empty")


def test_newer_schema_is_refused(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.update(schema_version=SCHEMA_VERSION + 1, renamed_field=1))
    with pytest.raises(BundleError, match=r"schema_version 2 was made by a newer mlsan_edge .*; upgrade"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("field", [f for f in REQUIRED_FIELDS if f != "schema_version"] + ["schema_version"])
def test_missing_field_is_named(bundle_dir, field):
    edit_manifest(bundle_dir, lambda m: m.pop(field))
    with pytest.raises(BundleError, match=rf"manifest is missing required field '{field}'"):
        load_bundle(bundle_dir)


def test_missing_field_inside_a_model_is_named(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["models"]["vad"].pop("outputs"))
    with pytest.raises(BundleError, match=r"models\['vad'\] is missing required field 'outputs'"):
        load_bundle(bundle_dir)


def test_model_file_must_be_hashed(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].pop("vad.onnx"))
    with pytest.raises(BundleError, match=r"models\['vad'\].file 'vad.onnx' is not listed in the manifest's 'files'"):
        load_bundle(bundle_dir)


def test_paths_must_stay_inside_the_bundle(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].update({"../evil.onnx": {"sha256": "0", "size": 1}}))
    with pytest.raises(BundleError, match=r"'../evil.onnx': paths must be relative and inside the bundle"):
        load_bundle(bundle_dir)


def test_invalid_json_is_reported(bundle_dir):
    (bundle_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(bundle_dir)


def test_missing_file_is_named(bundle_dir):
    (bundle_dir / "student.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing file 'student.int8.onnx' listed in its manifest"):
        load_bundle(bundle_dir)


def test_corrupted_onnx_is_caught_by_hash_before_parsing(bundle_dir, monkeypatch):
    path = bundle_dir / "student.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    import onnxruntime

    def no_parsing(*a, **k):
        raise AssertionError("a model was parsed before its hash was checked")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_parsing)
    with pytest.raises(BundleError, match=r"bundle file 'student.fp32.onnx' has sha256 .* the manifest says"):
        load_bundle(bundle_dir)


def test_truncated_onnx_is_caught(bundle_dir):
    path = bundle_dir / "vad.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"bundle file 'vad.onnx' is 100 bytes, the manifest says \d+: truncated"):
        load_bundle(bundle_dir)


def test_unlisted_files_and_engines_are_ignored(bundle_dir):
    (bundle_dir / "stray.onnx").write_bytes(b"junk")
    (bundle_dir / "engines").mkdir()
    (bundle_dir / "engines" / "x.engine").write_bytes(b"junk")
    b = load_bundle(bundle_dir)
    assert "stray.onnx" not in b.manifest.files and b.engine_dir == bundle_dir.resolve() / "engines"


def test_interrupted_write_leaves_nothing(tmp_path):
    dest = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        with BundleWriter(dest, name="t", classes=["a"], feature_contract={}) as w:
            (w.dir / "half.onnx").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not dest.exists() and siblings(dest) == []


def test_interrupted_overwrite_keeps_the_old_bundle(bundle_dir):
    before = (bundle_dir / MANIFEST_NAME).read_text()
    with pytest.raises(RuntimeError, match="export failed"):
        with BundleWriter(bundle_dir, name="new", classes=["a"], feature_contract={}) as w:
            (w.dir / "x.onnx").write_bytes(b"x")
            raise RuntimeError("export failed")
    assert (bundle_dir / MANIFEST_NAME).read_text() == before and load_bundle(bundle_dir).manifest.name == "tiny"
    assert siblings(bundle_dir) == []


def test_overwrite_replaces_the_whole_bundle(bundle_dir):
    with BundleWriter(bundle_dir, name="new", classes=["a"], feature_contract={}) as w:
        w.add_file("only.bin").write_bytes(b"1")
    b = load_bundle(bundle_dir)
    assert b.manifest.name == "new" and sorted(p.name for p in bundle_dir.iterdir()) == [MANIFEST_NAME, "only.bin"]
    assert siblings(bundle_dir) == []


def test_writer_errors_leave_nothing(tmp_path):
    with pytest.raises(BundleError, match="registered with file 'ghost.onnx', which was never written"):
        with BundleWriter(tmp_path / "b", name="t", classes=["a"], feature_contract={}) as w:
            w.add_model("student.fp32", "ghost.onnx", **IO)
    assert not (tmp_path / "b").exists() and siblings(tmp_path / "b") == []


def test_writer_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(BundleError, match="refusing to replace .*home: it exists and is not a bundle"):
        with BundleWriter(tmp_path / "home", name="t", classes=["a"], feature_contract={}):
            pass
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


# --- the feature contract ---------------------------------------------------------------------
def test_contract_matches_this_code():
    from mlsan_edge import config as C

    want = expected_feature_contract()
    assert (want["sample_rate"], want["hop_length"], want["audio_dim"], want["voice_dim"]) == (
        C.SAMPLE_RATE, C.HOP_LENGTH, C.AUDIO_DIM, C.VOICE_DIM)
    assert want["feature_version"] == C.FEATURE_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_feature_contract({**want, "normalisation": "free text, not compared"})


@pytest.mark.parametrize("field", list(expected_feature_contract()))
def test_contract_mismatch_names_the_field_both_values_and_what_to_do(field):
    want = expected_feature_contract()
    with pytest.raises(FeatureContractError, match=rf"bundle tiny: feature_contract\.{field} is {want[field] + 1} but "
                                          rf"this mlsan_edge computes {want[field]}; re-export the bundle with "
                                          r"this version \(`mlsan-edge export`\) or install the mlsan_edge it "
                                          r"was built with"):
        check_feature_contract({**want, field: want[field] + 1}, name="tiny")


def test_contract_mismatches_are_all_named(bundle_dir):
    contract = {**expected_feature_contract(), "hop_length": 320, "text_dim": 768}
    edit_manifest(bundle_dir, lambda m: m.update(feature_contract=contract))
    b = load_bundle(bundle_dir)  # loading alone does not check: `mlsan-edge info` shows any bundle
    with pytest.raises(FeatureContractError, match=r"hop_length is 320 but .* computes 160; feature_contract.text_dim is 768"):
        check_feature_contract(b)


def test_contract_without_a_field_warns_and_runs():
    """Bundles written before a field existed (feature_version): a warning naming it, no refusal."""
    contract = {k: v for k, v in expected_feature_contract().items() if k != "feature_version"}
    with pytest.warns(UserWarning, match=r"bundle old: feature_contract does not state feature_version; running "
                                         r"without checking it"):
        check_feature_contract(contract, name="old")


def test_packaging_writes_the_whole_contract():
    from mlsan_edge.config import AUDIO_DIM
    from mlsan_edge.packaging import feature_contract

    contract = feature_contract(AUDIO_DIM)
    assert set(expected_feature_contract()) <= set(contract) and contract["feature_version"] >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_feature_contract(contract)


# --- the default bundle -----------------------------------------------------------------------
def test_default_bundle_passes_its_contract_check():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_feature_contract(load_bundle("default"))


def test_one_copy_of_each_asset():
    """The VAD, the encoders and the tokenizer ship once: inside the default bundle."""
    package = bundle_mod.DEFAULT_BUNDLE_DIR.parents[2]
    for name in ("silero_vad.onnx", "voice_encoder.onnx", "text_encoder.int8.onnx", "tokenizer.json"):
        found = [p.relative_to(bundle_mod.DEFAULT_BUNDLE_DIR).as_posix() for p in package.rglob(name)]
        assert len(found) == 1 and not found[0].startswith(".."), (name, found)


def test_default_bundle_holds_no_build_machine_paths():
    root = bundle_mod.DEFAULT_BUNDLE_DIR
    for rel in ("manifest.json", "student/model.json", "teacher/model.json"):
        assert "/work/" not in (root / rel).read_text(), rel
    for sub in ("student", "teacher"):
        doc = json.loads((root / sub / "model.json").read_text())
        for role, rel in doc["encoders"].items():  # relative to the bundle root, and its own files
            assert not Path(rel).is_absolute() and (root / rel).is_file(), (sub, role, rel)
            assert sha256_file(root / rel).startswith(doc["encoder_sha256"][role])


def test_default_assets_come_from_the_default_bundle(bundle_dir, monkeypatch):
    from mlsan_edge.features.assets import default_asset

    b = load_bundle("default", verify=False)
    assert default_asset("voice_encoder") == b.path("voice_encoder") and default_asset("vad") == b.path("vad")
    assert default_asset("text_encoder") == b.path("text_encoder") and default_asset("tokenizer") == b.tokenizer_path
    with pytest.raises(ValueError, match=r"unknown asset role 'face'; valid: voice_encoder, text_encoder, "
                                         r"tokenizer, vad"):
        default_asset("face")
    monkeypatch.setattr(bundle_mod, "DEFAULT_BUNDLE_DIR", bundle_dir)  # DEFAULT_BUNDLE_DIR is the one place
    assert default_asset("vad") == bundle_dir.resolve() / "vad.onnx"


def test_provenance_command_has_no_absolute_paths(tmp_path, monkeypatch):
    import sys

    from mlsan_edge.bundle_writer import default_provenance

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/mlsan-edge", "export", "--checkpoint", "/srv/runs/teacherN",
                                      "--out", str(tmp_path / "out" / "b"), "--epochs", "3"])
    assert default_provenance()["command"] == "mlsan-edge export --checkpoint teacherN --out out/b --epochs 3"
