"""Replay utterance tables as the device sees them: in stream order, with online profiles.

For every utterance this computes the speaker-profile inputs the model gets at that moment,
using `mlsan_edge.profile.SpeakerProfile` — the same update rule the device's speaker cache
runs — from that speaker's *earlier* utterances only (no labels, no look-ahead). Then it packs
streams into padded (B, T) arrays for the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlsan_edge.config import EMOTIONS, MODALITIES
from mlsan_edge.data.table import UtteranceTable
from mlsan_edge.profile import CALIBRATED, PRIOR_COUNT, GlobalStats, SpeakerProfile, profile_row, speaker_voice

if TYPE_CHECKING:
    from mlsan_edge.backends.stages import Stages


def stream_order(t: UtteranceTable, shuffle_groups: set[int] | None = None, seed: int = 0,
                 neutral_first: bool = False) -> np.ndarray:
    """Row indices in the order the device would see them: groups in id order, and within a
    group by position — or, for groups in `shuffle_groups`, in a seeded random order.

    `neutral_first` (training): within each shuffled group, the speaker's neutral utterances
    come first, as a device mostly hears a person's everyday voice before anything else; the
    running profile is then anchored on how the speaker sounds when neutral (issue #9)."""
    rng = np.random.default_rng(seed)
    neutral = EMOTIONS.index("neutral")
    order = []
    for g in np.unique(t.group):
        idx = np.where(t.group == g)[0]
        idx = idx[np.argsort(t.position[idx], kind="stable")]
        if shuffle_groups is not None and g in shuffle_groups:
            idx = rng.permutation(idx)
            if neutral_first:
                idx = np.concatenate([idx[t.label[idx] == neutral], idx[t.label[idx] != neutral]])
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


def replay_table(stages: "Stages", table, order: np.ndarray) -> dict[str, np.ndarray]:
    """Run an `UtteranceTable` through `stages` one utterance at a time in `order`, as the device
    does: one online profile per speaker (`mlsan_edge.profile`), one context history per stream
    (group), reset when the stream changes. Returns probs (N, C) and trust (N, 3) aligned with
    the table rows, like `train.predict`."""
    dims = {m: getattr(table, m).shape[1] for m in MODALITIES}
    probs = np.zeros((len(table), len(stages.classes)), np.float32)
    trust = np.zeros((len(table), len(MODALITIES)), np.float32)
    history, profiles, prev_group, prev_speaker = stages.new_history(), {}, None, None
    for i in order:
        if table.group[i] != prev_group:
            history.reset()
            prev_group, prev_speaker = table.group[i], None
        p = profiles.setdefault(table.speaker[i], SpeakerProfile(dims=dims, voice_dim=table.voice.shape[1]))
        has = {m: bool(getattr(table, f"mask_{m}")[i]) for m in MODALITIES}
        voice = table.voice[i] if table.mask_voice[i] else None
        params = stages.speaker_params(profile_row(p, stages.global_stats), speaker_voice(p, voice))
        p.update({m: getattr(table, m)[i] if has[m] else None for m in MODALITIES}, voice=voice)
        cal = stages.stage1(table.audio[i] if has["audio"] else None, table.visual[i] if has["visual"] else None, params)
        fused, tr = stages.stage2(table.text[i] if has["text"] else None, cal, params)
        probs[i], _ = stages.stage3(fused, table.speaker[i] == prev_speaker, history)
        trust[i] = [tr[m] for m in MODALITIES]
        prev_speaker = table.speaker[i]
    return {"probs": probs, "trust": trust}
