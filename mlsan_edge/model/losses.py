"""Training objectives: classification with class re-weighting, and stage 3's speaker-consistency
regulariser on the latent space."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(labels: torch.Tensor, n_classes: int, power: float) -> torch.Tensor:
    """(C,) weights ∝ (1 / frequency)^power, mean 1. power 0 = plain CE, 1 = balanced."""
    counts = torch.bincount(labels[labels >= 0], minlength=n_classes).float().clamp(min=1)
    w = (counts.sum() / counts) ** power
    return w / w.mean()


def speaker_consistency_loss(latent: torch.Tensor, labels: torch.Tensor, speakers: torch.Tensor,
                             temperature: float = 0.2) -> torch.Tensor:
    """Stage 3: supervised-contrastive pull of each latent toward same-emotion latents of *other*
    speakers (and away from other emotions), so a speaker's idiosyncrasies do not define where an
    emotion lives in the latent space and each speaker's features stay consistent with the shared
    class prototypes.

    Args:
        latent: (N, H) utterance latents; labels: (N,) class ids; speakers: (N,) int speaker ids.
    """
    if latent.shape[0] < 4:
        return latent.sum() * 0.0  # keeps the graph, so .backward() on it alone is safe
    z = F.normalize(latent, dim=-1)
    sim = z @ z.t() / temperature  # (N, N)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = (labels[:, None] == labels[None, :]) & (speakers[:, None] != speakers[None, :]) & ~eye
    has_pos = pos.any(1)
    if not has_pos.any():
        return latent.sum() * 0.0
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, -1e9), dim=1, keepdim=True)
    per_anchor = -(log_prob * pos).sum(1) / pos.sum(1).clamp(min=1)
    return per_anchor[has_pos].mean()
