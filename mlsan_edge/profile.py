"""The online speaker profile: the one update rule used by training and by the device.

A profile summarises what has been *observed* of one speaker so far, never labels:

* per modality (audio, visual, text), the running mean and variance of that speaker's raw
  features over their earlier utterances (Welford's algorithm, so it updates one utterance at
  a time and serialises as three arrays);
* the centroid of their voice embeddings (what the speaker cache matches new voices against);
* the running mean of the model's stage-3 latent (the speaker's prototype).

`ModalityStats.calibration()` shrinks the speaker's statistics toward the global ones with a
prior worth `PRIOR_COUNT` utterances, so a speaker's first utterance is normalised with the
global statistics and the speaker's own take over as evidence accumulates. Training simulates
the device by replaying each speaker's utterances through exactly this code
(`mlsan_edge.data.replay`), so what the model saw is what the device does.

The rules that turn a profile into the model's inputs live here too, for the same reason:
`GlobalStats` (the corpus prior), `profile_row` (standardising statistics for the next
utterance) and `speaker_voice` (the earlier-voices centroid the speaker network sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlsan_edge.config import MODALITIES

PRIOR_COUNT = 4.0  # utterances' worth of weight given to the global statistics
VAR_FLOOR = 1e-4  # on the variance of standardised features


@dataclass
class ModalityStats:
    """Running mean/variance of one modality's feature vector (Welford)."""

    dim: int
    count: int = 0
    mean: np.ndarray = field(default=None)  # (dim,) float64
    m2: np.ndarray = field(default=None)  # (dim,) float64, sum of squared deviations

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim, np.float64)
        if self.m2 is None:
            self.m2 = np.zeros(self.dim, np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add one observation `x` of shape (dim,)."""
        x = np.asarray(x, np.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"profile update expects a vector of {self.dim} values, got {x.shape[0]}")
        if not np.all(np.isfinite(x)):
            return  # never let a broken feature poison a speaker's statistics
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def calibration(self, global_mean: np.ndarray, global_var: np.ndarray,
                    prior: float = PRIOR_COUNT) -> tuple[np.ndarray, np.ndarray, float]:
        """Shrunk (mean, variance, confidence) for standardising this speaker's next utterance.

        Args:
            global_mean, global_var: (dim,) statistics of the training corpus, in the same
                (already globally standardised or raw) space as the observations.
            prior: weight of the global statistics, in utterances.

        Returns:
            mean (dim,), var (dim,) as float32, and confidence n / (n + prior) in [0, 1).
        """
        n = float(self.count)
        var_s = self.m2 / max(n, 1.0)
        w = n / (n + prior)
        mean = w * self.mean + (1 - w) * global_mean
        # the speaker's spread around the *shrunk* mean, mixed with the global spread
        var = w * (var_s + (self.mean - mean) ** 2) + (1 - w) * global_var
        # never narrower than the corpus: a speaker heard in one mood (mostly neutral, as a device
        # hears most people) has a narrow spread, and standardising by it turned their small
        # sentence-to-sentence differences into emotions (issue #9, GRID s1; README "stage 1's gain")
        var = np.maximum(var, global_var)
        return mean.astype(np.float32), np.maximum(var, VAR_FLOOR).astype(np.float32), float(w)

    def to_dict(self) -> dict:
        return {"dim": self.dim, "count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModalityStats":
        return cls(dim=int(d["dim"]), count=int(d["count"]),
                   mean=np.asarray(d["mean"], np.float64), m2=np.asarray(d["m2"], np.float64))


@dataclass
class SpeakerProfile:
    """Everything the model and the cache know about one speaker; JSON-serialisable."""

    dims: dict[str, int]  # modality -> feature dimension, e.g. {"audio": 136, "visual": 35}
    voice_dim: int = 256
    stats: dict[str, ModalityStats] = field(default_factory=dict)
    voice_sum: np.ndarray = field(default=None)  # (voice_dim,) sum of unit-norm embeddings
    voice_count: int = 0
    latent_sum: np.ndarray = field(default=None)  # stage-3 prototype accumulator
    latent_count: int = 0

    def __post_init__(self) -> None:
        for m, d in self.dims.items():
            self.stats.setdefault(m, ModalityStats(d))
        if self.voice_sum is None:
            self.voice_sum = np.zeros(self.voice_dim, np.float64)

    # --- updates: called once per utterance, *after* its prediction ---------------------------
    def update(self, features: dict[str, np.ndarray | None], voice: np.ndarray | None = None,
               latent: np.ndarray | None = None) -> None:
        """Fold one utterance's observations in. Missing modalities are passed as None."""
        for m, x in features.items():
            if x is not None and m in self.stats:
                self.stats[m].update(x)
        if voice is not None:
            v = np.asarray(voice, np.float64).reshape(-1)
            norm = np.linalg.norm(v)
            if norm > 0 and np.isfinite(norm):
                self.voice_sum += v / norm
                self.voice_count += 1
        if latent is not None:
            z = np.asarray(latent, np.float64).reshape(-1)
            if self.latent_sum is None:
                self.latent_sum = np.zeros_like(z)
            self.latent_sum += z
            self.latent_count += 1

    @property
    def count(self) -> int:
        """Utterances seen (the largest per-modality count, or voice observations)."""
        return max([s.count for s in self.stats.values()] + [self.voice_count])

    def voice_centroid(self) -> np.ndarray | None:
        """Unit-norm mean voice embedding (voice_dim,), or None before the first voice."""
        if self.voice_count == 0:
            return None
        c = self.voice_sum / max(np.linalg.norm(self.voice_sum), 1e-12)
        return c.astype(np.float32)

    def prototype(self) -> np.ndarray | None:
        if not self.latent_count:
            return None
        return (self.latent_sum / self.latent_count).astype(np.float32)

    def merge(self, other: "SpeakerProfile") -> None:
        """Absorb `other` (same speaker found twice): combine the sufficient statistics."""
        for m, s in other.stats.items():
            a = self.stats.setdefault(m, ModalityStats(s.dim))
            n = a.count + s.count
            if s.count == 0:
                continue
            delta = s.mean - a.mean
            a.m2 = a.m2 + s.m2 + delta**2 * a.count * s.count / n
            a.mean = a.mean + delta * s.count / n
            a.count = n
        self.voice_sum = self.voice_sum + other.voice_sum
        self.voice_count += other.voice_count
        if other.latent_sum is not None:
            self.latent_sum = other.latent_sum.copy() if self.latent_sum is None else self.latent_sum + other.latent_sum
            self.latent_count += other.latent_count

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "dims": dict(self.dims), "voice_dim": self.voice_dim,
            "stats": {m: s.to_dict() for m, s in self.stats.items()},
            "voice_sum": self.voice_sum.tolist(), "voice_count": self.voice_count,
            "latent_sum": None if self.latent_sum is None else self.latent_sum.tolist(),
            "latent_count": self.latent_count,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SpeakerProfile":
        return cls(
            dims={k: int(v) for k, v in d["dims"].items()}, voice_dim=int(d["voice_dim"]),
            stats={m: ModalityStats.from_dict(s) for m, s in d["stats"].items()},
            voice_sum=np.asarray(d["voice_sum"], np.float64), voice_count=int(d["voice_count"]),
            latent_sum=None if d.get("latent_sum") is None else np.asarray(d["latent_sum"], np.float64),
            latent_count=int(d.get("latent_count", 0)),
        )


CALIBRATED = ("audio", "visual")  # the modalities stage 1 standardises per speaker


@dataclass(frozen=True)
class GlobalStats:
    """Raw-space mean/var of each modality over a training table (the profile's prior)."""

    mean: dict
    var: dict

    @classmethod
    def fit(cls, t) -> "GlobalStats":
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
