"""ML-SAN: Multi-Level Speaker-Adaptive Network (arXiv 2604.25383), utterance-level, causal.

Read top to bottom: speaker representation -> stage 1 (FiLM input calibration) -> modality
encoders -> stage 2 (speaker-conditioned gating) -> causal context -> latent -> classifier.
Stage 3 (output-level regularisation) is a loss on the latent (`losses.py`) plus the speaker's
latent prototype that the device keeps in its profile.

Shapes: B dialogues (or speaker streams) of T utterances; D_a audio, D_v visual, D_t text,
D_s voice-embedding dims. Every input is *raw* (as the feature front-ends produce it); the
global standardisation is stored in the network's buffers so the device never re-implements it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mlsan_edge.config import ModelConfig

CALIBRATED = ("audio", "visual")  # modalities stage 1 calibrates; text is already speaker-neutral


def stage1_scale(log_sd: torch.Tensor, max_gain: float | None) -> torch.Tensor:
    """Stage 1's per-speaker scale, 1 / (speaker std / corpus std) = exp(-log_sd), at most
    `max_gain` (None: unbounded). Since `profile.ModalityStats.calibration` floors a speaker's
    variance at the corpus's, log_sd >= 0 on every profile the device or training builds and a
    bound of 1 never binds there; it keeps the network itself from amplifying if handed a narrower
    profile (a bundle's contract, not only our own profiles)."""
    scale = torch.exp(-log_sd)
    return scale if max_gain is None else scale.clamp(max=float(max_gain))


def mlp(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.GELU(), nn.Dropout(dropout))


class SpeakerEncoder(nn.Module):
    """Speaker representation from what a device observes: the voice embedding and the online
    profile's shrunk statistics of each calibrated modality, plus the text mean and confidences."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_in = cfg.voice_dim + 2 * cfg.audio_dim + 2 * cfg.visual_dim + cfg.text_dim + 4
        self.net = nn.Sequential(nn.Linear(d_in, cfg.speaker_dim), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.speaker_dim, cfg.speaker_dim))

    def forward(self, voice, voice_mask, norm_stats, text_mu, conf):
        """voice (B,T,D_s); voice_mask (B,T); norm_stats: list of (B,T,D) standardised profile
        means/log-stds; text_mu (B,T,D_t); conf (B,T,3) -> (B,T,speaker_dim)."""
        parts = [voice * voice_mask.unsqueeze(-1), *norm_stats, text_mu, conf, voice_mask.unsqueeze(-1)]
        return self.net(torch.cat(parts, dim=-1))


class FiLMCalibration(nn.Module):
    """Stage 1: x_cal = γ(s) ⊙ (x − μ_s)/σ_s + β(s), γ = 1 + tanh(·) (near identity at start).

    (x − μ_s)/σ_s is itself the analytic part of the FiLM: the speaker's profile statistics,
    shrunk toward the global ones; γ and β learn what plain standardisation misses.
    """

    def __init__(self, d: int, speaker_dim: int):
        super().__init__()
        self.film = nn.Linear(speaker_dim, 2 * d)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x_z: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, b = self.film(s).chunk(2, dim=-1)
        gamma = 1.0 + torch.tanh(g)
        return gamma * x_z + b, gamma, b


class ModalityGate(nn.Module):
    """Stage 2: trust weights over the present modalities, conditioned on the speaker."""

    def __init__(self, hidden: int, speaker_dim: int, n_modalities: int):
        super().__init__()
        self.score = nn.ModuleList(nn.Sequential(nn.Linear(hidden + speaker_dim, hidden // 2), nn.GELU(),
                                                 nn.Linear(hidden // 2, 1)) for _ in range(n_modalities))

    def forward(self, h: list[torch.Tensor], s: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """h: list of (B,T,H); s (B,T,S); masks (B,T,M) bool -> weights (B,T,M), 0 where absent."""
        logits = torch.cat([f(torch.cat([hm, s], -1)) for f, hm in zip(self.score, h)], dim=-1)
        logits = logits.masked_fill(~masks, -1e4)
        w = torch.softmax(logits, dim=-1) * masks
        return w / w.sum(-1, keepdim=True).clamp(min=1e-6)


class ContextBlock(nn.Module):
    """Pre-norm self-attention + MLP block with an explicit additive mask (no fused kernels, so
    training, eval and the ONNX export compute the same thing)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B,T,H); bias (B,1,T,T) additive attention bias (0 allowed, -1e4 masked)."""
        B, T, H = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(H // self.heads) + bias  # (B, heads, T, T)
        y = (self.drop(torch.softmax(att, dim=-1)) @ v).transpose(1, 2).reshape(B, T, H)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.ln2(x)))


class CausalContext(nn.Module):
    """Attention over the utterance itself and at most `window` earlier ones of the same dialogue."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.window = cfg.context_window
        self.speaker_flag = nn.Embedding(2, cfg.hidden)  # same speaker as the previous utterance or not
        self.blocks = nn.ModuleList(ContextBlock(cfg.hidden, cfg.context_heads, cfg.dropout)
                                    for _ in range(cfg.context_layers))

    def bias(self, valid: torch.Tensor) -> torch.Tensor:
        """(B,1,T,T) additive bias: -1e4 on the future, on anything older than the window and on
        padding keys. The diagonal is always allowed, so no row is fully masked."""
        T = valid.shape[1]
        i = torch.arange(T, device=valid.device)
        rel = i[:, None] - i[None, :]
        allowed = (rel >= 0) & (rel <= self.window)  # (T,T)
        allowed = allowed[None] & (valid[:, None, :] | torch.eye(T, dtype=torch.bool, device=valid.device)[None])
        return torch.where(allowed, 0.0, -1e4)[:, None].to(torch.float32)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, same_speaker_prev: torch.Tensor) -> torch.Tensor:
        """x (B,T,H); valid (B,T) bool; same_speaker_prev (B,T) long (0/1: did the previous
        utterance have this utterance's speaker) -> (B,T,H)."""
        x = x + self.speaker_flag(same_speaker_prev)
        bias = self.bias(valid)
        for block in self.blocks:
            x = block(x, bias)
        return x


class MLSAN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dims = {"text": cfg.text_dim, "audio": cfg.audio_dim, "visual": cfg.visual_dim}
        self.dims = dims
        for m, d in dims.items():  # global standardisation, set from the training corpus
            self.register_buffer(f"{m}_mean", torch.zeros(d))
            self.register_buffer(f"{m}_std", torch.ones(d))
        self.speaker = SpeakerEncoder(cfg)
        self.calib = nn.ModuleDict({m: FiLMCalibration(dims[m], cfg.speaker_dim) for m in CALIBRATED})
        self.encode = nn.ModuleDict({m: mlp(d, cfg.hidden, cfg.dropout) for m, d in dims.items()})
        self.text_drop = nn.Dropout(cfg.text_dropout)
        self.gate = ModalityGate(cfg.hidden, cfg.speaker_dim, len(dims))
        self.context = CausalContext(cfg)
        self.head = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.n_classes))

    def set_normalisation(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for m, (mu, sd) in stats.items():
            getattr(self, f"{m}_mean").copy_(mu)
            getattr(self, f"{m}_std").copy_(sd.clamp(min=1e-4))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch: text/audio/visual (B,T,D_m) raw; mask_text/mask_audio/mask_visual (B,T) bool;
        profile_{audio,visual}_mean/_var (B,T,D) raw-space shrunk profile stats; profile_text_mean
        (B,T,D_t); profile_conf (B,T,3); voice (B,T,D_s), mask_voice (B,T); valid (B,T);
        same_speaker_prev (B,T) long. Returns logits (B,T,C), latent (B,T,H), trust (B,T,3),
        gamma/beta per calibrated modality."""
        cfg = self.cfg
        masks = torch.stack([batch[f"mask_{m}"] for m in self.dims], dim=-1)  # (B,T,3)
        z, norm_stats = {}, []
        for m in self.dims:  # global standardisation; absent observations are zeroed, never used
            x = (batch[m] - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std")
            z[m] = x * batch[f"mask_{m}"].unsqueeze(-1)
        if cfg.use_speaker:
            for m in CALIBRATED:
                mu = (batch[f"profile_{m}_mean"] - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std")
                log_sd = 0.5 * torch.log(batch[f"profile_{m}_var"].clamp(min=1e-8)) - torch.log(getattr(self, f"{m}_std"))
                norm_stats += [mu, log_sd]
            text_mu = batch["profile_text_mean"]
            s = self.speaker(batch["voice"], batch["mask_voice"].float(), norm_stats, text_mu, batch["profile_conf"])
        else:
            s = torch.zeros(*masks.shape[:2], cfg.speaker_dim, device=masks.device)

        out = {}
        for m in CALIBRATED:  # ---- stage 1: input-level calibration
            if cfg.use_stage1:
                if cfg.use_speaker:
                    mu_z, log_sd_z = norm_stats[2 * CALIBRATED.index(m)], norm_stats[2 * CALIBRATED.index(m) + 1]
                    z[m] = (z[m] - mu_z) * stage1_scale(log_sd_z, cfg.stage1_max_gain)
                x_cal, gamma, beta = self.calib[m](z[m], s)
                z[m] = x_cal * batch[f"mask_{m}"].unsqueeze(-1)
                out[f"gamma_{m}"], out[f"beta_{m}"] = gamma, beta
        # dropout on the text input regularises against the tuned text encoder's over-confident
        # embeddings of its own training sentences (MELD dev F1 fell with longer training without it)
        z["text"] = self.text_drop(z["text"])
        h = [self.encode[m](z[m].clamp(-10, 10)) for m in self.dims]

        if cfg.use_stage2:  # ---- stage 2: speaker-conditioned gating
            trust = self.gate(h, s, masks)
        else:
            trust = masks.float() / masks.float().sum(-1, keepdim=True).clamp(min=1.0)
        fused = sum(trust[..., i:i + 1] * hm for i, hm in enumerate(h))  # (B,T,H)

        latent = self.context(fused, batch["valid"], batch["same_speaker_prev"])
        out.update(logits=self.head(latent), latent=latent, trust=trust, speaker=s)
        return out

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
