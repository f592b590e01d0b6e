"""Verify a TensorRT engine against onnxruntime on a calibration set (`mlsan-edge build-engine --verify`).

The reference is onnxruntime on the CPU running the *same* ONNX file the engine was built from,
so the report measures TensorRT (kernels, fp16/int8 rounding), not quantisation: the export's
accuracy gate does that. Polygraphy does the same comparison, and can bisect a drop by layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsan_edge.backends.base import Backend
from mlsan_edge.backends.calibration import calibration_reader_from_dir
from mlsan_edge.backends.onnxruntime import OrtBackend
from mlsan_edge.backends.select import available_precisions, onnx_role_for, split_role
from mlsan_edge.backends.tensorrt import TensorRTBackend
from mlsan_edge.backends.tensorrt_build import check_precision, ensure_engine
from mlsan_edge.bundle import Bundle, load_bundle

# Gates on the largest |TensorRT - onnxruntime| difference of any output, same ONNX on both sides.
# fp16 keeps ~3 decimal digits; int8 kernels round differently from onnxruntime's int8 CPU path.
MAX_ABS_DIFF = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}
MIN_ARGMAX_AGREEMENT = 0.99


@dataclass
class VerifyReport:
    """TensorRT vs onnxruntime on the same inputs.

    Attributes:
        precision: the engine's precision.
        n_samples: calibration samples compared.
        max_abs_diff / mean_abs_diff: per output name.
        argmax_agreement: per output whose last axis has > 1 entries (class scores), in [0, 1].
    """

    precision: str
    n_samples: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    mean_abs_diff: dict[str, float] = field(default_factory=dict)
    argmax_agreement: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        limit = MAX_ABS_DIFF[self.precision]
        return (
            self.n_samples > 0
            and all(v <= limit for v in self.max_abs_diff.values())
            and all(v >= MIN_ARGMAX_AGREEMENT for v in self.argmax_agreement.values())
        )

    def summary(self) -> str:
        lines = [f"{'PASS' if self.ok else 'FAIL'}: {self.n_samples} samples, precision {self.precision} "
                 f"(gate: max |diff| <= {MAX_ABS_DIFF[self.precision]}, argmax agreement >= {MIN_ARGMAX_AGREEMENT})"]  # fmt: skip
        for name in self.max_abs_diff:
            agree = self.argmax_agreement.get(name)
            lines.append(f"  {name}: max |diff| {self.max_abs_diff[name]:.3g}, mean {self.mean_abs_diff[name]:.3g}"
                         + (f", argmax agreement {agree:.1%}" if agree is not None else ""))  # fmt: skip
        return "\n".join(lines)


def compare_backends(reference: Backend, test: Backend, batches, precision: str, max_batches: int | None = None) -> VerifyReport:
    """Run both backends on each batch and collect output differences (any two backends)."""
    report = VerifyReport(precision=check_precision(precision))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    agree: dict[str, int] = {}
    for i, feeds in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        ref, out = reference.run(feeds), test.run(feeds)
        report.n_samples += len(next(iter(feeds.values())))
        for name, r in ref.items():
            r, t = r.astype(np.float64), out[name].astype(np.float64)
            d = np.abs(r - t)
            report.max_abs_diff[name] = max(report.max_abs_diff.get(name, 0.0), float(d.max(initial=0.0)))
            sums[name], counts[name] = sums.get(name, 0.0) + float(d.sum()), counts.get(name, 0) + d.size
            if r.ndim >= 1 and r.shape[-1] > 1:
                agree[name] = agree.get(name, 0) + int((r.argmax(-1) == t.argmax(-1)).sum())
                report.argmax_agreement[name] = agree[name] / (counts[name] // r.shape[-1])
    report.mean_abs_diff = {n: sums[n] / max(counts[n], 1) for n in sums}
    return report


def calibration_for(calibration: str | os.PathLike, base: str) -> Path:
    """The calibration data of one graph: `DIR/<graph>.npz` when DIR holds one file per graph
    (as calibration_data/ does: `stage2.npz` for "student.stage2"), else `calibration` itself."""
    path = Path(calibration)
    own = path / f"{base.rsplit('.', 1)[-1]}.npz"
    return own if path.is_dir() and own.is_file() else path


def verify_engine(
    bundle: Bundle | str | os.PathLike,
    calibration: str | os.PathLike,
    role: str = "student",
    precision: str = "auto",
    max_batches: int | None = None,
) -> VerifyReport:
    """Build (or reuse) the engine for `role` and compare it with onnxruntime on calibration data.

    The reference is onnxruntime on the CPU running the same ONNX file the engine was built from.

    Args:
        bundle: a loaded Bundle, a bundle folder, or "default".
        calibration: a .npz file, or a folder: its `<graph>.npz` when there (`calibration_for`),
            else every .npz in it; arrays named like the graph's inputs, first axis = samples.
        role: the graph, e.g. "student.stage2"; "student.stage2.int8" pins the precision.
        precision: "auto" (the pinned one, else the best the bundle has) or fp32/fp16/int8.
        max_batches: compare at most this many batches (default: all).

    Raises:
        TensorRTUnavailable, EngineBuildError, CalibrationError, ValueError.
    """
    bundle = load_bundle(bundle)
    base, pinned = split_role(bundle, role)
    if precision == "auto":
        precision = pinned or available_precisions(bundle, base, "tensorrt")[0]
    engine = ensure_engine(bundle, base, precision)
    spec = bundle.model_spec(onnx_role_for(bundle, base, "tensorrt", precision))
    reader = calibration_reader_from_dir(
        calibration_for(calibration, base), [t.name for t in spec.inputs],
        shapes={t.name: t.shape[1:] for t in spec.inputs}, dtypes={t.name: t.dtype for t in spec.inputs},
    )  # fmt: skip
    with OrtBackend(bundle.root / spec.file, providers=["CPUExecutionProvider"], precision=precision) as ref, \
            TensorRTBackend(engine, precision=precision, input_specs=spec.inputs, output_specs=spec.outputs) as trt_:  # fmt: skip
        return compare_backends(ref, trt_, reader.batches(), precision, max_batches)

__all__ = ["MAX_ABS_DIFF", "MIN_ARGMAX_AGREEMENT", "VerifyReport", "calibration_for", "compare_backends", "verify_engine"]
