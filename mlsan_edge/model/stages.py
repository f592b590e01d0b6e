"""ML-SAN split into the per-utterance graphs the device runs (torch; export only).

`MLSAN.forward` processes whole padded streams (B, T). The device sees one utterance at a time,
times each stage and caches what depends only on the speaker, so the forward is cut into four
graphs that reuse the trained model's submodules (no new weights) and compute exactly what
`MLSAN.forward` computes for that utterance:

    speaker  profile + voice centroid     -> speaker (B,S), FiLM γ/β and profile shift/scale
             (cached per speaker on the device; recomputed only when the profile changes)
    stage1   raw audio/visual + speaker's  -> calibrated audio (B,A), visual (B,V)
    stage2   text + calibrated + masks + s -> fused (B,H), trust (B,3)
    stage3   fused + same-speaker flag + the previous W context inputs -> probs (B,C), latent
             (B,H), context_in (B,H) (the caller pushes it into its history ring)

B is the batch (dynamic; 1 on the device). W = context_layers * context_window: with L
attention layers each looking `window` utterances back, the last layer's output at t depends on
the context inputs at t-W..t and nothing older, so recomputing that window reproduces the
training result exactly (the deeper layers' outputs at the oldest rows are wrong but unused).

Every graph has the same inputs and outputs whatever the ablation switches say: a disabled
stage passes values through with identity parameters (γ=1, β=0, shift=0, scale=1), so the
runtime needs no branches.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mlsan_edge.config import MODALITIES
from mlsan_edge.model.mlsan import CALIBRATED, MLSAN, stage1_scale

GRAPHS: tuple[str, ...] = ("speaker", "stage1", "stage2", "stage3")


def history_len(model: MLSAN) -> int:
    """W: context inputs of earlier utterances that stage 3 needs for an exact result."""
    return model.cfg.context_layers * model.cfg.context_window


def graph_io(model: MLSAN) -> dict[str, tuple[list[dict], list[dict]]]:
    """Input and output tensor specs (name, shape with "batch" dynamic, dtype) of every graph,
    in the positional order of the wrappers' forward()."""
    cfg = model.cfg
    A, V, T, S, H, W = cfg.audio_dim, cfg.visual_dim, cfg.text_dim, cfg.speaker_dim, cfg.hidden, history_len(model)

    def t(name, *dims):
        return {"name": name, "shape": ["batch", *dims], "dtype": "float32"}

    film = [t("gamma_audio", A), t("beta_audio", A), t("audio_shift", A), t("audio_scale", A),
            t("gamma_visual", V), t("beta_visual", V), t("visual_shift", V), t("visual_scale", V)]
    return {
        "speaker": ([t("voice", cfg.voice_dim), t("voice_mask", 1), t("profile_audio_mean", A),
                     t("profile_audio_var", A), t("profile_visual_mean", V), t("profile_visual_var", V),
                     t("profile_text_mean", T), t("profile_conf", len(MODALITIES))],
                    [t("speaker", S), *film]),
        "stage1": ([t("audio", A), t("visual", V), t("mask_audio", 1), t("mask_visual", 1), *film],
                   [t("audio_cal", A), t("visual_cal", V)]),
        "stage2": ([t("text", T), t("audio_cal", A), t("visual_cal", V), t("modality_mask", len(MODALITIES)),
                    t("speaker", S)],
                   [t("fused", H), t("trust", len(MODALITIES))]),
        "stage3": ([t("fused", H), t("same_speaker_prev", 1), t("history", W, H), t("history_mask", W)],
                   [t("probs", cfg.n_classes), t("latent", H), t("context_in", H)]),
    }


class SpeakerGraph(nn.Module):
    """Profile + voice -> speaker representation, FiLM parameters and the profile standardisation."""

    GRAPH = "speaker"

    def __init__(self, model: MLSAN):
        super().__init__()
        self.m = model

    def forward(self, voice, voice_mask, profile_audio_mean, profile_audio_var, profile_visual_mean,
                profile_visual_var, profile_text_mean, profile_conf):
        """voice (B,D_s) voice centroid; voice_mask (B,1) 1/0; profile_* (B,D) raw-space shrunk
        profile statistics; profile_conf (B,3) -> speaker (B,S), then per calibrated modality
        gamma, beta, shift, scale (B,D)."""
        m, cfg = self.m, self.m.cfg
        prof = {"audio": (profile_audio_mean, profile_audio_var), "visual": (profile_visual_mean, profile_visual_var)}
        norm_stats, shift, scale = [], {}, {}
        for k in CALIBRATED:  # same arithmetic as MLSAN.forward, in the same order
            mean, std = getattr(m, f"{k}_mean"), getattr(m, f"{k}_std")
            mu = (prof[k][0] - mean) / std
            log_sd = 0.5 * torch.log(prof[k][1].clamp(min=1e-8)) - torch.log(std)
            norm_stats += [mu, log_sd]
            if cfg.use_speaker:
                shift[k], scale[k] = mu, stage1_scale(log_sd, cfg.stage1_max_gain)
            else:
                shift[k], scale[k] = torch.zeros_like(mu), torch.ones_like(mu)
        if cfg.use_speaker:
            # SpeakerEncoder takes (B,T) masks; here T is absent, so build its input directly
            parts = [voice * voice_mask, *norm_stats, profile_text_mean, profile_conf, voice_mask]
            s = m.speaker.net(torch.cat(parts, dim=-1))
        else:
            s = torch.zeros(voice.shape[0], cfg.speaker_dim, dtype=voice.dtype, device=voice.device)
        out = [s]
        for k in CALIBRATED:
            if cfg.use_stage1:
                g, beta = m.calib[k].film(s).chunk(2, dim=-1)  # FiLMCalibration's γ, β
                gamma = 1.0 + torch.tanh(g)
            else:
                gamma, beta = torch.ones_like(shift[k]), torch.zeros_like(shift[k])
            out += [gamma, beta, shift[k], scale[k]]
        return tuple(out)


class Stage1Graph(nn.Module):
    """Input-level calibration: global standardisation, then the speaker's FiLM."""

    GRAPH = "stage1"

    def __init__(self, model: MLSAN):
        super().__init__()
        self.m = model

    def forward(self, audio, visual, mask_audio, mask_visual, gamma_audio, beta_audio, audio_shift, audio_scale,
                gamma_visual, beta_visual, visual_shift, visual_scale):
        """audio (B,A), visual (B,V) raw (zeros when absent); masks (B,1) 1/0 -> calibrated
        audio (B,A), visual (B,V), zero where absent."""
        m = self.m
        x = {"audio": audio, "visual": visual}
        mask = {"audio": mask_audio, "visual": mask_visual}
        film = {"audio": (gamma_audio, beta_audio, audio_shift, audio_scale),
                "visual": (gamma_visual, beta_visual, visual_shift, visual_scale)}
        out = []
        for k in CALIBRATED:
            z = (x[k] - getattr(m, f"{k}_mean")) / getattr(m, f"{k}_std") * mask[k]
            if m.cfg.use_stage1:
                gamma, beta, shift, scale = film[k]
                z = (gamma * ((z - shift) * scale) + beta) * mask[k]
            out.append(z)
        return tuple(out)


class Stage2Graph(nn.Module):
    """Modality encoders and speaker-conditioned gating -> fused representation and trust."""

    GRAPH = "stage2"

    def __init__(self, model: MLSAN):
        super().__init__()
        self.m = model

    def forward(self, text, audio_cal, visual_cal, modality_mask, speaker):
        """text (B,D_t) raw; audio_cal/visual_cal from stage 1; modality_mask (B,3) 1/0 in
        MODALITIES order (text, audio, visual); speaker (B,S) -> fused (B,H), trust (B,3)."""
        m = self.m
        z = {"text": (text - m.text_mean) / m.text_std * modality_mask[:, 0:1], "audio": audio_cal, "visual": visual_cal}
        h = [m.encode[k](z[k].clamp(-10, 10)) for k in m.dims]
        masks = modality_mask > 0.5
        if m.cfg.use_stage2:
            trust = m.gate(h, speaker, masks)
        else:
            mf = masks.float()
            trust = mf / mf.sum(-1, keepdim=True).clamp(min=1.0)
        fused = sum(trust[..., i:i + 1] * hm for i, hm in enumerate(h))  # (B,H)
        return fused, trust


class Stage3Graph(nn.Module):
    """Causal context over the previous W context inputs and the current one, then the head."""

    GRAPH = "stage3"

    def __init__(self, model: MLSAN):
        super().__init__()
        self.m = model
        # CausalContext.bias's static part for T = W+1 rows, as constants (a traced torch.eye
        # becomes a bool EyeLike, which onnxruntime's CPU provider does not implement)
        T = history_len(model) + 1
        i = torch.arange(T)
        rel = i[:, None] - i[None, :]
        self.register_buffer("allowed", (rel >= 0) & (rel <= model.cfg.context_window), persistent=False)
        self.register_buffer("eye", torch.eye(T, dtype=torch.bool), persistent=False)

    def forward(self, fused, same_speaker_prev, history, history_mask):
        """fused (B,H); same_speaker_prev (B,1) 1/0; history (B,W,H) context inputs of the
        previous W utterances of this stream, oldest first; history_mask (B,W) 1/0 (0 = no such
        utterance) -> probs (B,C), latent (B,H), context_in (B,H)."""
        ctx = self.m.context
        flag = ctx.speaker_flag.weight  # (2,H); a select, not a lookup: exact and TensorRT friendly
        context_in = fused + torch.where(same_speaker_prev > 0.5, flag[1], flag[0])  # (B,H)
        x = torch.cat([history, context_in.unsqueeze(1)], dim=1)  # (B,W+1,H), current utterance last
        valid = torch.cat([history_mask > 0.5, torch.ones_like(same_speaker_prev, dtype=torch.bool)], dim=1)
        allowed = self.allowed[None] & (valid[:, None, :] | self.eye[None])  # as CausalContext.bias
        bias = torch.where(allowed, 0.0, -1e4)[:, None].to(torch.float32)  # (B,1,W+1,W+1)
        n = len(ctx.blocks)
        for i, block in enumerate(ctx.blocks):
            x = _block(block, x, bias, last_only=i == n - 1)
        latent = x[:, -1]  # (B,H)
        probs = torch.softmax(self.m.head(latent), dim=-1)
        return probs, latent, context_in


def _block(block, x: torch.Tensor, bias: torch.Tensor, last_only: bool) -> torch.Tensor:
    """`ContextBlock.forward` (eval mode); with `last_only` the queries (and the output) are the
    last row only — all the final layer has to produce."""
    H = block.qkv.in_features  # static sizes, so the traced graph has no shape arithmetic
    hd = H // block.heads
    qkv = block.qkv(block.ln1(x)).reshape(x.shape[0], x.shape[1], 3, block.heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B,h,T,hd)
    if last_only:
        q, bias, x = q[:, :, -1:], bias[:, :, -1:], x[:, -1:]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hd) + bias  # (B,h,Tq,T)
    y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], H)
    x = x + block.proj(y)
    return x + block.mlp(block.ln2(x))


WRAPPERS = {"speaker": SpeakerGraph, "stage1": Stage1Graph, "stage2": Stage2Graph, "stage3": Stage3Graph}


def stage_modules(model: MLSAN) -> dict[str, nn.Module]:
    """The four wrappers (eval mode) sharing `model`'s weights."""
    model.eval()
    return {g: WRAPPERS[g](model).eval() for g in GRAPHS}


def random_inputs(model: MLSAN, batch: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Plausible random inputs for every graph (variances positive, masks 0/1, mixed presence)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (inputs, _) in graph_io(model).items():
        feeds = {}
        for spec in inputs:
            shape = [batch, *spec["shape"][1:]]
            n = spec["name"]
            if "mask" in n or n == "same_speaker_prev":
                x = (torch.rand(shape, generator=g) > 0.3).float()
            elif n.endswith("_var") or n.endswith("scale") or n.startswith("gamma"):
                x = torch.rand(shape, generator=g) + 0.5
            elif n == "profile_conf":
                x = torch.rand(shape, generator=g)
            else:
                x = torch.randn(shape, generator=g)
            feeds[n] = x
        out[name] = feeds
    return out


def stage_macs(model: MLSAN) -> dict[str, int]:
    """Multiply-accumulates per utterance of each graph, counted over its matrix products
    (Linear layers and attention); elementwise ops, norms and softmax are not counted. An
    ensemble costs the sum of its members."""
    if hasattr(model, "members"):
        per = [stage_macs(m) for m in model.members]
        return {k: sum(p[k] for p in per) for k in per[0]}
    cfg = model.cfg
    H, W = cfg.hidden, history_len(model)

    def lin(mod):
        return sum(l.in_features * l.out_features for l in mod.modules() if isinstance(l, nn.Linear))

    macs = {"speaker": 0, "stage1": 0, "stage2": 0, "stage3": 0}
    if cfg.use_speaker:
        macs["speaker"] += lin(model.speaker)
    if cfg.use_stage1:
        macs["speaker"] += lin(model.calib)
    macs["stage2"] = lin(model.encode) + (lin(model.gate) if cfg.use_stage2 else 0)
    T = W + 1
    for i, block in enumerate(model.context.blocks):
        rows = 1 if i == len(model.context.blocks) - 1 else T  # the last layer only computes the last row
        qkv = T * H * 3 * H  # keys and values of every row
        attn = 2 * rows * T * H  # q·k and att·v
        rest = rows * (H * H + 2 * (H * 2 * H))  # proj + MLP
        macs["stage3"] += qkv + attn + rest
    macs["stage3"] += lin(model.head)
    return macs


__all__ = ["GRAPHS", "graph_io", "history_len", "stage_modules", "random_inputs", "stage_macs",
           "SpeakerGraph", "Stage1Graph", "Stage2Graph", "Stage3Graph"]
