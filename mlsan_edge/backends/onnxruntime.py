"""onnxruntime backend: the one that runs everywhere (CPU on any machine, CUDA where available).

Note on providers: onnxruntime lists CUDAExecutionProvider whenever the GPU build is installed,
even when libcudart/cuDNN are missing; the session then silently registers CPU only. So "auto"
asks for CUDA and then checks what the *session* actually registered (`get_providers()`), and
warns when it had to fall back. ORT's own TensorrtExecutionProvider is not used by "auto": it
builds engines at session creation (minutes) outside our engine cache; use backend="tensorrt".
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mlsan_edge.backends.base import Backend
from mlsan_edge.bundle import BundleError, TensorSpec

log = logging.getLogger(__name__)

# onnxruntime type strings -> numpy dtype names
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}

GPU_PROVIDERS = ("CUDAExecutionProvider",)


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:  # a hard dependency, but Jetson users install it by hand
        raise ImportError(
            "onnxruntime is not installed: pip install onnxruntime (on Jetson, onnxruntime-gpu comes "
            "from NVIDIA's Jetson package index, not PyPI)"
        ) from e
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA (when this onnxruntime build has it) then CPU."""
    available = _import_ort().get_available_providers()
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _spec(node) -> TensorSpec:
    shape = tuple(-1 if d is None else d for d in node.shape)
    dtype = _ORT_DTYPES.get(node.type)
    if dtype is None:
        raise TypeError(f"tensor {node.name!r} has type {node.type}, which mlsan_edge backends do not support")
    return TensorSpec(node.name, shape, dtype)


def session_options(threads: int | None = None):
    """SessionOptions for low-latency single-stream inference.

    Args:
        threads: intra-op threads; None = onnxruntime's default (one per physical core). On a
            Jetson Orin Nano (6 cores) 2-4 leaves room for capture and the other models.
    """
    ort = _import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # small graphs: parallel branches cost more
    so.inter_op_num_threads = 1
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3  # errors only; fallbacks are reported by us as warnings
    return so


class OrtBackend(Backend):
    """Run an ONNX file with onnxruntime.

    Args:
        onnx_path: the model file.
        providers: execution providers in priority order; None = CUDA when it really loads, else CPU.
        threads: intra-op thread count (None = library default).
        precision: recorded for reports ("fp32", "int8", ...); does not change the graph.
        expected_sha256: when given, the file is read once, hashed and the verified bytes are
            parsed, so a file swapped after `load_bundle` cannot slip in.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        precision: str = "fp32",
        expected_sha256: str | None = None,
    ):
        ort = _import_ort()
        self.path = Path(onnx_path)
        self.precision = precision
        requested = list(providers) if providers is not None else default_providers()
        model: str | bytes = str(self.path)
        if expected_sha256 is not None:
            model = self.path.read_bytes()
            digest = hashlib.sha256(model).hexdigest()
            if digest != expected_sha256:
                raise BundleError(f"{self.path} changed since the bundle was verified (sha256 {digest[:12]}...)")
        try:
            self.session = ort.InferenceSession(model, sess_options=session_options(threads), providers=requested)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes
            raise RuntimeError(
                f"onnxruntime could not load {self.path}: {e}. If the file came from a bundle, reload "
                "it with load_bundle() to check its hash; otherwise re-export it."
            ) from e
        active = self.session.get_providers()
        dropped = [p for p in requested if p not in active and p != "CPUExecutionProvider"]
        if dropped:
            warnings.warn(
                f"onnxruntime could not start {dropped} for {self.path.name} (missing CUDA/cuDNN "
                f"libraries?); running on {active}",
                RuntimeWarning,
                stacklevel=2,
            )
        self.providers = active
        self.device = "cuda" if active and active[0] != "CPUExecutionProvider" else "cpu"
        self.inputs = tuple(_spec(n) for n in self.session.get_inputs())
        self.outputs = tuple(_spec(n) for n in self.session.get_outputs())
        log.debug("onnxruntime session for %s on %s", self.path, active)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, dict(feeds))
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self.session = None  # onnxruntime frees the session when the last reference goes


__all__ = ["OrtBackend", "default_providers", "session_options"]
