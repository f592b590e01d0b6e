"""Build and cache TensorRT engines for a bundle on this device (TensorRT 10 Python API, lazily).

`mlsan-edge build-engine` is the one command line for this (it also verifies, `tensorrt_verify.py`).
`build_engine` logs the equivalent `trtexec` command first. Engines are cached under names that
encode the TensorRT version, GPU name, compute capability, precision and ONNX sha256
(`engine_cache.py`), so a change in any of them means a rebuild and an engine for another
device or version is never loaded.

`int8` builds from the bundle's QDQ ONNX (explicit quantisation, made at export by
`mlsan_edge.export.quantize`); TensorRT 10's calibrator classes are deprecated. TensorRT 10.3
(JetPack 6) still needs the INT8 builder flag for a Q/DQ network; FP16 is set too so the layers
left in float run in half precision. No torch here: this is device work.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import Mapping, Sequence

from mlsan_edge.backends.base import is_dynamic
from mlsan_edge.backends.engine_cache import (
    DeviceIdentity,
    EngineRecord,
    engine_file_name,
    find_engine,
    is_writable_dir,
    sanitise,
    writable_engine_dir,
    write_record,
)
from mlsan_edge.backends.select import available_precisions, onnx_role_for, split_role
from mlsan_edge.backends.tensorrt import check_tensorrt, current_device_identity
from mlsan_edge.bundle import Bundle, BundleError, ModelSpec, TensorSpec, load_bundle, sha256_file

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profiles = Mapping[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


# --- optimisation profiles ------------------------------------------------------------------
def profiles_from_spec(spec: ModelSpec) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Profiles for the dynamic inputs of `spec`, from the manifest's `profiles` entry."""
    out = {}
    for t in spec.inputs:
        if t.is_static:
            continue
        p = spec.profiles.get(t.name)
        if p is None:
            raise ValueError(
                f"input {t.name!r} has dynamic shape {t.shape} but the manifest gives no optimisation profile "
                "for it; pass profiles={name: (min, opt, max)} or add models[role].profiles at export"
            )
        out[t.name] = tuple(tuple(int(d) for d in p[k]) for k in ("min", "opt", "max"))
    return out


def validate_profiles(inputs: Sequence[TensorSpec], profiles: Profiles) -> None:
    """Check profiles: every dynamic input covered, known names, ranks, static dims, min<=opt<=max."""
    by_name = {t.name: t for t in inputs}
    unknown = [n for n in profiles if n not in by_name]
    if unknown:
        raise ValueError(f"profiles name unknown inputs {unknown}; the network's inputs are {list(by_name)}")
    for t in inputs:
        if t.name not in profiles:
            if not t.is_static:
                raise ValueError(f"input {t.name!r} has dynamic shape {t.shape}: give it a (min, opt, max) profile")
            continue
        shapes = profiles[t.name]
        if len(shapes) != 3 or any(len(s) != len(t.shape) for s in shapes):
            raise ValueError(f"profile for {t.name!r} must be 3 shapes of rank {len(t.shape)}, got {shapes}")
        for axis, (want, lo, opt, hi) in enumerate(zip(t.shape, *shapes)):
            if not lo <= opt <= hi:
                raise ValueError(f"profile for {t.name!r}, axis {axis}: need min <= opt <= max, got {lo}, {opt}, {hi}")
            if not is_dynamic(want) and not lo == opt == hi == want:
                raise ValueError(f"profile for {t.name!r}, axis {axis} is static ({want}) but the profile says {lo}..{hi}")


def _shape_arg(profiles: Profiles, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in profiles.items())


def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    precision: str,
    profiles: Profiles | None = None,
    timing_cache_path: str | os.PathLike | None = None,
    workspace_mb: int | None = None,
) -> str:
    """The trtexec command line that builds the same engine as `build_engine` (shell-quoted)."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    args += {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}[check_precision(precision)]
    if profiles:
        args += [f"--minShapes={_shape_arg(profiles, 0)}", f"--optShapes={_shape_arg(profiles, 1)}",
                 f"--maxShapes={_shape_arg(profiles, 2)}"]  # fmt: skip
    if timing_cache_path is not None:
        args.append(f"--timingCacheFile={timing_cache_path}")
    if workspace_mb is not None:
        args.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    return " ".join(shlex.quote(a) for a in args)


def check_precision(precision: str) -> str:
    """`precision` if it is one TensorRT builds here, else ValueError listing the valid ones."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r}; valid: ['fp32', 'fp16', 'int8']")
    return precision


# --- progress -------------------------------------------------------------------------------
class ProgressBars:
    """tqdm bars for TensorRT's build phases (thread-safe, as IProgressMonitor must be)."""

    def __init__(self, enabled: bool = True, file=None):
        self.enabled, self.file = enabled, file
        self.bars: dict[str, object] = {}
        self.cancelled = False  # set to True (e.g. on Ctrl-C) to stop the build at the next step
        self._lock = threading.Lock()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        try:  # the device install has no tqdm (it is in the [train]/[export]/[dev] extras): no bars then
            from tqdm.auto import tqdm
        except ImportError:
            return
        with self._lock:
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=phase_name, position=len(self.bars), leave=parent_phase is None,
                disable=not self.enabled, file=self.file,
            )  # fmt: skip

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()


def _safely(fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        log.debug("progress display failed: %s", e)
        return None


def _progress_monitor(trt, bars: ProgressBars):
    """An `IProgressMonitor` forwarding to `bars` (the subclass needs the lazily imported trt)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        # an exception must never propagate into TensorRT's C++ caller: log and carry on
        def phase_start(self, phase_name, parent_phase, num_steps):
            _safely(bars.phase_start, phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return _safely(bars.step_complete, phase_name, step) is not False

        def phase_finish(self, phase_name):
            _safely(bars.phase_finish, phase_name)

    return Monitor()


# --- building -------------------------------------------------------------------------------
def _parser_errors(parser) -> str:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = getattr(e, "node_name", lambda: "")() or f"node {e.node()}"
        op = getattr(e, "node_operator", lambda: "")()
        lines.append(f"  {where} ({op}): {e.desc()}" if op else f"  {where}: {e.desc()}")
    return "\n".join(lines)


def _load_timing_cache(config, cache_path: Path) -> None:
    """Attach the timing cache at `cache_path` (or a new one) to the builder config."""
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    try:
        ok = config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    except Exception as e:  # a corrupt blob raises from inside TensorRT
        log.warning("timing cache %s is unreadable (%s); starting a new one", cache_path, e)
        ok = False
    if not ok:
        if blob:
            log.warning("timing cache %s does not fit this device or TensorRT version; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    if not is_writable_dir(cache_path.parent):
        log.warning("timing cache folder %s is not writable: every build will start from scratch", cache_path.parent)


@contextlib.contextmanager
def _cancel_on_ctrl_c(bars: ProgressBars):
    """During a build, Ctrl-C asks TensorRT to stop (step_complete returns False) instead of
    raising inside a TensorRT callback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        bars.cancelled = True
        log.warning("cancelling the engine build at the next step...")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str,
    profiles: Profiles | None = None,
    timing_cache_path: str | os.PathLike | None = None,
    workspace_mb: int = 1024,
    progress: bool = True,
) -> Path:
    """Build a serialized engine from an ONNX file with the TensorRT 10 builder.

    Args:
        onnx_path: the model (QDQ for int8).
        out_path: where the engine goes (written atomically).
        precision: "fp32", "fp16" or "int8".
        profiles: (min, opt, max) shapes per dynamic input.
        timing_cache_path: loaded when present, saved after the build (speeds rebuilds up a lot).
        workspace_mb: builder workspace limit in MiB (Orin Nano shares 8 GB with the CPU).
        progress: show tqdm bars per build phase.

    Raises:
        TensorRTUnavailable, EngineBuildError (parser errors listed per node), ValueError.
    """
    check_precision(precision)
    trt = check_tensorrt()
    onnx_path, out_path, profiles = Path(onnx_path), Path(out_path), dict(profiles or {})
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}:\n{_parser_errors(parser)}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    validate_profiles([TensorSpec(t.name, tuple(int(d) for d in t.shape)) for t in inputs], profiles)
    if precision == "int8" and not any(
        network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers)
    ):
        raise EngineBuildError(
            f"{onnx_path} has no Q/DQ nodes: INT8 needs the quantised ONNX (mlsan_edge.export.quantize); "
            "TensorRT 10's calibrator INT8 is deprecated and not used here"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # still required for Q/DQ networks on TRT 10.3
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    if cache_path is not None:
        _load_timing_cache(config, cache_path)
    bars = ProgressBars(enabled=progress)
    monitor = _progress_monitor(trt, bars)  # must outlive the build: TensorRT keeps a raw pointer
    config.progress_monitor = monitor
    log.info("building TensorRT %s engine from %s (can take minutes); equivalent:\n  %s", precision, onnx_path,
             trtexec_command(onnx_path, out_path, precision, profiles, cache_path, workspace_mb))  # fmt: skip
    with _cancel_on_ctrl_c(bars):
        serialized = builder.build_serialized_network(network, config)
    if bars.cancelled:
        raise KeyboardInterrupt(f"engine build for {onnx_path} cancelled; nothing was written")
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build {onnx_path} at {precision} (see the TensorRT log above)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_path, bytes(serialized))
    if cache_path is not None:
        try:
            _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        except OSError as e:
            log.warning("could not save timing cache %s (%s): the next build starts from scratch", cache_path, e)
    log.info("wrote %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path


def timing_cache_name(device: DeviceIdentity) -> str:
    """Timing caches are per GPU and TensorRT version too: `timing_trt10.3.0_orin_sm87.cache`."""
    cc = sanitise(device.compute_capability).replace(".", "")
    return f"timing_trt{sanitise(device.trt_version)}_{sanitise(device.gpu_name)[:40]}_sm{cc}.cache"


def ensure_engine(
    bundle: Bundle | str | os.PathLike,
    role: str,
    precision: str,
    *,
    profiles: Profiles | None = None,
    timing_cache_path: str | os.PathLike | None = None,
    workspace_mb: int = 1024,
    rebuild: bool = False,
    progress: bool = True,
) -> Path:
    """The engine for `role` at `precision` on this device: cached if it matches, else built.

    A cached engine is used only when its TensorRT version, GPU name, compute capability,
    precision, ONNX sha256 and its own sha256 match (`find_engine`); the new engine and its
    record go to `<bundle>/engines/` or, if that is read-only, the user cache.
    """
    bundle = load_bundle(bundle)
    base, _ = split_role(bundle, role)
    onnx_role = onnx_role_for(bundle, base, "tensorrt", check_precision(precision))
    if onnx_role is None:
        raise ValueError(f"bundle has no ONNX for {base!r} at {precision}; available: {available_precisions(bundle, base, 'tensorrt')}")
    device = current_device_identity()
    if not rebuild and (found := find_engine(bundle, onnx_role, precision, device)) is not None:
        log.info("using cached engine %s", found)
        return found
    spec = bundle.model_spec(onnx_role)
    onnx_path, onnx_sha = bundle.path(onnx_role), bundle.file_sha256(spec.file)
    if sha256_file(onnx_path) != onnx_sha:  # re-check: the engine must match the verified file
        raise BundleError(f"{onnx_path} changed since the bundle was loaded; reload or re-copy the bundle")
    profiles = dict(profiles) if profiles is not None else profiles_from_spec(spec)
    out_dir = writable_engine_dir(bundle)
    path = out_dir / engine_file_name(onnx_sha, precision, device, onnx_role)
    tc = Path(timing_cache_path) if timing_cache_path else out_dir / timing_cache_name(device)
    build_engine(onnx_path, path, precision, profiles, tc, workspace_mb, progress)
    write_record(path, EngineRecord(
        file=path.name, role=onnx_role, onnx_sha256=onnx_sha, precision=precision,
        trt_version=device.trt_version, gpu_name=device.gpu_name, compute_capability=device.compute_capability,
        sha256=sha256_file(path), size=path.stat().st_size,
        profiles={k: [list(s) for s in v] for k, v in profiles.items()},
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    ))  # fmt: skip
    return path


__all__ = [
    "EngineBuildError",
    "ProgressBars",
    "build_engine",
    "check_precision",
    "ensure_engine",
    "profiles_from_spec",
    "timing_cache_name",
    "trtexec_command",
    "validate_profiles",
]
