"""Where TensorRT engines live and how we know one fits this machine. Pure Python, no TensorRT.

A TensorRT engine is only valid for the TensorRT version and GPU it was built with ("version tag
does not match" is the classic symptom of a copied engine), and for the exact ONNX graph and
precision. All five go into the file name (`engine_cache_name`) and, in full, into a sidecar
record `<engine>.json` that also holds the engine's own sha256. An engine is used only when
name, record and hash all match this machine (`find_engine`); anything else is ignored and a new
one is built, so an engine for another device or version is never handed to TensorRT.

Engines go to `<bundle>/engines/` when that folder is writable, else to the user cache
(`$MLSAN_EDGE_CACHE`, default `~/.cache/mlsan_edge/engines/<bundle name>-<manifest hash>/`):
the default bundle inside an installed package is usually read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mlsan_edge.bundle import MANIFEST_NAME, Bundle, sha256_file

log = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class DeviceIdentity:
    """What an engine is tied to besides its graph.

    Attributes:
        trt_version: TensorRT version string, e.g. "10.3.0".
        gpu_name: e.g. "Orin" or "NVIDIA H100 80GB HBM3".
        compute_capability: "major.minor", e.g. "8.7" for Jetson Orin.
    """

    trt_version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineRecord:
    """The sidecar record of one engine (also the format of `manifest.engines` entries).

    Attributes:
        file: engine file name (relative to the record's folder).
        role: the ONNX role it was built from ("student.int8").
        onnx_sha256: sha256 of that ONNX file.
        precision: "fp32", "fp16" or "int8".
        trt_version / gpu_name / compute_capability: see DeviceIdentity.
        sha256 / size: of the engine file (bytes).
        profiles: the optimisation-profile shapes it was built with.
        built: ISO 8601 date of the build.
    """

    file: str
    role: str
    onnx_sha256: str
    precision: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    sha256: str
    size: int
    profiles: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    built: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in names if n not in d and n not in ("profiles", "built")]
        if missing:
            raise ValueError(f"engine record is missing fields {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> DeviceIdentity:
        return DeviceIdentity(self.trt_version, self.gpu_name, self.compute_capability)


def sanitise(s: str) -> str:
    """Lower-case, runs of anything but [a-z0-9.] -> '-', trimmed; never empty."""
    out = re.sub(r"[^a-z0-9.]+", "-", str(s).lower()).strip("-.")
    return out or "unknown"


def engine_cache_name(
    onnx_sha256: str,
    precision: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    prefix: str = "",
) -> str:
    """A file name that changes whenever anything that invalidates an engine changes.

    Example: `student-int8_trt10.3.0_orin_sm87_3fa9c2e1d0b4a7c6.engine`.

    Args:
        onnx_sha256: hex sha256 of the ONNX file (the first 16 hex digits go in the name; the
            record keeps all 64).
        precision: "fp32", "fp16" or "int8".
        trt_version: TensorRT version, e.g. "10.3.0".
        gpu_name: GPU name as the driver reports it.
        compute_capability: "8.7" (or "87").
        prefix: optional human-readable stem, e.g. the role.
    """
    if not re.fullmatch(r"[0-9a-fA-F]{16,64}", onnx_sha256 or ""):
        raise ValueError(f"onnx_sha256 must be a hex digest, got {onnx_sha256!r}")
    sm = "sm" + sanitise(compute_capability).replace(".", "")
    parts = [sanitise(prefix) + "-" + sanitise(precision) if prefix else sanitise(precision)]
    parts += ["trt" + sanitise(trt_version), sanitise(gpu_name)[:40], sm, onnx_sha256[:16].lower()]
    return "_".join(parts) + ENGINE_SUFFIX


def engine_file_name(onnx_sha256: str, precision: str, device: DeviceIdentity, role: str) -> str:
    """`engine_cache_name` for `device`, prefixed with `role` minus any ".<precision>" suffix."""
    stem, _, suffix = role.rpartition(".")
    prefix = stem if stem and suffix in ("fp32", "fp16", "int8") else role
    return engine_cache_name(
        onnx_sha256, precision, device.trt_version, device.gpu_name, device.compute_capability, prefix
    )


def user_cache_dir(bundle: Bundle) -> Path:
    """Per-bundle engine folder in the user cache (used when the bundle folder is read-only)."""
    base = Path(os.environ.get("MLSAN_EDGE_CACHE", Path.home() / ".cache" / "mlsan_edge")).expanduser()
    tag = hashlib.sha256((bundle.root / MANIFEST_NAME).read_bytes()).hexdigest()[:12]
    return base / "engines" / f"{sanitise(bundle.manifest.name)}-{tag}"


def engine_dirs(bundle: Bundle) -> list[Path]:
    """Folders searched for engines, in order: the bundle's `engines/`, then the user cache."""
    return [bundle.engine_dir, user_cache_dir(bundle)]


def is_writable_dir(path: Path) -> bool:
    """True when `path` exists or can be created, and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def writable_engine_dir(bundle: Bundle) -> Path:
    """Where a new engine for `bundle` should be written."""
    for d in engine_dirs(bundle):
        if is_writable_dir(d):
            return d
        log.warning("engine folder %s is not writable; trying the next one", d)
    raise PermissionError(
        f"no writable folder for TensorRT engines: tried {[str(d) for d in engine_dirs(bundle)]}; "
        "set MLSAN_EDGE_CACHE to a writable folder"
    )


def record_problems(record: EngineRecord, *, onnx_sha256: str, precision: str, device: DeviceIdentity) -> list[str]:
    """Why `record` does not fit this ONNX file, precision and device (empty list = it fits)."""
    want = {
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "trt_version": device.trt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
    }
    return [f"{k} is {getattr(record, k)!r}, need {v!r}" for k, v in want.items() if getattr(record, k) != v]


def _candidate_records(bundle: Bundle, name: str):
    """(engine path, record dict) pairs for `name`: sidecars in each engine dir, then the manifest."""
    for d in engine_dirs(bundle):
        rec_path = d / (name + RECORD_SUFFIX)
        if rec_path.is_file():
            try:
                yield d / name, json.loads(rec_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                log.warning("ignoring unreadable engine record %s: %s", rec_path, e)
    for rel, rec in bundle.manifest.engines.items():
        if Path(rel).name == name:
            yield bundle.root / rel, rec


def find_engine(bundle: Bundle, role: str, precision: str, device: DeviceIdentity) -> Path | None:
    """The cached engine for ONNX `role` at `precision` on `device`, or None.

    An engine is returned only when its file name, its record (ONNX sha256, precision, TensorRT
    version, GPU name, compute capability) and its own sha256 all match; mismatches are logged
    and skipped, never loaded.
    """
    onnx_sha = bundle.file_sha256(bundle.model_spec(role).file)
    name = engine_file_name(onnx_sha, precision, device, role)
    for path, raw in _candidate_records(bundle, name):
        try:
            record = EngineRecord.from_dict(raw)
        except (TypeError, ValueError) as e:
            log.warning("ignoring engine %s: bad record (%s)", path, e)
            continue
        problems = record_problems(record, onnx_sha256=onnx_sha, precision=precision, device=device)
        if problems:
            log.warning("ignoring engine %s: %s", path, "; ".join(problems))
            continue
        if not path.is_file() or path.stat().st_size != record.size or sha256_file(path) != record.sha256:
            log.warning("ignoring engine %s: missing, truncated or changed since it was built", path)
            continue
        return path
    return None


def write_record(engine_path: Path, record: EngineRecord) -> Path:
    """Write the sidecar `<engine>.json` atomically (after the engine itself is in place)."""
    rec_path = engine_path.with_name(engine_path.name + RECORD_SUFFIX)
    tmp = rec_path.with_name(rec_path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, rec_path)
    return rec_path


__all__ = [
    "DeviceIdentity",
    "EngineRecord",
    "engine_cache_name",
    "engine_dirs",
    "engine_file_name",
    "find_engine",
    "record_problems",
    "writable_engine_dir",
    "write_record",
]
