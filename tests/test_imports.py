"""The import rules of shared/docs/ARCHITECTURE.md, checked on the code that ships.

- every device module (the contract, features/, backends/, runtime/, demo/, cli/) imports with
  torch and the other training/plotting libraries blocked;
- `lint-imports` (the contracts in pyproject.toml) catches a device module that imports the
  training side;
- no module reaches into another module's private names.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# Not needed at import time by anything the device runs: the device install has none of them.
BLOCKED = ("torch", "sklearn", "transformers", "matplotlib", "tqdm")
DEVICE_PACKAGES = ("features", "backends", "runtime", "demo", "cli")
CONTRACT_MODULES = ("config", "bundle", "profile", "metrics")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SOURCE_ROOTS = ("mlsan_edge", "export")  # export/ installs as mlsan_edge.export
DEVICE_CONTRACT = "the device never imports torch or the training side"

_BLOCKER = """\
import sys

BLOCKED = {blocked!r}


class _Blocker:
    \"\"\"Acts as if the libraries were not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test (not part of the device install)")


sys.meta_path.insert(0, _Blocker())
"""

_IMPORT_ALL = """\
import importlib, pkgutil, sys
import mlsan_edge

names = ["mlsan_edge"] + ["mlsan_edge." + m for m in {contract!r}]
for pkg in {packages!r}:
    p = importlib.import_module("mlsan_edge." + pkg)
    names += [m.name for m in pkgutil.walk_packages(p.__path__, prefix=p.__name__ + ".")]
for n in names:
    importlib.import_module(n)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
assert not leaked, leaked
print("\\n".join(names))
"""


def test_device_modules_import_without_training_libraries(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER.format(blocked=BLOCKED))
    code = _IMPORT_ALL.format(contract=CONTRACT_MODULES, packages=DEVICE_PACKAGES, blocked=BLOCKED)
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    imported = r.stdout.split()
    for pkg in DEVICE_PACKAGES:  # every module file of every device package was imported
        expected = {f"mlsan_edge.{pkg}." + ".".join(f.relative_to(REPO / "mlsan_edge" / pkg).with_suffix("").parts)
                    for f in (REPO / "mlsan_edge" / pkg).rglob("*.py") if f.name != "__init__.py"}
        assert expected <= set(imported), f"not imported: {sorted(expected - set(imported))}"
    assert len(imported) > 25, imported


def test_progress_bars_are_optional(tmp_path):
    """Without tqdm (the device install) engine building and feature extraction run without bars."""
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER.format(blocked=BLOCKED))
    code = ("from mlsan_edge.backends.tensorrt_build import ProgressBars\n"
            "from mlsan_edge.data import extract\n"
            "bars = ProgressBars()\n"
            "bars.phase_start('build', None, 3)\n"
            "assert bars.step_complete('build', 0)\n"
            "bars.phase_finish('build')\n"
            "assert list(extract._progress(range(3), True, 'x')) == [0, 1, 2]\n"
            "print('ok')\n")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_blocker_blocks(tmp_path):
    """The check above would pass vacuously if the blocker did nothing."""
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER.format(blocked=BLOCKED))
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", "import tqdm"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "blocked in this test" in r.stderr


# --- lint-imports ---------------------------------------------------------------------------
def _copy_sources(dest: Path) -> Path:
    for root in SOURCE_ROOTS:
        shutil.copytree(REPO / root, dest / root, ignore=shutil.ignore_patterns("__pycache__", "assets", "*.pyc"))
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.skip(f"{LINT_IMPORTS} not found (pip install -e '.[dev]')")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _contract_section(output: str, name: str) -> str:
    """The text lint-imports prints under the heading of a broken contract ('' when kept)."""
    lines = output.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == name and set(lines[i + 1].strip()) == {"-"}:
            rest = lines[i + 2:]
            end = next((j for j, s in enumerate(rest[:-1]) if s.strip() and set(rest[j + 1].strip()) == {"-"}),
                       len(rest))
            return "\n".join(rest[:end])
    return ""


def test_lint_imports_catches_a_runtime_module_importing_the_data_side(tmp_path):
    clean = _copy_sources(tmp_path / "clean")
    broken = _copy_sources(tmp_path / "broken")
    with open(broken / "mlsan_edge" / "runtime" / "events.py", "a") as f:
        f.write("\nimport mlsan_edge.data.replay  # noqa: E402  the test's deliberate violation\n")
    ok, bad = _lint_imports(clean), _lint_imports(broken)
    assert "Contracts:" in ok.stdout, ok.stdout + ok.stderr  # it ran, on the copy
    assert bad.returncode != 0, bad.stdout
    assert f"{DEVICE_CONTRACT} BROKEN" in bad.stdout, bad.stdout
    section = _contract_section(bad.stdout, DEVICE_CONTRACT)
    assert "mlsan_edge.runtime.events -> mlsan_edge.data" in section, bad.stdout
    # the violation is the test's own, not something the tree already has
    assert "mlsan_edge.runtime.events -> mlsan_edge.data" not in ok.stdout, ok.stdout


def test_lint_imports_passes_on_the_tree():
    """CI runs `lint-imports`: every contract in pyproject.toml is kept by the real tree."""
    r = _lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr


# --- private names --------------------------------------------------------------------------
def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "export":
        parts = ["mlsan_edge", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, path: Path) -> str:
    """Absolute name of the module an ImportFrom reads from (handles `from . import x`)."""
    if not node.level:
        return node.module or ""
    base = _module_name(path).split(".")
    base = base if path.name == "__init__.py" else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _ours(module: str) -> bool:
    return module.split(".")[0] in ("mlsan_edge", "export")


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["mlsan_edge", "export"]:
        parts = parts[1:]
    elif parts[0] == "mlsan_edge":
        pass
    elif parts[0] != "export":
        return False
    p = REPO.joinpath(*parts)
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def private_uses(path: Path, source: str | None = None) -> list[str]:
    """`from <our module> import _name` and `<our module>._name` in one source file (`source`
    overrides the file's text)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    here = _module_name(path)
    modules: dict[str, str] = {}  # local name -> our module it refers to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _ours(a.name):
                    modules[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(here, node, path)
            if not _ours(src):
                continue
            for a in node.names:
                if _is_private(a.name):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {src} import {a.name}")
                elif _is_module(f"{src}.{a.name}"):
                    modules[a.asname or a.name] = f"{src}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, v = [node.attr], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in modules:
                target = ".".join([modules[v.id], *reversed(chain[1:])])
                if target != here and _is_module(target):  # `module._name`, not `obj._attr`
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {target}.{node.attr}")
    return found


def test_private_use_scanner_finds_both_forms():
    """The scanner itself, on source placed in the tree's namespace (no file is written there)."""
    src = ("from mlsan_edge.profile import _secret, __version__\n"
           "from . import replay\n"
           "import mlsan_edge.data.table as tbl\n"
           "from mlsan_edge import metrics\n"
           "x = replay._hidden(1) + tbl._also + metrics.report + replay.__name__\n"
           "obj._fine = 1\n")
    path = REPO / "mlsan_edge" / "data" / "_scanner_probe.py"
    found = private_uses(path, src)
    assert sorted(f.split(": ", 1)[1] for f in found) == [
        "from mlsan_edge.profile import _secret", "mlsan_edge.data.replay._hidden", "mlsan_edge.data.table._also"]


def test_no_module_uses_another_modules_private_names():
    files = [f for root in SOURCE_ROOTS for f in sorted((REPO / root).rglob("*.py"))]
    assert len(files) > 50
    offenders = [o for f in files for o in private_uses(f)]
    assert not offenders, ("these reach into another module's private names; make the name public "
                           "(and document it) or move the code:\n" + "\n".join(offenders))
