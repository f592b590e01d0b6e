"""Engine verification (backends/tensorrt_verify.py): the comparison and the calibration plumbing,
with onnxruntime standing in for the engine (real TensorRT: tests marked requires_tensorrt)."""

from __future__ import annotations

import numpy as np
import pytest

from mlsan_edge.backends import tensorrt_verify as tv
from mlsan_edge.backends.calibration import CalibrationError
from mlsan_edge.backends.onnxruntime import OrtBackend
from mlsan_edge.bundle import load_bundle
from test_backends import AUDIO, TEXT, feeds, make_tiny_onnx, write_bundle


def test_compare_backends_reports_differences(tmp_path):
    a = OrtBackend(make_tiny_onnx(tmp_path / "a.onnx", seed=0), threads=1)
    b = OrtBackend(make_tiny_onnx(tmp_path / "b.onnx", seed=1), threads=1)
    batches = [feeds(4, seed=i) for i in range(3)]
    same = tv.compare_backends(a, a, batches, "fp16")
    assert same.ok and same.n_samples == 12 and same.max_abs_diff == {"probs": 0.0}
    assert same.argmax_agreement == {"probs": 1.0} and "PASS: 12 samples" in same.summary()
    diff = tv.compare_backends(a, b, batches, "int8", max_batches=2)
    assert not diff.ok and diff.n_samples == 8 and diff.max_abs_diff["probs"] > 0.05
    assert diff.summary().startswith("FAIL")
    assert np.isclose(diff.argmax_agreement["probs"] * 8, round(diff.argmax_agreement["probs"] * 8))


def test_each_graph_reads_its_own_calibration_file(tmp_path):
    (tmp_path / "stage2.npz").write_bytes(b"")
    assert tv.calibration_for(tmp_path, "student.stage2") == tmp_path / "stage2.npz"
    assert tv.calibration_for(tmp_path, "student.stage3") == tmp_path  # no stage3.npz: the whole folder
    assert tv.calibration_for(tmp_path / "stage2.npz", "student.stage3") == tmp_path / "stage2.npz"


def test_verify_engine_compares_on_the_graphs_calibration_file(tmp_path, monkeypatch):
    """The engine is the ONNX file itself here (onnxruntime plays TensorRT): a perfect match."""
    monkeypatch.setenv("MLSAN_EDGE_CACHE", str(tmp_path / "cache"))
    bundle = load_bundle(write_bundle(tmp_path / "b"))
    built = []

    def ensure_engine(b, base, precision):
        built.append((base, precision))
        return b.path(f"{base}.fp32")

    monkeypatch.setattr(tv, "ensure_engine", ensure_engine)
    monkeypatch.setattr(tv, "TensorRTBackend", lambda engine, precision, input_specs, output_specs: OrtBackend(engine))
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    np.savez(calib / "student.npz", audio=rng.normal(size=(6, AUDIO)).astype(np.float16),
             text=rng.normal(size=(6, TEXT)).astype(np.float16), stream=np.zeros(6, np.int32))  # fmt: skip
    np.savez(calib / "other.npz", unrelated=np.zeros(3))  # another graph's file is not read
    report = tv.verify_engine(bundle, calib, "student", "fp16")
    assert built == [("student", "fp16")] and report.ok and report.n_samples == 6
    assert report.max_abs_diff == {"probs": 0.0}
    with pytest.raises(CalibrationError, match=r"missing input\(s\) \['audio', 'text'\]"):
        tv.verify_engine(bundle, calib / "other.npz", "student", "fp16")
