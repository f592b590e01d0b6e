"""How far to trust a prediction: a fitted temperature and a distance to the training data.

A bundle may carry `confidence.json` (written by `mlsan-edge export`, read by `Stages`):

    temperature     the base temperature T0 of an utterance whose face was used, with face features
                    of the kind training saw (OpenFace action units): 1, or cross-fitted on the
                    held-out actors of cross-validation (`mlsan-edge calibrate --crossval`)
    temperature_audio_only
                    the base temperature of an utterance heard without a face (no camera, no face
                    in view, or a face unlike the training faces): the voice alone is less sure
                    than voice and face together, so it gets its own base, fitted with the slope.
                    The runtime's live faces are landmark proxies, not OpenFace: an utterance heard
                    with one gets max(T0, this base), so a face can change an answer but never
                    make it surer than the voice-only calibration
    slope, knee     T grows with the audio's distance to the training data:
                    T = base + slope * max(0, ood_audio - knee), base and slope fitted on held-out
                    speakers heard audio only (never trained on; other microphones and people), so
                    an unusual voice gets flatter probabilities and a RAVDESS-like one keeps its
                    own. Probabilities are softmax(log p / T), which keeps the ranking.
    distance        per modality, quantiles of `feature_distance` over the training utterances
    fitted_on       what the slope was fitted on, and the calibration error before and after

`feature_distance(x, mean, var)` is the root-mean-square z-score of one raw feature vector
against the training corpus statistics (`GlobalStats`); `Confidence.ood(x, ...)` divides it by
the training 99th percentile, so 1.0 is "as unusual as the most unusual 1 % of what the model
learned from" and 3.0 is far outside. Robot software thresholds the event's `confidence` (the
calibrated top probability) and `ood`; the runtime ignores a visual vector whose `ood` is above
`VISUAL_OOD_MAX` (a face the visual model cannot read is worse than none).

A bundle without the file behaves as before (T = 1, no distances).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONFIDENCE_FILE = "confidence.json"
VISUAL_OOD_MAX = 1.5  # visual vectors farther than 1.5x the training p99 are not used


def _rms_z(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """RMS z-score over the last axis of `x` (..., D) against per-dimension `mean`/`var` (D,)."""
    z = (np.asarray(x, np.float64) - np.asarray(mean, np.float64)) / np.sqrt(np.asarray(var, np.float64))
    return np.sqrt(np.mean(z * z, axis=-1))


def feature_distance(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> float:
    """RMS z-score of the raw feature vector `x` (D,) against per-dimension `mean`/`var` (D,)."""
    return float(_rms_z(x, mean, var))


def temper(probs: np.ndarray, temperature) -> np.ndarray:
    """softmax(log p / T) along the last axis: the same ranking, probabilities flattened (T > 1).
    `temperature` is a number or broadcasts against `probs` (e.g. (N, 1) for one T per row)."""
    p = np.asarray(probs, np.float64)
    if np.isscalar(temperature) and temperature == 1.0:
        return p.astype(np.float32)
    logit = np.log(np.clip(p, 1e-12, 1.0)) / temperature
    logit -= logit.max(axis=-1, keepdims=True)
    e = np.exp(logit)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray, temperature) -> float:
    """Mean negative log-likelihood of `labels` (N,) under temper(probs, T): T a number or one per row."""
    t = np.asarray(temperature, np.float64).reshape(-1, 1) if np.ndim(temperature) else temperature
    q = temper(probs, t)
    return float(-np.mean(np.log(np.clip(q[np.arange(len(labels)), labels], 1e-12, 1))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, grid=None) -> float:
    """The T minimising the negative log-likelihood of `labels` (N,) under temper(probs (N, C), T)."""
    grid = np.exp(np.linspace(np.log(0.5), np.log(8.0), 121)) if grid is None else np.asarray(grid)
    labels = np.asarray(labels, np.int64)
    return float(grid[int(np.argmin([nll(probs, labels, t) for t in grid]))])


def _nll_grid(probs: np.ndarray, labels: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """nll for each row of `temperatures` (K, N) (one temperature per utterance), vectorised."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))
    z = logp[None] / temperatures[..., None]  # (K, N, C)
    zmax = z.max(-1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(-1)) + zmax[..., 0]
    return (lse - z[:, np.arange(len(labels)), labels]).mean(-1)


def fit_slope(probs: np.ndarray, labels: np.ndarray, ood: np.ndarray, knee: float, base: float = 1.0,
              grid=None) -> float:
    """The slope minimising the NLL of `labels` under T = base + slope * max(0, ood - knee)."""
    grid = np.linspace(0.0, 30.0, 301) if grid is None else np.asarray(grid)
    excess = np.nan_to_num(np.maximum(0.0, np.asarray(ood, np.float64) - knee))  # NaN: no audio, the base
    labels = np.asarray(labels, np.int64)
    return float(grid[int(np.argmin(_nll_grid(probs, labels, base + grid[:, None] * excess[None])))])


def fit_base_and_slope(probs: np.ndarray, labels: np.ndarray, ood: np.ndarray, knee: float) -> tuple[float, float]:
    """(base, slope) minimising the NLL of `labels` under T = base + slope * max(0, ood - knee);
    base from 1 to 4 (a held-out voice is never made more confident than the network)."""
    excess = np.nan_to_num(np.maximum(0.0, np.asarray(ood, np.float64) - knee))
    labels = np.asarray(labels, np.int64)
    coarse = np.linspace(0.0, 30.0, 61)  # the base is searched with a coarse slope, then the slope refined
    best = min((nll(probs, labels, b + fit_slope(probs, labels, ood, knee, b, coarse) * excess), b)
               for b in np.arange(1.0, 4.01, 0.1))
    base = round(float(best[1]), 2)
    return base, fit_slope(probs, labels, ood, knee, base)


@dataclass(frozen=True)
class Confidence:
    """A bundle's calibration (identity when the bundle has none)."""

    temperature: float = 1.0
    distance: dict = field(default_factory=dict)  # modality -> {"p50", "p95", "p99"} of training distances
    fitted_on: dict = field(default_factory=dict)
    slope: float = 0.0  # temperature per unit of audio ood above `knee`
    knee: float = 1.0
    temperature_audio_only: float | None = None  # base without a face (None: `temperature`)

    def temperature_at(self, ood_audio: float | None, audio_only: bool = False, live_face: bool = False) -> float:
        """The temperature for an utterance whose audio is `ood_audio` from the training data, heard
        without a face (`audio_only`), with the training's kind of face features, or with a live
        face (`live_face`: the runtime's landmark proxies, not what training saw — they may change
        the answer but never make it surer than the voice-only calibration)."""
        t_audio = self.temperature_audio_only or self.temperature
        base = t_audio if audio_only else max(self.temperature, t_audio) if live_face else self.temperature
        if ood_audio is None or not np.isfinite(ood_audio):
            return base
        return base + self.slope * max(0.0, float(ood_audio) - self.knee)

    def calibrate(self, probs: np.ndarray, ood_audio: float | None = None, audio_only: bool = False,
                  live_face: bool = False) -> np.ndarray:
        return temper(probs, self.temperature_at(ood_audio, audio_only, live_face))

    def ood(self, x: np.ndarray | None, modality: str, mean: np.ndarray, var: np.ndarray) -> float | None:
        """`feature_distance` of `x` over the training p99 of `modality` (None: no x or no reference)."""
        ref = self.distance.get(modality, {}).get("p99")
        if x is None or not ref:
            return None
        return feature_distance(x, mean, var) / float(ref)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "temperature_audio_only": self.temperature_audio_only,
                "slope": self.slope, "knee": self.knee, "distance": self.distance, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict) -> "Confidence":
        t, slope, knee = (float(d.get(k, v)) for k, v in (("temperature", 1.0), ("slope", 0.0), ("knee", 1.0)))
        ta = d.get("temperature_audio_only")
        ta = None if ta is None else float(ta)
        if (not np.isfinite(t) or t <= 0 or not np.isfinite(slope) or slope < 0 or not np.isfinite(knee)
                or (ta is not None and (not np.isfinite(ta) or ta <= 0))):
            raise ValueError(f"{CONFIDENCE_FILE}: temperatures must be positive and slope >= 0, got {t!r}, {ta!r}, "
                             f"{slope!r}; re-export the bundle")
        return cls(t, dict(d.get("distance", {})), dict(d.get("fitted_on", {})), slope, knee, ta)

    @classmethod
    def load(cls, path: str | Path) -> "Confidence":
        """The calibration in `path`, or the identity when the file does not exist."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else cls()


def distance_quantiles(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> dict:
    """p50/p95/p99 of `feature_distance` over the rows of `x` (N, D)."""
    d = _rms_z(x, mean, var)
    return {q: round(float(np.percentile(d, int(q[1:]))), 4) for q in ("p50", "p95", "p99")}


def ood_rows(x: np.ndarray, mask: np.ndarray, mean: np.ndarray, var: np.ndarray, p99: float) -> np.ndarray:
    """Per row of `x` (N, D): its distance over `p99` (NaN where `mask` is False)."""
    return np.where(np.asarray(mask, bool), _rms_z(x, mean, var) / p99, np.nan)


__all__ = ["CONFIDENCE_FILE", "VISUAL_OOD_MAX", "Confidence", "distance_quantiles", "feature_distance",
           "fit_base_and_slope", "fit_slope", "fit_temperature", "nll", "ood_rows", "temper"]
