"""Knowledge distillation: train the small student from a trained teacher. `mlsan-edge distill`.

The student (`train.CONFIGS["student"]`: hidden 64, one context layer, no recurrence, bounded
window) learns from the teacher's temperature-softened probabilities (Hinton et al. 2015,
arXiv 1503.02531) and the hard labels:

    loss = alpha * CE_hard + (1 - alpha) * T² * KL(softmax(z_t / T) || softmax(z_s / T)) [+ stage-3 loss]

on exactly the stream replay of `train.fit` (same batches, modality dropout, profile inputs and
MELD class weights, via `train.epoch_batches`); the teacher sees the same dropped-out inputs.
The T² factor keeps the soft-target gradients on the scale of the hard ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 3.0  # softening of both distributions (2-4 works for 7 classes)
    alpha: float = 0.3  # weight of the hard-label loss; 1 - alpha on the soft targets


def kd_loss(student_logits, teacher_logits, temperature: float):
    """T² · KL(teacher_T || student_T), mean over rows. Logits (N, C)."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def distill(teacher, train_table, stats, student_cfg=None, cfg=None, kd: DistillConfig = DistillConfig(),
            progress: bool = True):
    """Train a student on `train_table` from `teacher` (an eval-mode MLSAN).

    Args:
        stats: the teacher's global statistics (the student normalises with the same ones).
        student_cfg: a ModelConfig (default `train.CONFIGS["student"]` with the teacher's dims).
        cfg: a `train.TrainConfig` (default: the same schedule as `mlsan-edge train`).

    Returns:
        (student, history) with history {"loss": [...], "kd": [...], "train_seconds": s}.
    """
    import torch
    from tqdm import tqdm

    from mlsan_edge.config import MODALITIES
    from mlsan_edge.data.table import acted_rows
    from mlsan_edge.model.losses import class_weights
    from mlsan_edge.model.mlsan import MLSAN
    from mlsan_edge.train import CONFIGS, TrainConfig, batch_losses, epoch_batches, optimizer_step, to_torch

    cfg = cfg or TrainConfig()
    tc = teacher.cfg
    student_cfg = student_cfg or replace(CONFIGS["student"], audio_dim=tc.audio_dim, visual_dim=tc.visual_dim,
                                         text_dim=tc.text_dim, voice_dim=tc.voice_dim, n_classes=tc.n_classes,
                                         stage1_max_gain=tc.stage1_max_gain)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    student = MLSAN(student_cfg)
    student.set_normalisation({m: (torch.tensor(stats.mean[m], dtype=torch.float32),
                                   torch.tensor(np.sqrt(stats.var[m]), dtype=torch.float32)) for m in MODALITIES})
    teacher.eval()
    is_meld = ~acted_rows(train_table.speaker)
    w_meld = class_weights(torch.from_numpy(train_table.label[is_meld]), student_cfg.n_classes, cfg.meld_weight_power)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_steps = cfg.epochs * len(epoch_batches(train_table, stats, cfg, 0, np.random.default_rng(0)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=n_steps, pct_start=0.1)
    speaker_ids = {s: i for i, s in enumerate(np.unique(train_table.speaker))}
    history, t0, step = {"loss": [], "kd": []}, time.time(), 0
    bar = tqdm(range(cfg.epochs), desc=f"distill {student_cfg.name}", disable=not progress)
    for epoch in bar:
        student.train()
        losses, kds = [], []
        for batch in epoch_batches(train_table, stats, cfg, epoch, rng):
            if step >= n_steps:
                break
            tb = to_torch({k: v for k, v in batch.items() if k != "index"})
            with torch.no_grad():
                t_logits = teacher(tb)["logits"]
            out = student(tb)
            hard, s3 = batch_losses(out, tb, batch, train_table.speaker, is_meld, w_meld, speaker_ids, student_cfg, cfg)
            valid = tb["valid"]
            soft = kd_loss(out["logits"][valid], t_logits[valid], kd.temperature)
            loss = kd.alpha * hard + (1 - kd.alpha) * soft + s3
            optimizer_step(loss, student, opt, sched)
            step += 1
            losses.append(loss.item())
            kds.append(soft.item())
        history["loss"].append(float(np.mean(losses)))
        history["kd"].append(float(np.mean(kds)))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", kd=f"{history['kd'][-1]:.3f}")
    history["train_seconds"] = round(time.time() - t0, 1)
    student.eval()
    return student, history


def run_distill(teacher_dir: Path, data: Path, out: Path, epochs: int | None = None, seed: int = 0,
                actors: list[int] | None = None, kd: DistillConfig = DistillConfig(), use_meld: bool = True) -> dict:
    """`mlsan-edge distill`: the teacher's training corpora (its RAVDESS actors unless `actors`
    is given, so held-out actors stay held out), distil, save a checkpoint beside the teacher's format."""
    from mlsan_edge.train import TrainConfig, concat_tables, load_checkpoint, save_checkpoint
    from mlsan_edge.training_job import data_meta, encoder_paths, load_training_tables

    teacher, stats, tdoc = load_checkpoint(teacher_dir)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data} (expected ravdess/ and meld/ as in ../shared/data)")
    if actors is None:
        actors = tdoc.get("data", {}).get("ravdess_actors") or None
    text_enc = tdoc.get("encoders", {}).get("text_encoder")  # relative: the bundle's; absolute: a fine-tuned one
    bundle = tdoc.get("encoder_bundle", "default")  # the student sees the teacher's front-ends
    enc = encoder_paths(text_enc if text_enc and Path(text_enc).is_absolute() and Path(text_enc).exists() else None,
                        bundle)
    recipe = tdoc.get("data", {}).get("recipe", {})  # the teacher's corpora and augmentation
    train = concat_tables(load_training_tables(data, enc, actors, use_meld=use_meld,
                                               use_emospeech=recipe.get("emospeech", False),
                                               augment_copies=recipe.get("augment_copies", 0)))
    tc = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    student, hist = distill(teacher, train, stats, cfg=tc, kd=kd)
    meta = {"train": asdict(tc), "distill": {**asdict(kd), "teacher": str(teacher_dir),
                                             "teacher_n_params": teacher.n_params()},
            "history": hist, "n_params": student.n_params(), **data_meta(train, enc, bundle)}
    save_checkpoint(out, student, stats, meta)
    from mlsan_edge.training_job import write_checkpoint_confidence

    write_checkpoint_confidence(out, student, stats, train, data, enc)
    log.info("wrote %s (%d parameters, teacher %d)", out, student.n_params(), teacher.n_params())
    return {"checkpoint": str(out), "n_params": student.n_params(), "teacher_n_params": teacher.n_params(),
            "train_seconds": hist["train_seconds"], "final_loss": round(hist["loss"][-1], 4),
            "final_kd": round(hist["kd"][-1], 4)}


__all__ = ["DistillConfig", "distill", "kd_loss", "run_distill"]
