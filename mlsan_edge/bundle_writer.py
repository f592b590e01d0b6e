"""Writing a bundle (offline only: `mlsan-edge export`, `export/`); the device reads with `bundle.py`.

`BundleWriter` writes into a hidden temporary sibling folder that is renamed into place at the
end, so an interrupted export never leaves a half bundle; every file is hashed and the manifest
is written last. `default_provenance` records the date, the git commit and the command line;
paths in it are the caller's business: keep them relative (see `packaging.py`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlsan_edge.bundle import (ENGINE_DIR_NAME, MANIFEST_NAME, SCHEMA_VERSION, BundleError, Manifest, ModelSpec,
                               TensorSpec, check_relpath, sha256_file)

log = logging.getLogger(__name__)


def default_provenance(data: Any = None) -> dict:
    """Date (UTC, ISO 8601), git commit of the working tree (or None), the command line (absolute
    paths made relative, see `_portable`), `data`."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "data": data,
        "git_commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(_portable(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _portable(arg: str) -> str:
    """A command-line argument without the build machine's folders: an absolute path becomes
    relative to the working directory when inside it, else just its name (manifests are shipped)."""
    if not os.path.isabs(arg):
        return arg
    p = Path(arg)
    try:
        return p.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return p.name


class BundleWriter:
    """Write a bundle atomically.

    Files are written into a hidden temporary sibling of `dest`; on a clean exit every file is
    hashed, the manifest is written last and the folder is renamed into place (an existing bundle
    is renamed aside first and deleted only after the new one is in place). On an exception the
    temporary folder is removed and `dest` is untouched.

    Example::

        with BundleWriter("out/bundle", name="student-v1", classes=EMOTIONS,
                          feature_contract=contract) as w:
            torch.onnx.export(model, args, w.dir / "student.fp32.onnx")
            w.add_model("student.fp32", "student.fp32.onnx", inputs=[...], outputs=[...])
            w.metrics["ravdess_unseen_acc"] = 0.71
    """

    def __init__(
        self,
        dest: str | os.PathLike,
        *,
        name: str,
        classes: Sequence[str],
        feature_contract: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ):
        self.dest = Path(dest).expanduser().resolve()
        self.name = name
        self.classes = list(classes)
        self.feature_contract = dict(feature_contract)
        self.provenance = dict(provenance) if provenance is not None else default_provenance()
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.models: dict[str, ModelSpec] = {}
        self.dir: Path | None = None  # the temporary folder, set by __enter__

    def __enter__(self) -> "BundleWriter":
        if self.dest.exists() and not (self.dest / MANIFEST_NAME).is_file() and any(self.dest.iterdir()):
            raise BundleError(f"refusing to replace {self.dest}: it exists and is not a bundle (no {MANIFEST_NAME})")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.dir = self.dest.parent / f".{self.dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()
        return self

    def add_file(self, rel: str, src: str | os.PathLike | None = None) -> Path:
        """Copy `src` to `rel` inside the bundle (or just return the target path when src is None)."""
        assert self.dir is not None, "use BundleWriter as a context manager"
        check_relpath(rel)
        target = self.dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copyfile(src, target)
        return target

    def add_model(
        self,
        role: str,
        rel: str,
        *,
        inputs: Sequence[TensorSpec | Mapping],
        outputs: Sequence[TensorSpec | Mapping],
        precision: str = "fp32",
        profiles: Mapping[str, Mapping[str, list]] | None = None,
        src: str | os.PathLike | None = None,
    ) -> Path:
        """Register a model file (copied from `src`, or already written at `self.dir / rel`)."""
        target = self.add_file(rel, src)
        as_spec = lambda t: t if isinstance(t, TensorSpec) else TensorSpec.from_dict(t)  # noqa: E731
        self.models[role] = ModelSpec(
            file=rel,
            inputs=tuple(as_spec(t) for t in inputs),
            outputs=tuple(as_spec(t) for t in outputs),
            precision=precision,
            profiles=dict(profiles or {}),
        )
        return target

    def _manifest(self) -> Manifest:
        assert self.dir is not None
        files = {}
        for p in sorted(self.dir.rglob("*")):
            rel = p.relative_to(self.dir).as_posix()
            if p.is_file() and rel != MANIFEST_NAME and not rel.startswith(ENGINE_DIR_NAME + "/"):
                files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        for role, spec in self.models.items():
            if spec.file not in files:
                raise BundleError(f"model {role!r} was registered with file {spec.file!r}, which was never written")
        d = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "classes": self.classes,
            "feature_contract": self.feature_contract,
            "models": {r: s.to_dict() for r, s in self.models.items()},
            "files": files,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "engines": {},
        }
        return Manifest.from_dict(json.loads(json.dumps(d)))  # JSON round trip = what readers see

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.dir is not None
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            log.warning("bundle write to %s aborted (%s); nothing was changed there", self.dest, exc_type.__name__)
            return
        try:
            manifest = self._manifest()
            _write_json_atomic(self.dir / MANIFEST_NAME, manifest.to_dict())
            _swap_into_place(self.dir, self.dest)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        log.info("wrote bundle %s (%d files) to %s", self.name, len(manifest.files), self.dest)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _swap_into_place(new: Path, dest: Path) -> None:
    """Rename `new` to `dest`; an existing `dest` is moved aside first and removed last."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)  # put the previous bundle back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["BundleWriter", "default_provenance"]
