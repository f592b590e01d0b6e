"""Shared fixtures: where the real data lives and markers that skip when it does not."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("MLSAN_SHARED_DATA", REPO.parent / "shared" / "data"))

HAVE_DATA = (SHARED_DATA / "ravdess" / "visual_au35.csv").exists()
HAVE_TORCH = importlib.util.find_spec("torch") is not None

requires_data = pytest.mark.skipif(not HAVE_DATA, reason=f"real data not found at {SHARED_DATA}")
requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install -e '.[train]')")


@pytest.fixture
def shared_data() -> Path:
    if not HAVE_DATA:
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def torch_one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (100x slower on a busy 2-core box)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
