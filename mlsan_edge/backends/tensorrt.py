"""TensorRT backend (TensorRT 10 API: tensors by name, `execute_async_v3` on a stream).

TensorRT and the CUDA bindings are imported lazily: this module imports on any machine, and
everything but `TensorRTBackend` itself is plain Python that the tests drive with fakes:

- `TensorBuffers` does the bookkeeping: which tensors are inputs, their dtypes, setting input
  shapes (checked against the optimisation profile with a readable error), querying output
  shapes afterwards, and growing device buffers only when a shape needs more bytes. It talks to
  the engine/context through the TensorRT method names and to memory through an `Allocator`.
- `CudaRuntimeAllocator` is the real allocator, over cuda-python's `cudart`: cuda-python is the
  one CUDA binding (no pycuda, and never torch: the device does not import it).

Engine building and verification: `tensorrt_build.py`, `tensorrt_verify.py` (`mlsan-edge build-engine`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from mlsan_edge.backends.base import Backend, InputError, format_shape
from mlsan_edge.backends.engine_cache import DeviceIdentity
from mlsan_edge.bundle import TensorSpec

log = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10

# TensorRT DataType names -> numpy dtype names (BF16/FP8/INT4 have no numpy equivalent here)
TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}

HOW_TO_GET_CUDA_PYTHON = (
    "On a Jetson with JetPack 6 (CUDA 12.6): `pip install 'cuda-python==12.6.*'`; elsewhere the "
    "cuda-python release matching your CUDA version (`nvcc --version`)."
)
HOW_TO_GET_TENSORRT = (
    "On a Jetson, TensorRT 10.3 comes with JetPack 6 (CUDA 12.6, Python 3.10): `sudo apt install "
    "nvidia-tensorrt python3-libnvinfer` (or the whole `sudo apt install nvidia-jetpack`), then run "
    "mlsan-edge with the system python3 (3.10) or from a venv made with --system-site-packages, and "
    "`pip install 'cuda-python==12.6.*'`. On x86 with an NVIDIA GPU: `pip install tensorrt cuda-python "
    "--extra-index-url https://pypi.nvidia.com` (TensorRT >= 10). Without TensorRT use backend='onnxruntime'."
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT, its CUDA runtime or a GPU is missing on this machine."""


def _enum_name(value: Any) -> str:
    """'INPUT' for trt.TensorIOMode.INPUT (pybind enums have .name); plain strings pass through."""
    return str(getattr(value, "name", value)).rsplit(".", 1)[-1].upper()


def trt_dtype_name(dtype: Any) -> str:
    name = _enum_name(dtype)
    if name not in TRT_DTYPES:
        raise TypeError(f"TensorRT tensor type {name} is not supported by mlsan_edge (supported: {list(TRT_DTYPES)})")
    return TRT_DTYPES[name]


def _import_cudart():
    """cuda-python's runtime bindings (the one CUDA binding mlsan_edge uses).

    Raises:
        TensorRTUnavailable: cuda-python is not installed; the message says how to get it.
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise TensorRTUnavailable(
                "cuda-python is not installed: the TensorRT backend needs it for GPU memory, streams and "
                f"the GPU query. {HOW_TO_GET_CUDA_PYTHON}"
            ) from e
    return cudart


def query_gpu() -> tuple[str, str]:
    """(GPU name, "major.minor") of CUDA device 0, via cuda-python.

    Raises:
        TensorRTUnavailable: cuda-python is not installed.
        RuntimeError: no CUDA GPU could be queried; the message gives the CUDA error.
    """
    cudart = _import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise RuntimeError(f"no CUDA GPU found (cudaGetDeviceCount: {err}, {count if int(err) == 0 else '?'} devices)")
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise RuntimeError(f"no CUDA GPU found (cudaGetDeviceProperties(0): {err})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def check_tensorrt(require_gpu: bool = True):
    """Import TensorRT (>= 10) and check for a CUDA GPU; return the `tensorrt` module.

    Raises:
        TensorRTUnavailable: saying what is missing and how to get it on Jetson and on x86.
    """
    try:
        import tensorrt as trt
    except ImportError as e:  # also OSError-free: the bindings raise ImportError without libnvinfer
        raise TensorRTUnavailable(f"TensorRT is not importable on this machine ({e}). {HOW_TO_GET_TENSORRT}") from e
    version = getattr(trt, "__version__", "0")
    if int(version.split(".")[0]) < MIN_TRT_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT {version} found; mlsan_edge needs TensorRT >= {MIN_TRT_MAJOR} (tensor-by-name API). "
            f"{HOW_TO_GET_TENSORRT}"
        )
    if require_gpu:
        try:
            query_gpu()
        except TensorRTUnavailable:
            raise
        except RuntimeError as e:
            raise TensorRTUnavailable(
                f"TensorRT {version} is installed but {e}. TensorRT needs an NVIDIA GPU with a working driver "
                "(on Jetson: check `sudo nvpmodel -q` works and you are in the 'video' group)."
            ) from e
    return trt


def current_device_identity() -> DeviceIdentity:
    """TensorRT version, GPU name and compute capability of this machine (engines depend on all)."""
    trt = check_tensorrt()
    name, cc = query_gpu()
    return DeviceIdentity(trt_version=trt.__version__, gpu_name=name, compute_capability=cc)


class Allocator(Protocol):
    """Device memory and streams, as `TensorBuffers` needs them (pointers are ints)."""

    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def htod(self, ptr: int, host: np.ndarray, stream: Any) -> None: ...
    def dtoh(self, host: np.ndarray, ptr: int, stream: Any) -> None: ...
    def create_stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def synchronize(self, stream: Any) -> None: ...
    def destroy_stream(self, stream: Any) -> None: ...


class TensorBuffers:
    """Device buffers and shapes for one TensorRT execution context.

    Args:
        engine: needs `num_io_tensors`, `get_tensor_name(i)`, `get_tensor_mode(name)`,
            `get_tensor_dtype(name)`, `get_tensor_shape(name)`, `get_tensor_profile_shape(name, p)`.
        context: needs `set_input_shape(name, shape) -> bool`, `get_tensor_shape(name)`,
            `set_tensor_address(name, ptr)`, `execute_async_v3(stream_handle) -> bool`.
        allocator: see `Allocator`.
        profile: optimisation profile index the context uses.
    """

    def __init__(self, engine: Any, context: Any, allocator: Allocator, profile: int = 0):
        self.engine, self.context, self.alloc, self.profile = engine, context, allocator, profile
        specs_in, specs_out = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, tuple(int(d) for d in engine.get_tensor_shape(name)), trt_dtype_name(engine.get_tensor_dtype(name)))
            (specs_in if _enum_name(engine.get_tensor_mode(name)) == "INPUT" else specs_out).append(spec)
        self.inputs: tuple[TensorSpec, ...] = tuple(specs_in)
        self.outputs: tuple[TensorSpec, ...] = tuple(specs_out)
        self.ptrs: dict[str, int] = {}
        self.capacity: dict[str, int] = {}  # bytes allocated per tensor
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.output_shapes: dict[str, tuple[int, ...]] = {}

    def profile_range(self, name: str) -> tuple[tuple[int, ...], ...] | None:
        """(min, opt, max) shapes of a dynamic input, None for a static one."""
        spec = next(s for s in self.inputs if s.name == name)
        if spec.is_static:
            return None
        return tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(name, self.profile))

    def set_input_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Set input shapes, (re)allocate what grew, and return the output shapes."""
        for spec in self.inputs:
            shape = tuple(int(d) for d in shapes[spec.name])
            if self.input_shapes.get(spec.name) == shape:
                continue
            rng = self.profile_range(spec.name)
            if rng is not None and not all(lo <= d <= hi for d, lo, hi in zip(shape, rng[0], rng[2])):
                raise InputError(
                    f"tensorrt: input {spec.name!r} has shape {shape}, outside the engine's optimisation "
                    f"profile min {format_shape(rng[0])} .. max {format_shape(rng[2])}; rebuild the engine "
                    "with a wider profile (mlsan-edge build-engine) or feed a smaller input"
                )
            if not self.context.set_input_shape(spec.name, shape):
                raise InputError(f"tensorrt rejected shape {shape} for input {spec.name!r} (engine expects {format_shape(spec.shape)})")
            self.input_shapes[spec.name] = shape
        for spec in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise RuntimeError(
                    f"tensorrt: output {spec.name!r} still has unknown shape {shape} after setting the input "
                    "shapes; data-dependent output shapes are not supported"
                )
            self.output_shapes[spec.name] = shape
        for spec in self.inputs + self.outputs:
            shape = self.input_shapes[spec.name] if spec.name in self.input_shapes else self.output_shapes[spec.name]
            self._ensure(spec.name, math.prod(shape) * np.dtype(spec.dtype).itemsize)
        return dict(self.output_shapes)

    def _ensure(self, name: str, nbytes: int) -> None:
        """Grow-only: reallocate `name` when it needs more than it has, and rebind its address."""
        nbytes = max(int(nbytes), 1)  # zero-size tensors still need a valid address
        if self.capacity.get(name, 0) >= nbytes:
            return
        if name in self.ptrs:
            self.alloc.free(self.ptrs.pop(name))
        self.ptrs[name] = self.alloc.malloc(nbytes)
        self.capacity[name] = nbytes
        self.context.set_tensor_address(name, self.ptrs[name])
        log.debug("tensorrt: %s -> %d bytes", name, nbytes)

    def execute(self, feeds: Mapping[str, np.ndarray], stream: Any) -> dict[str, np.ndarray]:
        """Copy inputs in, run `execute_async_v3` on `stream`, copy outputs out, synchronise."""
        out_shapes = self.set_input_shapes({n: a.shape for n, a in feeds.items()})
        host_in = {s.name: np.ascontiguousarray(feeds[s.name]) for s in self.inputs}  # alive until sync
        for name, arr in host_in.items():
            self.alloc.htod(self.ptrs[name], arr, stream)
        if not self.context.execute_async_v3(self.alloc.stream_handle(stream)):
            raise RuntimeError("tensorrt: execute_async_v3 failed (see the TensorRT log above)")
        results = {s.name: np.empty(out_shapes[s.name], dtype=s.dtype) for s in self.outputs}
        for name, arr in results.items():
            self.alloc.dtoh(arr, self.ptrs[name], stream)
        self.alloc.synchronize(stream)
        return results

    def free(self) -> None:
        for ptr in self.ptrs.values():
            self.alloc.free(ptr)
        self.ptrs.clear()
        self.capacity.clear()
        self.input_shapes.clear()


class CudaRuntimeAllocator:
    """`Allocator` over cuda-python's runtime bindings (`pip install cuda-python`)."""

    def __init__(self):
        self.cudart = _import_cudart()

    def _ok(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA {what} failed: {err}")
        return rest[0] if rest else None

    def malloc(self, nbytes):
        return int(self._ok(self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def free(self, ptr):
        self._ok(self.cudart.cudaFree(ptr), "cudaFree")

    def htod(self, ptr, host, stream):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "copy to device")

    def dtoh(self, host, ptr, stream):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream), "copy to host")

    def create_stream(self):
        return self._ok(self.cudart.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream):
        return int(stream)

    def synchronize(self, stream):
        self._ok(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def destroy_stream(self, stream):
        self._ok(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")


def default_allocator() -> Allocator:
    """cuda-python's runtime (raises TensorRTUnavailable, saying how to get it, when missing)."""
    return CudaRuntimeAllocator()


class TensorRTBackend(Backend):
    """Run a serialized TensorRT engine.

    Args:
        engine_path: the `.engine` file (built on this device; see `mlsan_edge.backends.tensorrt_build`).
        precision: recorded for reports.
        expected_sha256: when given, the engine bytes are checked before deserialising.
        input_specs / output_specs: the bundle's specs (with symbolic dim names) to validate
            against; default: the engine's own (dynamic dims as -1).
        allocator: device memory; default cuda-python's runtime.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike,
        precision: str = "fp16",
        expected_sha256: str | None = None,
        input_specs: Sequence[TensorSpec] | None = None,
        output_specs: Sequence[TensorSpec] | None = None,
        allocator: Allocator | None = None,
    ):
        trt = check_tensorrt()
        self.path, self.precision = Path(engine_path), precision
        data = self.path.read_bytes()
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise RuntimeError(f"engine {self.path} changed since it was built (sha256 mismatch); delete it to rebuild")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not load {self.path}: it was probably built with another "
                "TensorRT version or for another GPU. Delete it; mlsan-edge build-engine makes a new one."
            )
        self._context = self._engine.create_execution_context()
        self._alloc = allocator or default_allocator()
        self._stream = self._alloc.create_stream()
        self._buffers = TensorBuffers(self._engine, self._context, self._alloc)
        self.inputs = tuple(input_specs) if input_specs else self._buffers.inputs
        self.outputs = tuple(output_specs) if output_specs else self._buffers.outputs
        self.device = "cuda:0 " + query_gpu()[0]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._buffers.execute(feeds, self._stream)

    def close(self) -> None:
        if getattr(self, "_buffers", None) is not None:
            self._buffers.free()
            self._alloc.destroy_stream(self._stream)
            self._buffers = None
        self._context = self._engine = self._runtime = None


__all__ = [
    "TensorRTBackend",
    "TensorBuffers",
    "TensorRTUnavailable",
    "check_tensorrt",
    "current_device_identity",
    "query_gpu",
    "CudaRuntimeAllocator",
    "HOW_TO_GET_TENSORRT",
]
