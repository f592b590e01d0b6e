"""The bundle: round trip, every refusal with a message naming the field or file, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlsan_edge.bundle as bundle_mod
from mlsan_edge.bundle import (
    MANIFEST_NAME,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    BundleError,
    BundleWriter,
    Manifest,
    load_bundle,
    sha256_file,
)
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
