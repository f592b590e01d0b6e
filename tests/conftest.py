"""Shared fixtures, and the markers of pyproject.toml applied as skips.

A test says what it needs with a marker and this file skips it when that is missing, so
`pytest -m "not requires_data"` and the skips agree:

    requires_data      ../shared/data (or $MLSAN_SHARED_DATA) is present
    requires_torch     torch is importable (the [train] extra)
    requires_tensorrt  tensorrt is importable (Jetson / NVIDIA GPU)
    requires_cuda      a CUDA GPU is visible

Tests that take the `shared_data` fixture are marked requires_data, and those that take
`torch_one_thread` requires_torch, automatically.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("MLSAN_SHARED_DATA", REPO.parent / "shared" / "data"))



def importable(name: str) -> bool:
    """`name` is installed (found without importing it; a blocked import counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


HAVE_DATA = (SHARED_DATA / "ravdess" / "visual_au35.csv").exists()
HAVE_TORCH = importable("torch")
HAVE_TENSORRT = importable("tensorrt")

# kept as names so test modules can write `pytestmark = requires_torch` or `@requires_data`
requires_data = pytest.mark.requires_data
requires_torch = pytest.mark.requires_torch
requires_tensorrt = pytest.mark.requires_tensorrt
requires_cuda = pytest.mark.requires_cuda

FIXTURE_MARKERS = {"shared_data": "requires_data", "torch_one_thread": "requires_torch"}


@functools.cache
def have_cuda() -> bool:
    """A CUDA GPU is visible (asked only when a requires_cuda test is collected)."""
    if HAVE_TORCH:
        import torch

        return bool(torch.cuda.is_available())
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu"))  # desktop GPU, Jetson


def _missing(marker: str) -> str | None:
    """Why a test with `marker` cannot run here, or None when it can."""
    if marker == "requires_data" and not HAVE_DATA:
        return f"real data not found at {SHARED_DATA} (set MLSAN_SHARED_DATA)"
    if marker == "requires_torch" and not HAVE_TORCH:
        return "torch not installed (pip install -e '.[train]')"
    if marker == "requires_tensorrt" and not HAVE_TENSORRT:
        return "TensorRT not installed (Jetson / NVIDIA GPU only)"
    if marker == "requires_cuda" and not have_cuda():
        return "no CUDA GPU"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        for marker in ("requires_data", "requires_torch", "requires_tensorrt", "requires_cuda"):
            if item.get_closest_marker(marker) is not None and (why := _missing(marker)):
                item.add_marker(pytest.mark.skip(reason=why))
                break


@pytest.fixture
def shared_data() -> Path:
    """../shared/data; tests using it are marked requires_data (skipped when absent)."""
    return SHARED_DATA


@pytest.fixture
def torch_one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (100x slower on a busy 2-core box)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def load_script(name: str):
    """A script of benchmarks/ as a module (they are run as files, not installed): tests call the
    same functions the committed results came from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
