"""Replay utterance tables as the device sees them: in stream order, with online profiles.

For every utterance this computes the speaker-profile inputs the model gets at that moment,
using `mlsan_edge.profile.SpeakerProfile` — the same update rule the device's speaker cache
runs — from that speaker's *earlier* utterances only (no labels, no look-ahead). Then it packs
streams into padded (B, T) arrays for the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlsan_edge.config import MODALITIES
from mlsan_edge.data.table import UtteranceTable
from mlsan_edge.profile import PRIOR_COUNT, SpeakerProfile

CALIBRATED = ("audio", "visual")


@dataclass(frozen=True)
class GlobalStats:
    """Raw-space mean/var of each modality over a training table (the profile's prior)."""

    mean: dict
    var: dict

    @classmethod
    def fit(cls, t: UtteranceTable) -> "GlobalStats":
        mean, var = {}, {}
        for m in MODALITIES:
            x, mask = getattr(t, m), getattr(t, f"mask_{m}")
            x = x[mask] if mask.any() else np.zeros((1, x.shape[1]), np.float32)
            mean[m] = x.mean(0).astype(np.float64)
            var[m] = np.maximum(x.var(0), 1e-6).astype(np.float64)
        return cls(mean, var)

    def to_dict(self) -> dict:
        return {"mean": {m: v.tolist() for m, v in self.mean.items()},
                "var": {m: v.tolist() for m, v in self.var.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "GlobalStats":
        return cls({m: np.asarray(v) for m, v in d["mean"].items()}, {m: np.asarray(v) for m, v in d["var"].items()})


def stream_order(t: UtteranceTable, shuffle_groups: set[int] | None = None, seed: int = 0) -> np.ndarray:
    """Row indices in the order the device would see them: groups in id order, and within a
    group by position — or, for groups in `shuffle_groups`, in a seeded random order."""
    rng = np.random.default_rng(seed)
    order = []
    for g in np.unique(t.group):
        idx = np.where(t.group == g)[0]
        idx = idx[np.argsort(t.position[idx], kind="stable")]
        if shuffle_groups is not None and g in shuffle_groups:
            idx = rng.permutation(idx)
        order.append(idx)
    return np.concatenate(order)


def profile_inputs(t: UtteranceTable, order: np.ndarray, stats: GlobalStats,
                   prior: float = PRIOR_COUNT) -> dict[str, np.ndarray]:
    """Per-utterance profile inputs, replaying `order` through one SpeakerProfile per speaker.

    Returns arrays aligned with the table rows: profile_{audio,visual}_{mean,var} (N, D),
    profile_text_mean (N, D_t), profile_conf (N, 3), voice (N, D_s) =
    `speaker_voice`, mask_voice (N,). Everything comes from the speaker's earlier utterances, so
    the device computes a speaker's FiLM/gate parameters once after each utterance and reuses them
    for the next one.
    """
    n = len(t)
    dims = {m: getattr(t, m).shape[1] for m in MODALITIES}
    out = {f"profile_{m}_{k}": np.zeros((n, dims[m]), np.float32) for m in CALIBRATED for k in ("mean", "var")}
    out["profile_text_mean"] = np.zeros((n, dims["text"]), np.float32)
    out["profile_conf"] = np.zeros((n, len(MODALITIES)), np.float32)
    out["voice"] = np.zeros_like(t.voice)
    out["mask_voice"] = np.zeros(n, bool)
    profiles: dict[str, SpeakerProfile] = {}
    for i in order:
        p = profiles.setdefault(t.speaker[i], SpeakerProfile(dims=dims, voice_dim=t.voice.shape[1]))
        row = profile_row(p, stats, prior)
        for k, v in row.items():
            out[k][i] = v
        v = speaker_voice(p, t.voice[i] if t.mask_voice[i] else None)
        if v is not None:
            out["voice"][i], out["mask_voice"][i] = v, True
        p.update({m: getattr(t, m)[i] if getattr(t, f"mask_{m}")[i] else None for m in MODALITIES},
                 voice=t.voice[i] if t.mask_voice[i] else None)
    return out


def speaker_voice(p: SpeakerProfile, current: np.ndarray | None) -> np.ndarray | None:
    """The voice input of the speaker network for the speaker's next utterance: the centroid of
    their earlier voice embeddings, or, for a first utterance, its own embedding `current` (None
    when there is neither). Training and device share this rule."""
    c = p.voice_centroid()
    if c is not None:
        return c
    return None if current is None else np.asarray(current, np.float32)


def profile_row(p: SpeakerProfile, stats: GlobalStats, prior: float = PRIOR_COUNT) -> dict[str, np.ndarray]:
    """The model's profile inputs for the next utterance of the speaker `p` (device and training)."""
    row = {}
    conf = []
    for m in MODALITIES:
        mu, var, w = p.stats[m].calibration(stats.mean[m], stats.var[m], prior)
        conf.append(w)
        if m in CALIBRATED:
            row[f"profile_{m}_mean"], row[f"profile_{m}_var"] = mu, var
        else:
            row["profile_text_mean"] = mu
    row["profile_conf"] = np.array(conf, np.float32)
    return row


def pack(t: UtteranceTable, order: np.ndarray, prof: dict[str, np.ndarray],
         max_len: int | None = None) -> dict[str, np.ndarray]:
    """Pack streams (consecutive runs of one group in `order`) into padded (B, T, ...) arrays.

    Streams longer than `max_len` are cut into chunks (the profile inputs already carry the
    history, the context only ever looks `context_window` back). `index` (B, T) maps back to
    table rows (-1 = padding).
    """
    groups = t.group[order]
    cuts = np.flatnonzero(np.diff(groups)) + 1
    streams = np.split(order, cuts)
    if max_len:
        streams = [s[i:i + max_len] for s in streams for i in range(0, len(s), max_len)]
    B, T = len(streams), max(len(s) for s in streams)
    index = np.full((B, T), -1, np.int64)
    for b, s in enumerate(streams):
        index[b, :len(s)] = s
    valid = index >= 0
    safe = np.where(valid, index, 0)
    batch = {"index": index, "valid": valid, "label": np.where(valid, t.label[safe], -1)}
    for m in MODALITIES:
        batch[m] = getattr(t, m)[safe] * valid[..., None]
        batch[f"mask_{m}"] = getattr(t, f"mask_{m}")[safe] & valid
    for k, v in prof.items():
        batch[k] = v[safe] * (valid[..., None] if v.ndim == 2 else valid)
    spk = t.speaker[safe]
    same = np.zeros((B, T), np.int64)
    same[:, 1:] = (spk[:, 1:] == spk[:, :-1]) & valid[:, 1:]
    batch["same_speaker_prev"] = same
    return batch
