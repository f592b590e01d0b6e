"""Distillation: a short run moves the student toward the teacher's soft targets."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import HAVE_TORCH, requires_torch
from mlsan_edge.data.replay import stream_order
from mlsan_edge.profile import GlobalStats

pytestmark = requires_torch

if HAVE_TORCH:
    import torch

    from mlsan_edge import train
    from mlsan_edge.distill import DistillConfig, distill, kd_loss
    from mlsan_edge.model.mlsan import MLSAN
    from test_stages import make_model, make_table, tiny


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Every test here runs torch on one thread (conftest.torch_one_thread)."""


def kl_to_teacher(teacher, student, table, stats) -> float:
    order = stream_order(table)
    pt = train.predict(teacher, table, order, stats)["probs"]
    ps = train.predict(student, table, order, stats)["probs"]
    return float(np.mean(np.sum(pt * (np.log(pt + 1e-9) - np.log(ps + 1e-9)), axis=1)))


def test_kd_loss_is_zero_for_identical_logits():
    z = torch.randn(5, 7)
    assert kd_loss(z, z, 3.0).abs().item() < 1e-6 and kd_loss(z, -z, 3.0).item() > 0


def test_short_distillation_reduces_kl_to_teacher():
    table = make_table(n_groups=8, length=10, seed=5)
    stats = GlobalStats.fit(table)
    teacher = make_model(tiny("teacher"), table, seed=1)
    with torch.no_grad():  # a confident teacher: soft targets far from uniform
        teacher.head[-1].weight.mul_(20)
    cfg = train.TrainConfig(epochs=6, lr=1e-2, batch_streams=4, seed=0)
    torch.manual_seed(cfg.seed)
    untrained = MLSAN(tiny("student"))
    untrained.set_normalisation({m: (teacher.__getattr__(f"{m}_mean"), teacher.__getattr__(f"{m}_std"))
                                 for m in ("text", "audio", "visual")})
    student, hist = distill(teacher, table, stats, student_cfg=tiny("student"), cfg=cfg,
                            kd=DistillConfig(temperature=2.0, alpha=0.1), progress=False)
    before, after = kl_to_teacher(teacher, untrained.eval(), table, stats), kl_to_teacher(teacher, student, table, stats)
    assert after < 0.7 * before, (before, after)
    assert len(hist["kd"]) == cfg.epochs and hist["kd"][-1] < hist["kd"][0]
    assert student.n_params() < teacher.n_params()
