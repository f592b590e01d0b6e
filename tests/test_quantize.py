"""INT8 QDQ quantisation: symmetric zero points, per-channel weights, accuracy, calibration errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest


from mlsan_edge.export.quantize import (  # noqa: E402
    CalibrationError,
    QuantizationError,
    calibration_reader_from_dir,
    check_qdq,
    quantize_qdq,
)
from mlsan_edge.backends.onnxruntime import OrtBackend  # noqa: E402
from test_backends import AUDIO, CLASSES, TEXT, feeds, make_tiny_onnx  # noqa: E402

NAMES = ["audio", "text"]
SHAPES = {"audio": (AUDIO,), "text": ("words",)}  # per sample (no batch axis); str/-1 = dynamic


def write_calibration(d: Path, n_files: int = 2, n: int = 32, audio_dim: int = AUDIO, dtype=np.float32) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n_files):
        np.savez(d / f"part{i}.npz", audio=rng.normal(size=(n, audio_dim)).astype(dtype),
                 text=rng.normal(size=(n, TEXT)).astype(dtype))  # fmt: skip
    return d


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(fp32 path, int8 path, report): one quantisation run for the module (about 2 s)."""
    d = tmp_path_factory.mktemp("q")
    fp32 = make_tiny_onnx(d / "student.fp32.onnx")
    calib = write_calibration(d / "calibration_data")
    calib_files = sorted(p.name for p in calib.iterdir())
    report = quantize_qdq(fp32, d / "student.int8.onnx", calib)  # a folder: shapes checked against the model
    assert sorted(p.name for p in calib.iterdir()) == calib_files
    return fp32, d / "student.int8.onnx", report


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_qdq_has_symmetric_int8_zero_points(quantized):
    _, int8, report = quantized
    assert report.n_quantize > 0 and report.n_dequantize > report.n_quantize
    assert sum(report.quantized_ops.values()) == 2 and report.float_ops == []  # both weighted ops quantised
    zps = {k: v for k, v in _initializers(int8).items() if k.endswith("zero_point")}
    assert zps and all(v.dtype == np.int8 and not v.any() for v in zps.values())


def test_weights_are_per_channel_int8_and_bias_stays_float(quantized):
    _, int8, report = quantized
    inits = _initializers(int8)
    assert inits["W1_quantized"].dtype == np.int8 and inits["W1_scale"].shape == (32,)
    assert inits["W2_scale"].shape == (CLASSES,) and report.per_channel_weights == 2
    assert inits["b1"].dtype == np.float32  # TensorRT rejects an int32 bias DequantizeLinear


def test_int8_output_is_close_to_fp32(quantized):
    fp32, int8, _ = quantized
    f = feeds(64, seed=3)
    with OrtBackend(fp32, threads=1) as a, OrtBackend(int8, threads=1, precision="int8") as b:
        pa, pb = a.run(f)["probs"], b.run(f)["probs"]
    assert np.abs(pa - pb).max() < 0.05
    assert (pa.argmax(-1) == pb.argmax(-1)).mean() >= 0.95


def test_check_qdq_refuses_float_and_asymmetric_models(quantized, tmp_path):
    import onnx
    from onnx import numpy_helper

    fp32, int8, _ = quantized
    with pytest.raises(QuantizationError, match="no QuantizeLinear/DequantizeLinear nodes: nothing was quantised"):
        check_qdq(fp32)
    model = onnx.load(str(int8))
    zp = next(i for i in model.graph.initializer if i.name.endswith("zero_point") and not i.dims)
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    onnx.save(model, str(tmp_path / "asym.onnx"))
    with pytest.raises(QuantizationError, match="has zero-point int8 \\[3\\]; TensorRT needs symmetric int8"):
        check_qdq(tmp_path / "asym.onnx")


def test_failed_quantisation_writes_nothing(quantized, tmp_path):
    fp32, _, _ = quantized
    data = {"audio": np.zeros((4, AUDIO), np.float32), "text": np.zeros((4, TEXT), np.float32)}
    with pytest.raises(QuantizationError, match="nothing was quantised"):
        quantize_qdq(fp32, tmp_path / "out.onnx", data, op_types=("Conv",), preprocess=False)
    assert list(tmp_path.iterdir()) == []


# --- calibration data -----------------------------------------------------------------------
def test_calibration_reader_batches_every_sample_in_order(tmp_path):
    r = calibration_reader_from_dir(write_calibration(tmp_path, n_files=2, n=5), NAMES, shapes=SHAPES, batch_size=2)
    assert r.n_samples == 10 and len(r) == 6  # 3 batches per file
    batches = list(iter(r.get_next, None))
    assert [b["audio"].shape[0] for b in batches] == [2, 2, 1, 2, 2, 1]
    r.rewind()
    np.testing.assert_array_equal(r.get_next()["text"], batches[0]["text"])


def test_empty_or_missing_calibration_folder(tmp_path):
    with pytest.raises(CalibrationError, match=r"no calibration data: .* has no \*.npz files.*README"):
        calibration_reader_from_dir(tmp_path, NAMES)
    with pytest.raises(CalibrationError, match=r"no calibration data: .*nowhere does not exist"):
        calibration_reader_from_dir(tmp_path / "nowhere", NAMES)


def test_wrong_feature_shape_names_file_and_input(tmp_path):
    write_calibration(tmp_path, n_files=1, audio_dim=20)
    with pytest.raises(CalibrationError, match=r"part0.npz: input 'audio' has per-sample shape \(20,\), the model expects \(16,\)"):
        calibration_reader_from_dir(tmp_path, NAMES, shapes=SHAPES)


def test_wrong_shape_is_caught_against_the_model(tmp_path):
    fp32 = make_tiny_onnx(tmp_path / "m.onnx")
    write_calibration(tmp_path / "calib", n_files=1, audio_dim=20)
    with pytest.raises(CalibrationError, match="'audio' has per-sample shape"):
        quantize_qdq(fp32, tmp_path / "out.onnx", tmp_path / "calib")
    assert not (tmp_path / "out.onnx").exists()


def test_missing_input_and_mismatched_counts(tmp_path):
    np.savez(tmp_path / "a.npz", audio=np.zeros((3, AUDIO), np.float32))
    with pytest.raises(CalibrationError, match=r"a.npz: missing input\(s\) \['text'\]; it holds \['audio'\]"):
        calibration_reader_from_dir(tmp_path, NAMES)
    np.savez(tmp_path / "a.npz", audio=np.zeros((3, AUDIO), np.float32), text=np.zeros((4, TEXT), np.float32))
    with pytest.raises(CalibrationError, match="disagree on the number of samples"):
        calibration_reader_from_dir(tmp_path, NAMES)


def test_float64_is_cast_but_ints_are_refused(tmp_path):
    write_calibration(tmp_path, n_files=1, n=2, dtype=np.float64)
    r = calibration_reader_from_dir(tmp_path, NAMES, dtypes={"audio": "float32", "text": "float32"})
    assert r.get_next()["audio"].dtype == np.float32
    with pytest.raises(CalibrationError, match="input 'audio' is float64, the model expects int64"):
        calibration_reader_from_dir(tmp_path, NAMES, dtypes={"audio": "int64"})
