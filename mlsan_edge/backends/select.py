"""Pick a backend and precision for one model of a bundle: `create_backend(bundle, role, ...)`.

The rule for "auto" (documented here because it decides what runs on a device):

- backend: TensorRT when it imports, a CUDA GPU is present and the bundle (or the user cache)
  already holds an engine built for *this* GPU, TensorRT version, ONNX file and precision;
  otherwise onnxruntime. "auto" never starts an engine build (that takes minutes): build once
  with `mlsan-edge build-engine --bundle B --precision P`; backend="tensorrt" without an engine
  raises an error saying exactly that.
- precision, TensorRT: int8 (from the QDQ ONNX) > fp16 (built from the fp32 ONNX) > fp32.
- precision, onnxruntime: fp32 > int8 > fp16. The student's stage graphs are so small (~0.1 ms)
  that quantising and dequantising activations costs more than int8 MatMuls save: measured
  slower in INT8 than FP32 on the CPU (benchmarks/results/stage_latency.json), and FP32 is the
  more accurate. INT8 is for TensorRT, whose engines fuse Q/DQ. fp16 last: CPUs emulate it.
  Pass precision="int8" to overrule; re-measure with the benchmarks when the student changes.

Roles: a model appears in the manifest as `<base>.<precision>` ("student.fp32", "student.int8")
or as a plain role ("vad", precision from its spec). Pass the base ("student") to let the
precision rule choose, or a full role to pin the ONNX file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mlsan_edge.backends.base import Backend
from mlsan_edge.backends.engine_cache import DeviceIdentity, find_engine
from mlsan_edge.bundle import PRECISIONS as MODEL_PRECISIONS
from mlsan_edge.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "tensorrt")
PRECISIONS: tuple[str, ...] = ("auto",) + MODEL_PRECISIONS
ORT_PREFERENCE: tuple[str, ...] = ("fp32", "int8", "fp16")
TRT_PREFERENCE: tuple[str, ...] = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class BackendPlan:
    """What `create_backend` will build.

    Attributes:
        backend: "onnxruntime" or "tensorrt".
        precision: "fp32", "fp16" or "int8".
        onnx_role: the manifest role of the ONNX file it runs (or the engine was built from).
        engine: the TensorRT engine file (None for onnxruntime).
    """

    backend: str
    precision: str
    onnx_role: str
    engine: Path | None = None


def _check_choice(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {list(valid)}")


def split_role(bundle: Bundle, role: str) -> tuple[str, str | None]:
    """("student", None) for a base; ("student", "int8") for the pinned role "student.int8"."""
    if role in bundle.manifest.models:
        stem, _, suffix = role.rpartition(".")
        if stem and suffix in MODEL_PRECISIONS:
            return stem, suffix
        return role, None  # a plain role ("vad") is its own base: TensorRT may still make fp16 of it
    if not bundle.variants(role):
        raise ValueError(f"bundle {bundle.manifest.name!r} has no model {role!r}; roles: {bundle.roles}")
    return role, None


def onnx_role_for(bundle: Bundle, base: str, backend: str, precision: str) -> str | None:
    """The ONNX role that `backend` runs at `precision` (TensorRT makes fp16 from the fp32 ONNX)."""
    variants = bundle.variants(base)
    if backend == "tensorrt" and precision == "fp16":
        return variants.get("fp16") or variants.get("fp32")
    return variants.get(precision)


def available_precisions(bundle: Bundle, base: str, backend: str) -> list[str]:
    """Precisions `backend` can run for `base`, best first (see the module docstring)."""
    order = TRT_PREFERENCE if backend == "tensorrt" else ORT_PREFERENCE
    return [p for p in order if onnx_role_for(bundle, base, backend, p)]


def plan_backend(
    bundle: Bundle, role: str, backend: str = "auto", precision: str = "auto", device: DeviceIdentity | None = None
) -> BackendPlan:
    """Decide backend, precision, ONNX role and engine. Pure: no library is loaded.

    Args:
        device: this machine's TensorRT identity, or None when TensorRT/GPU is unusable.

    Raises:
        ValueError: unknown names, or a precision the bundle does not have.
        FileNotFoundError: backend="tensorrt" but no engine for this device (build one first).
    """
    _check_choice("backend", backend, BACKENDS)
    _check_choice("precision", precision, PRECISIONS)
    base, pinned = split_role(bundle, role)
    if pinned is not None and precision not in ("auto", pinned):
        raise ValueError(f"role {role!r} is {pinned}; pass role={base!r} to choose precision={precision!r}")
    wanted = precision if precision != "auto" else pinned
    if backend in ("auto", "tensorrt") and device is not None:
        have = available_precisions(bundle, base, "tensorrt")
        candidates = [wanted] if wanted else have
        if wanted and wanted not in have:
            raise ValueError(f"bundle has no ONNX for {base!r} at {wanted} for TensorRT; available: {have}")
        for p in candidates:
            onnx_role = onnx_role_for(bundle, base, "tensorrt", p)
            engine = find_engine(bundle, onnx_role, p, device)
            if engine is not None:
                return BackendPlan("tensorrt", p, onnx_role, engine)
        if backend == "tensorrt":
            p = candidates[0]
            raise FileNotFoundError(
                f"no TensorRT engine for {base!r} at {p} on {device.gpu_name} (sm {device.compute_capability}, "
                f"TensorRT {device.trt_version}) in {bundle.root}; build it once on this device with "
                f"`mlsan-edge build-engine --bundle {bundle.root} --precision {p}` (takes minutes)"
            )
        log.info("no TensorRT engine for %s on this device; using onnxruntime", base)
    have = available_precisions(bundle, base, "onnxruntime")
    if wanted and wanted not in have:
        raise ValueError(f"bundle has no ONNX for {base!r} at {wanted}; available for onnxruntime: {have}")
    p = wanted or have[0]
    return BackendPlan("onnxruntime", p, onnx_role_for(bundle, base, "onnxruntime", p))


def _tensorrt_device(required: bool) -> DeviceIdentity | None:
    from mlsan_edge.backends.tensorrt import TensorRTUnavailable, current_device_identity

    try:
        return current_device_identity()
    except TensorRTUnavailable as e:
        if required:
            raise
        log.debug("TensorRT not usable here: %s", e)
        return None


def create_backend(
    bundle: Bundle | str | os.PathLike,
    role: str,
    backend: str = "auto",
    precision: str = "auto",
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> Backend:
    """Create the backend for one model of a bundle.

    Args:
        bundle: a loaded Bundle, a bundle folder, or "default".
        role: "student" (precision chosen by the rule above), "student.int8" (pinned), "vad", ...
        backend: "auto", "onnxruntime" or "tensorrt".
        precision: "auto", "fp32", "fp16" or "int8".
        providers / threads: onnxruntime options (ignored by TensorRT).

    Raises:
        ValueError: unknown backend/precision/role (listing the valid ones) or a precision the
            bundle lacks. TensorRTUnavailable / FileNotFoundError: backend="tensorrt" cannot run.
    """
    _check_choice("backend", backend, BACKENDS)
    _check_choice("precision", precision, PRECISIONS)
    bundle = load_bundle(bundle)
    device = _tensorrt_device(required=backend == "tensorrt") if backend != "onnxruntime" else None
    plan = plan_backend(bundle, role, backend, precision, device)
    spec = bundle.model_spec(plan.onnx_role)
    log.info("%s: %s %s (%s)", role, plan.backend, plan.precision, plan.engine or bundle.path(plan.onnx_role))
    if plan.backend == "tensorrt":
        from mlsan_edge.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(plan.engine, precision=plan.precision, input_specs=spec.inputs, output_specs=spec.outputs)
    from mlsan_edge.backends.onnxruntime import OrtBackend

    return OrtBackend(
        bundle.path(plan.onnx_role),
        providers=providers,
        threads=threads,
        precision=plan.precision,
        expected_sha256=bundle.file_sha256(spec.file),
    )


__all__ = ["create_backend", "plan_backend", "BackendPlan", "BACKENDS", "PRECISIONS", "available_precisions", "onnx_role_for"]
