"""The bundle: a self-describing folder that is the only contract between export and the device.

Layout::

    my_bundle/
      manifest.json        schema version, classes, feature contract, model specs, sha256 of every file
      student.fp32.onnx    the files the manifest lists (any relative paths)
      student.int8.onnx
      engines/             TensorRT engines built on the device (see `mlsan_edge.backends.engine_cache`)

Loading (`load_bundle`) verifies the size and sha256 of *every* listed file before any model file
is parsed, so a truncated copy or a half-finished download fails with the file's name instead of
an obscure protobuf error. `check_feature_contract` compares the manifest's feature contract with
this code's constants (`config.py`); `load_runtime` and `mlsan-edge eval` call it before they
build anything. Every model the device runs comes from `Bundle.path(role)` of the bundle it was
given; the default bundle is just the one that ships (`DEFAULT_BUNDLE_DIR`, the only place that
knows where it lives). Writing is `bundle_writer.BundleWriter` (offline only).

No torch and no onnx here: this module runs on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union


from mlsan_edge.feature_contract import FeatureContractError, check_feature_contract, expected_feature_contract  # noqa: F401,E501  (re-exported)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump when a reader of the old schema would misread a new manifest
MANIFEST_NAME = "manifest.json"
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "assets" / "bundles" / "default"
ENGINE_DIR_NAME = "engines"  # cached TensorRT engines; not listed in `files`, checked separately
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
TOKENIZER_FILE = "encoders/tokenizer.json"  # the text encoder's tokenizer: a file, not a model role

Dim = Union[int, str]  # a static size, or a symbolic name (dynamic); -1 also means dynamic


class BundleError(ValueError):
    """A bundle is missing, partial, corrupted or from a newer mlsan_edge."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a model.

    Attributes:
        name: the tensor name in the graph.
        shape: one entry per axis: an int for a static size, -1 or a str (e.g. "batch") for a
            dynamic one.
        dtype: numpy dtype name ("float32", "int64", ...).
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        _require(d, ("name", "shape"), "tensor spec")
        shape = tuple(s if isinstance(s, str) else int(s) for s in d["shape"])
        return cls(name=str(d["name"]), shape=shape, dtype=str(d.get("dtype", "float32")))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def is_static(self) -> bool:
        return all(isinstance(s, int) and s >= 0 for s in self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """One network in the bundle.

    Attributes:
        file: path of the ONNX file relative to the bundle root.
        inputs / outputs: tensor specs in graph order.
        precision: "fp32", "fp16" or "int8" (int8 = QDQ graph).
        profiles: for inputs with dynamic dims, TensorRT optimisation-profile shapes
            {input: {"min": [...], "opt": [...], "max": [...]}}; empty when all shapes are static.
    """

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str = "fp32"
    profiles: Mapping[str, Mapping[str, list]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], role: str = "?") -> "ModelSpec":
        _require(d, ("file", "inputs", "outputs"), f"models[{role!r}]")
        precision = str(d.get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise BundleError(f"models[{role!r}].precision is {precision!r}; expected one of {PRECISIONS}")
        return cls(
            file=str(d["file"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            precision=precision,
            profiles=dict(d.get("profiles", {})),
        )

    def to_dict(self) -> dict:
        d = {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "precision": self.precision,
        }
        if self.profiles:
            d["profiles"] = {k: dict(v) for k, v in self.profiles.items()}
        return d


REQUIRED_FIELDS = ("schema_version", "name", "classes", "feature_contract", "models", "files", "provenance")


@dataclass(frozen=True)
class Manifest:
    """The parsed `manifest.json`.

    Attributes:
        schema_version: format version; readers refuse anything newer than `SCHEMA_VERSION`.
        name: bundle name, e.g. "mlsan-student-v1".
        classes: class names in logit order.
        feature_contract: sample rate, hop, dims, feature version, normalisation...; its numbers
            are compared with this code's by `check_feature_contract`.
        models: role ("student.fp32", "student.int8", "voice_encoder", ...) -> ModelSpec.
        files: relative path -> {"sha256": hex, "size": bytes}, for every file but the manifest.
        provenance: data, git commit, date, command.
        metrics: measured accuracy and latency, free form.
        engines: TensorRT engines shipped inside the bundle: relative path -> engine record
            (see `mlsan_edge.backends.engine_cache.EngineRecord`); checked when used, not at load.
    """

    schema_version: int
    name: str
    classes: tuple[str, ...]
    feature_contract: Mapping[str, Any]
    models: Mapping[str, ModelSpec]
    files: Mapping[str, Mapping[str, Any]]
    provenance: Mapping[str, Any]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    engines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        """Validate and parse a manifest dict; raises BundleError naming the offending field."""
        try:
            return cls._from_dict(d)
        except BundleError:
            raise
        except (TypeError, KeyError, AttributeError, ValueError, IndexError, OverflowError) as e:
            # a field of the wrong JSON type (null, a list where an object belongs...): found by
            # fuzzing (tests/test_fuzz.py); still one BundleError, never a bare TypeError
            raise BundleError(f"manifest is malformed ({type(e).__name__}: {e}); the bundle is corrupted or "
                              "hand-edited: re-export or re-copy it") from e

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        if not isinstance(d, Mapping):
            raise BundleError(f"manifest must be a JSON object, got {type(d).__name__}")
        _require(d, ("schema_version",), "manifest")
        version = d["schema_version"]
        if not isinstance(version, int):
            raise BundleError(f"manifest field 'schema_version' must be an int, got {version!r}")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version} was made by a newer mlsan_edge (this one reads "
                f"up to {SCHEMA_VERSION}); upgrade: pip install -U mlsan-edge"
            )
        _require(d, REQUIRED_FIELDS, "manifest")
        files = {}
        for rel, rec in dict(d["files"]).items():
            check_relpath(rel)
            _require(rec, ("sha256", "size"), f"files[{rel!r}]")
            files[rel] = {"sha256": str(rec["sha256"]).lower(), "size": int(rec["size"])}
        models = {role: ModelSpec.from_dict(m, role) for role, m in dict(d["models"]).items()}
        for role, spec in models.items():
            if spec.file not in files:
                raise BundleError(
                    f"models[{role!r}].file {spec.file!r} is not listed in the manifest's 'files'; "
                    "every model file must carry a sha256 (re-export the bundle with BundleWriter)"
                )
        return cls(
            schema_version=version,
            name=str(d["name"]),
            classes=tuple(str(c) for c in d["classes"]),
            feature_contract=dict(d["feature_contract"]),
            models=models,
            files=files,
            provenance=dict(d["provenance"]),
            metrics=dict(d.get("metrics", {})),
            engines=dict(d.get("engines", {})),
        )

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "classes": list(self.classes),
            "feature_contract": dict(self.feature_contract),
            "models": {role: spec.to_dict() for role, spec in self.models.items()},
            "files": {rel: dict(rec) for rel, rec in self.files.items()},
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
            "engines": {rel: dict(rec) for rel, rec in self.engines.items()},
        }


def _require(d: Mapping[str, Any], names: Sequence[str], where: str) -> None:
    for n in names:
        if n not in d:
            raise BundleError(f"{where} is missing required field {n!r} (required: {list(names)})")


def check_relpath(rel: str) -> None:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel in ("", MANIFEST_NAME):
        raise BundleError(f"manifest lists file {rel!r}: paths must be relative and inside the bundle")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


class Bundle:
    """A loaded, verified bundle. Create with `load_bundle`."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = Path(root).resolve()
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"Bundle({self.manifest.name!r}, path={str(self.root)!r}, roles={self.roles})"

    @property
    def roles(self) -> list[str]:
        return sorted(self.manifest.models)

    def model_spec(self, role: str) -> ModelSpec:
        """The spec of one model; ValueError listing the roles when `role` is unknown."""
        try:
            return self.manifest.models[role]
        except KeyError:
            raise ValueError(f"bundle {self.manifest.name!r} has no model {role!r}; roles: {self.roles}") from None

    def path(self, role: str) -> Path:
        """Absolute path of the model file for `role`."""
        return self.root / self.model_spec(role).file

    def file(self, rel: str) -> Path:
        """Absolute path of a listed file that is not a model (e.g. `TOKENIZER_FILE`).

        Raises:
            ValueError: `rel` is not in the manifest's `files`.
        """
        if rel not in self.manifest.files:
            raise ValueError(f"bundle {self.manifest.name!r} ({self.root}) lists no file {rel!r}; "
                             "re-export it with `mlsan-edge export`")
        return self.root / rel

    @property
    def tokenizer_path(self) -> Path:
        """The text encoder's tokenizer.json (ValueError when the bundle has none)."""
        return self.file(TOKENIZER_FILE)

    def file_sha256(self, rel: str) -> str:
        return self.manifest.files[rel]["sha256"]

    def variants(self, base: str) -> dict[str, str]:
        """Precision -> role for `base` ("student" -> {"fp32": "student.fp32", "int8": "student.int8"}).

        A role counts as a variant of `base` when it equals `base` or is `base.<precision>`.
        """
        out: dict[str, str] = {}
        for role, spec in self.manifest.models.items():
            if role == base or (role.startswith(base + ".") and role[len(base) + 1 :] in PRECISIONS):
                out[spec.precision] = role
        return out

    @property
    def engine_dir(self) -> Path:
        return self.root / ENGINE_DIR_NAME

    def to_dict(self) -> dict:
        return {"path": str(self.root), **self.manifest.to_dict()}

    def to_json(self, indent: int = 2) -> str:
        """The manifest as JSON with the bundle's absolute `path` first (for `mlsan-edge info`)."""
        return json.dumps(self.to_dict(), indent=indent)


def resolve_bundle_path(path_or_name: str | os.PathLike) -> Path:
    """'default' -> DEFAULT_BUNDLE_DIR; anything else is a path."""
    if str(path_or_name) == "default":
        return DEFAULT_BUNDLE_DIR
    return Path(path_or_name).expanduser()


def load_bundle(path_or_name: str | os.PathLike | Bundle = "default", verify: bool = True) -> Bundle:
    """Load a bundle, verifying every listed file's size and sha256 before any model is parsed.

    Args:
        path_or_name: a bundle folder, or "default" for the bundle shipped in the package.
        verify: hash every file (the default). Only tests and tools that re-hash anyway skip it.

    Raises:
        BundleError: not a bundle, newer schema, missing field, missing file, or hash mismatch;
            the message names the offending field or file.
    """
    if isinstance(path_or_name, Bundle):
        return path_or_name
    root = resolve_bundle_path(path_or_name)
    mpath = root / MANIFEST_NAME
    if not root.is_dir() or not mpath.is_file():
        raise BundleError(
            f"{root} is not a bundle: expected a folder with {MANIFEST_NAME} and the model files "
            "(build one with `mlsan-edge export`, or pass bundle='default')"
        )
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupted: re-export or re-copy it") from e
    try:
        manifest = Manifest.from_dict(raw)
    except BundleError as e:
        raise BundleError(f"{mpath}: {e}") from e
    if verify:
        verify_files(root, manifest)
    log.debug("loaded bundle %s from %s", manifest.name, root)
    return Bundle(root, manifest)


def verify_files(root: Path, manifest: Manifest) -> None:
    """Check that every file in `manifest.files` exists under `root` with its size and sha256."""
    for rel, rec in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise BundleError(
                f"bundle {root} is missing file {rel!r} listed in its manifest; the copy is partial: "
                "copy the whole folder again"
            )
        size = p.stat().st_size
        if size != rec["size"]:
            raise BundleError(
                f"bundle file {rel!r} is {size} bytes, the manifest says {rec['size']}: truncated or "
                f"modified ({p}); copy the bundle again"
            )
        digest = sha256_file(p)
        if digest != rec["sha256"]:
            raise BundleError(
                f"bundle file {rel!r} has sha256 {digest[:12]}..., the manifest says "
                f"{rec['sha256'][:12]}...: the file is corrupted or was changed after export ({p})"
            )


__all__ = [
    "SCHEMA_VERSION",
    "DEFAULT_BUNDLE_DIR",
    "MANIFEST_NAME",
    "BundleError",
    "TensorSpec",
    "ModelSpec",
    "Manifest",
    "Bundle",
    "load_bundle",
    "sha256_file",
    "TOKENIZER_FILE",
    "check_feature_contract",
    "expected_feature_contract",
]
