"""INT8 static quantisation in QDQ form: what TensorRT 10's explicit quantisation consumes.

TensorRT 10 deprecates its INT8 calibrator classes; it wants QuantizeLinear/DequantizeLinear
pairs in the ONNX with *symmetric* int8 (zero-point 0) activations and weights and per-channel
weight scales, and onnxruntime runs the same file on the CPU. onnxruntime's `quantize_static`
makes that form only when asked: `ActivationSymmetric` defaults to False (EDGE.md), so
`quantize_qdq` sets it and then checks the result (`check_qdq`) instead of trusting it.

Only the weighted ops (MatMul/Gemm/Conv) are quantised: they are where the time goes, while
softmax, normalisation and the FiLM/gating arithmetic stay in float (numerically sensitive).

Calibration data: `calibration_data/*.npz`, each holding one array per model input, named like
the input, first axis = utterances (see calibration_data/README.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mlsan_edge.backends.calibration import (  # noqa: F401  (re-exported)
    ArrayCalibrationReader,
    CalibrationError,
    calibration_reader_from_dir,
)

log = logging.getLogger(__name__)

DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Conv")


class QuantizationError(RuntimeError):
    """The quantised model is not the symmetric-int8 QDQ form TensorRT needs."""


def _import_quantization():
    try:
        from onnxruntime import quantization
    except ImportError as e:
        raise ImportError("INT8 export needs onnx and onnxruntime: pip install -e '.[export]'") from e
    return quantization


def onnx_input_specs(onnx_path: str | os.PathLike) -> tuple[dict[str, tuple], dict[str, str]]:
    """Per-sample shapes (batch axis dropped) and numpy dtypes of a model's graph inputs."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes, dtypes = {}, {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        shapes[inp.name] = tuple(dims[1:])
        dtypes[inp.name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
    return shapes, dtypes


@dataclass
class QDQReport:
    """What `check_qdq` found.

    Attributes:
        n_quantize / n_dequantize: QuantizeLinear / DequantizeLinear node counts.
        quantized_ops: op type -> count of nodes whose inputs all come from DequantizeLinear.
        per_channel_weights: weights with one scale per output channel.
        float_ops: weighted ops (of `op_types`) left in float.
    """

    n_quantize: int
    n_dequantize: int
    quantized_ops: dict[str, int] = field(default_factory=dict)
    per_channel_weights: int = 0
    float_ops: list[str] = field(default_factory=list)


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def check_qdq(onnx_path: str | os.PathLike, op_types: Sequence[str] = DEFAULT_OP_TYPES) -> QDQReport:
    """Check that a model is symmetric-int8 QDQ: Q/DQ present, every zero-point int8 and 0.

    Raises:
        QuantizationError: no Q/DQ nodes, or a zero-point that is missing, not int8 or not 0.
    """
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    consts = _constants(graph)
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        raise QuantizationError(f"{onnx_path} has no QuantizeLinear/DequantizeLinear nodes: nothing was quantised")
    per_channel = 0
    for n in qdq:
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and zp.dtype == np.int32:
            raise QuantizationError(
                f"{onnx_path}: node {n.name!r} dequantizes an int32 tensor (a quantised bias); TensorRT's "
                "parser rejects it: quantise with extra_options QuantizeBias=False"
            )
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            got = "absent (uint8 by default)" if zp is None else f"{zp.dtype} {np.unique(zp)[:4]}"
            raise QuantizationError(
                f"{onnx_path}: node {n.name!r} ({n.op_type}) has zero-point {got}; TensorRT needs symmetric "
                "int8 (zero-point 0): quantise with ActivationSymmetric=True, activation_type=QInt8"
            )
        scale = consts.get(n.input[1])
        if n.op_type == "DequantizeLinear" and n.input[0] in consts and scale is not None and scale.size > 1:
            per_channel += 1
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    quantized, float_ops = Counter(), []
    for n in graph.node:
        if n.op_type in op_types:
            if all(i in dq_outputs for i in n.input[:2]):
                quantized[n.op_type] += 1
            else:
                float_ops.append(n.name or n.op_type)
    report = QDQReport(
        n_quantize=sum(n.op_type == "QuantizeLinear" for n in qdq),
        n_dequantize=sum(n.op_type == "DequantizeLinear" for n in qdq),
        quantized_ops=dict(quantized),
        per_channel_weights=per_channel,
        float_ops=float_ops,
    )
    if float_ops:
        log.warning("%s: %d weighted ops left in float: %s", onnx_path, len(float_ops), float_ops[:8])
    return report


@contextlib.contextmanager
def _working_dir(path: Path):
    """chdir for the duration (contextlib.chdir needs Python 3.11; JetPack 6 has 3.10)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _preprocess(q, src: Path, dst: Path, tmp: Path) -> None:
    """`quant_pre_process`, run inside `tmp`: when symbolic shape inference is incomplete (common
    for transformer graphs) onnxruntime dumps `sym_shape_infer_temp.onnx` + a .data file into the
    working directory before raising; those land in `tmp` and vanish. Then retry without it."""
    with _working_dir(tmp):
        try:
            q.quant_pre_process(str(src), str(dst))
            return
        except Exception as e:  # shape inference raises bare Exception
            log.warning("quant_pre_process on %s failed (%s); retrying without symbolic shape inference", src.name, e)
        try:
            q.quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as e:
            raise QuantizationError(
                f"quant_pre_process failed on {src}: {e}; retry with preprocess=False, or fix the export"
            ) from e


def quantize_qdq(
    fp32_onnx: str | os.PathLike,
    out_onnx: str | os.PathLike,
    calibration,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    *,
    per_channel: bool = True,
    preprocess: bool = True,
    extra_options: Mapping | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
) -> QDQReport:
    """Quantise `fp32_onnx` to symmetric int8 QDQ and write `out_onnx` (only when it checks out).

    Args:
        fp32_onnx: the float model.
        out_onnx: where the QDQ model goes; written atomically after `check_qdq` passes.
        calibration: a CalibrationDataReader, a dict {input: array (N, ...)}, or a folder of .npz
            files (shapes and dtypes then checked against the model's inputs).
        op_types: ops to quantise.
        per_channel: one weight scale per output channel (TensorRT's recommended form).
        preprocess: run `quant_pre_process` (shape inference + optimisation) first.
        extra_options: merged over {"ActivationSymmetric": True, "WeightSymmetric": True,
            "QuantizeBias": False}.
        nodes_to_exclude: node names to keep in float (e.g. after an accuracy bisect).

    Returns:
        The `check_qdq` report of the written model.
    """
    q = _import_quantization()
    src = Path(fp32_onnx).resolve()
    if isinstance(calibration, (str, os.PathLike)):
        shapes, dtypes = onnx_input_specs(src)
        calibration = calibration_reader_from_dir(calibration, list(shapes), shapes=shapes, dtypes=dtypes)
    elif isinstance(calibration, Mapping):
        calibration = ArrayCalibrationReader([calibration])
    # QuantizeBias=False: an int32 bias DequantizeLinear is valid ONNX but TensorRT's parser
    # rejects it ("only activation types allowed as input to this layer", onnx/onnx-tensorrt#850,
    # NVIDIA/TensorRT#3360); TensorRT fuses a float bias into the int8 layer anyway.
    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, **dict(extra_options or {})}
    out = Path(out_onnx).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=out.parent) as tmp:
        model_in = src
        if preprocess:
            model_in = Path(tmp) / "preprocessed.onnx"
            _preprocess(q, src.resolve(), model_in.resolve(), Path(tmp))
        tmp_out = Path(tmp) / out.name
        with _working_dir(Path(tmp)):  # anything onnxruntime leaves behind goes with `tmp`
            q.quantize_static(
                str(model_in),
                str(tmp_out),
                calibration,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
                nodes_to_exclude=list(nodes_to_exclude or []),
                extra_options=options,
            )
        report = check_qdq(tmp_out, op_types)
        shutil.move(str(tmp_out), str(out))
    log.info("wrote %s: %s", out, report)
    return report


__all__ = [
    "quantize_qdq",
    "check_qdq",
    "calibration_reader_from_dir",
    "ArrayCalibrationReader",
    "CalibrationError",
    "QuantizationError",
    "QDQReport",
    "onnx_input_specs",
]
