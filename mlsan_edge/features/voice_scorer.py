"""How likely two voices are one person: GE2E embeddings compared with emotion taken out and
scores normalised against a cohort of other speakers (numpy only; it ships in the bundle).

Raw GE2E cosine separates the speakers of short, acted emotional clips poorly: an actor
shouting and the same actor whispering are further apart than two calm actors (RAVDESS pairwise
EER 17 %). Standard speaker-verification steps, fitted on the training actors' own clips:

1. **Nuisance attribute projection.** Centre, then project out the `nuisance_dims` directions
   along which one speaker's embeddings vary most (emotion, intensity, sentence: the top
   eigenvectors of the within-speaker scatter). Pairwise EER on unseen actors 17 % -> 13 %.
2. **Adaptive symmetric score normalisation (AS-norm).** A cosine means different things for
   different voices, so each side is scored against its `top_k` nearest cohort embeddings
   (training speakers) and the two z-scores are averaged:
   `0.5 * ((s - mu_e) / sd_e + (s - mu_c) / sd_c)`. One threshold then fits every voice.
3. **Centring on the voices heard here.** Centred on the training mean, voices recorded under
   other conditions (GRID's six speakers) share a channel component that makes every pair look
   alike, and all six became one speaker. The speaker cache therefore centres on
   `domain_mean`: the training mean, worth `prior_speakers` speakers, averaged with the centroid
   of every speaker it knows (recomputed when that set changes). With it GRID's speakers stay
   apart and RAVDESS keeps most of the gain.

`benchmarks/speaker_threshold.py` fits this on 16 actors and tunes the threshold on streams of
the other 4 (5 folds), reporting false-merge / false-split rates; `mlsan-edge train` fits it on
its RAVDESS actors and stores the tuned threshold with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

SCORER_FILE = "speakers/voice_scorer.npz"  # path inside a bundle
NUISANCE_DIMS = 5
TOP_K = 100
COHORT_PER_SPEAKER = 40
PRIOR_SPEAKERS = 2.0  # weight of the training mean, in speakers, in the device's domain mean
DEFAULT_SCORE_THRESHOLD = 1.0  # AS-norm units: benchmarks/speaker_threshold.py ("scorer_merge")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class VoiceScorer:
    """Scores voice embeddings against speaker centroids (see the module docstring).

    Attributes:
        mean: (D,) training mean removed before projecting.
        nuisance: (k, D) orthonormal within-speaker directions projected out.
        cohort: (C, D) projected, unit-norm embeddings of the training speakers.
        top_k: cohort neighbours used for each side's normalisation.
        threshold: score at or above which a voice is a known speaker.
    """

    mean: np.ndarray
    nuisance: np.ndarray
    cohort: np.ndarray
    top_k: int = TOP_K
    threshold: float = DEFAULT_SCORE_THRESHOLD
    prior_speakers: float = PRIOR_SPEAKERS

    def domain_mean(self, centroids: np.ndarray) -> np.ndarray:
        """The centre for voices heard where the known speakers' `centroids` (n, D) were: the
        training mean worth `prior_speakers` speakers, plus each known speaker's unit centroid."""
        c = _unit(np.asarray(centroids, np.float32).reshape(-1, self.mean.shape[0]))
        return ((self.prior_speakers * self.mean + c.sum(axis=0)) / (self.prior_speakers + len(c))).astype(np.float32)

    def project(self, x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        """(..., D) raw embeddings -> (..., D) unit vectors in the speaker space, centred on `mean`
        (default: the training mean)."""
        y = _unit(x) - (self.mean if mean is None else mean)
        y = y - (y @ self.nuisance.T) @ self.nuisance
        return _unit(y)

    def cohort_stats(self, projected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of each row's `top_k` highest cosines to the cohort: (n,), (n,)."""
        sims = np.atleast_2d(projected) @ self.cohort.T  # (n, C)
        k = min(self.top_k, sims.shape[1])
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-4)

    def prepare(self, x: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, D) raw embeddings -> (projected (n, D), cohort mean (n,), cohort std (n,)): all a
        score needs of one side, so callers can cache it."""
        p = np.atleast_2d(self.project(x, mean))
        mu, sd = self.cohort_stats(p)
        return p, mu, sd

    @staticmethod
    def combine(sims: np.ndarray, mu_a, sd_a, mu_b, sd_b) -> np.ndarray:
        """AS-norm of cosines `sims` between sides a and b from their `prepare` statistics."""
        return (0.5 * ((sims - mu_a) / sd_a + (sims - mu_b) / sd_b)).astype(np.float32)

    def scores(self, embedding: np.ndarray, centroids: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        """AS-norm scores (n,) of one raw embedding (D,) against n raw centroids (n, D), both
        centred on `mean` (default: the training mean; the cache passes `domain_mean`)."""
        if len(centroids) == 0:
            return np.zeros(0, np.float32)
        e, mu_e, sd_e = self.prepare(embedding, mean)
        c, mu_c, sd_c = self.prepare(centroids, mean)
        return self.combine(c @ e[0], mu_e[0], sd_e[0], mu_c, sd_c)

    # --- fitting and files ----------------------------------------------------------------------
    @classmethod
    def fit(cls, embeddings: np.ndarray, speakers: np.ndarray, nuisance_dims: int = NUISANCE_DIMS,
            top_k: int = TOP_K, cohort_per_speaker: int = COHORT_PER_SPEAKER,
            threshold: float = DEFAULT_SCORE_THRESHOLD, prior_speakers: float = PRIOR_SPEAKERS,
            seed: int = 0) -> "VoiceScorer":
        """Fit on (N, D) voice embeddings of known speakers (N,) labels; needs >= 2 speakers."""
        x = _unit(embeddings)
        speakers = np.asarray(speakers)
        labels = np.unique(speakers)
        if len(labels) < 2:
            raise ValueError(f"fitting a voice scorer needs embeddings of at least 2 speakers, got {len(labels)}")
        mean = x.mean(axis=0)
        y = x - mean
        scatter = np.zeros((x.shape[1], x.shape[1]), np.float64)
        for s in labels:
            d = y[speakers == s] - y[speakers == s].mean(axis=0)
            scatter += d.T @ d
        _, vecs = np.linalg.eigh(scatter / len(x))
        nuisance = vecs[:, ::-1][:, :nuisance_dims].T.astype(np.float32)  # largest first
        rng = np.random.default_rng(seed)
        pick = np.concatenate([rng.permutation(np.where(speakers == s)[0])[:cohort_per_speaker] for s in labels])
        scorer = cls(mean.astype(np.float32), nuisance, np.zeros((0, x.shape[1]), np.float32), int(top_k),
                     float(threshold), float(prior_speakers))
        cohort = scorer.project(x[np.sort(pick)]).astype(np.float16).astype(np.float32)  # as saved (fp16)
        return replace(scorer, cohort=cohort)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, mean=self.mean, nuisance=self.nuisance, cohort=self.cohort.astype(np.float16),
                     top_k=np.int64(self.top_k), threshold=np.float64(self.threshold),
                     prior_speakers=np.float64(self.prior_speakers))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "VoiceScorer":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean"].astype(np.float32), z["nuisance"].astype(np.float32),
                           z["cohort"].astype(np.float32), int(z["top_k"]), float(z["threshold"]),
                           float(z["prior_speakers"]) if "prior_speakers" in z else PRIOR_SPEAKERS)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path} is not a voice scorer file ({e}); re-export the bundle") from e


__all__ = ["VoiceScorer", "SCORER_FILE", "DEFAULT_SCORE_THRESHOLD"]
