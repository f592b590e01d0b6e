"""A teacher made of several ML-SAN networks trained with different seeds.

Leave-actors-out accuracy on RAVDESS moves by several points between training seeds (240 test
clips per fold; see README); averaging the members' probabilities removes much of that variance.
Only the teacher is an ensemble: the device runs one distilled student, trained on the
ensemble's averaged soft targets.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mlsan_edge.model.mlsan import MLSAN


class MLSANEnsemble(nn.Module):
    """Same inputs and outputs as `MLSAN`: `logits` are the log of the members' mean
    probabilities; `trust` and `latent` are member means; the rest come from member 0."""

    def __init__(self, members: list[MLSAN]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = [m(batch) for m in self.members]
        probs = torch.stack([torch.softmax(o["logits"], -1) for o in outs]).mean(0)
        merged = dict(outs[0])
        merged["logits"] = torch.log(probs.clamp(min=1e-8))
        for k in ("trust", "latent"):
            merged[k] = torch.stack([o[k] for o in outs]).mean(0)
        return merged

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
