"""The speaker cache's in-memory matching: known speakers' voice centroids, scored against a voice.

`SpeakerCache` (speakers.py) owns storage (SQLite, profiles); this holds what matching needs and
nothing else: one row per speaker with a voice centroid, prepared for the `VoiceScorer` (or plain
cosine without one), the scorer's centre for the voices heard here (`VoiceScorer.domain_mean`,
recomputed when the set of speakers changes), and, for speakers with few voices, those voices,
so a splinter can be judged as a whole (`merge_candidate`). Not thread-safe: the cache's lock
covers it.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Mapping

import numpy as np

from mlsan_edge.profile import SpeakerProfile

MAX_EXEMPLARS = 8  # a speaker with at most this many voices keeps them (in memory): it may be absorbed


class VoiceIndex:
    """Args: scorer: a `VoiceScorer`, or None for plain cosine; voice_dim: embedding size."""

    def __init__(self, scorer, voice_dim: int) -> None:
        self.scorer, self.voice_dim = scorer, int(voice_dim)
        self.ids = np.zeros(0, np.int64)  # row i belongs to speaker ids[i]
        self._prep: dict[int, tuple[np.ndarray, np.ndarray, float, float]] = {}  # id -> (centroid, proj, mu, sd)
        self._proj = np.zeros((0, self.voice_dim), np.float32)
        self._mu = self._sd = np.zeros(0, np.float32)
        self._exemplars: dict[int, deque] = {}  # id -> unit voices of a speaker with few voices
        self._mean, self._mean_ids = None, None  # the scorer's centre, and the speakers it came from
        # id -> (how many voices, the centre they were prepared for, their prepare()): judging a
        # splinter re-scores its few voices on every utterance; preparing them once is ~5x cheaper
        self._ex_prep: dict[int, tuple] = {}
        self._set_prep: dict = {}  # key -> (centre, prepare()) of the vectors `scores_against` was given last

    def rebuild(self, profiles: Mapping[int, SpeakerProfile]) -> None:
        """Follow the profiles (after any change); a centroid is re-prepared only when it moved."""
        ids, cents = [], []
        for sid, prof in profiles.items():
            c = prof.voice_centroid()
            if c is not None:
                ids.append(sid)
                cents.append(c)
        self.ids = np.asarray(ids, np.int64)
        centroids = np.stack(cents) if cents else np.zeros((0, self.voice_dim), np.float32)
        if self.scorer is not None and tuple(ids) != self._mean_ids:
            # the set of speakers changed: re-centre on the voices heard here
            self._mean_ids = tuple(ids)
            self._mean = self.scorer.domain_mean(centroids)
            self._prep = {}
        stale = [i for i, sid in enumerate(ids)
                 if sid not in self._prep or not np.array_equal(self._prep[sid][0], cents[i])]
        if stale:
            proj, mu, sd = self.prepare(centroids[stale])
            for i, p, m, d in zip(stale, proj, mu, sd):
                self._prep[ids[i]] = (cents[i], p, float(m), float(d))
        self._prep = {sid: self._prep[sid] for sid in ids}
        self._proj = np.stack([self._prep[i][1] for i in ids]) if ids else centroids
        self._mu = np.array([self._prep[i][2] for i in ids], np.float32)
        self._sd = np.array([self._prep[i][3] for i in ids], np.float32)
        self._exemplars = {sid: ex for sid, ex in self._exemplars.items()
                           if sid in profiles and profiles[sid].voice_count <= MAX_EXEMPLARS}
        self._ex_prep = {sid: v for sid, v in self._ex_prep.items() if sid in self._exemplars}

    def refresh(self, sid: int, profile: SpeakerProfile) -> bool:
        """Follow one known speaker's changed profile in O(D), as `rebuild` would (the set of
        speakers, hence the scorer's centre, is unchanged). False when `sid` has no row yet, or
        no centroid: then `rebuild`."""
        rows = np.flatnonzero(self.ids == sid)
        c = profile.voice_centroid()
        if not rows.size or c is None:
            return False
        row = int(rows[0])
        if not np.array_equal(self._prep[sid][0], c):
            proj, mu, sd = self.prepare(c[None])
            self._prep[sid] = (c, proj[0], float(mu[0]), float(sd[0]))
            self._proj[row], self._mu[row], self._sd[row] = proj[0], mu[0], sd[0]
        if profile.voice_count > MAX_EXEMPLARS:
            self._exemplars.pop(sid, None)
        return True

    def prepare(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What scoring needs of (n, D) unit embeddings: the scorer's projection and cohort
        statistics, or for plain cosine the vectors themselves (mean 0, std 1)."""
        if self.scorer is None:
            return units, np.zeros(len(units), np.float32), np.ones(len(units), np.float32)
        return self.scorer.prepare(units, self._mean)

    def _combine(self, sims, mu_a, sd_a, mu_b, sd_b) -> np.ndarray:
        return sims if self.scorer is None else self.scorer.combine(sims, mu_a, sd_a, mu_b, sd_b)

    def nearest(self, unit: np.ndarray, exclude: Iterable[int] = ()) -> tuple[int | None, float]:
        """(speaker id, score) of the best-scoring known speaker, leaving out the ids in `exclude`;
        (None, -inf) when there is none."""
        scores = self.all_scores(unit)
        if exclude:
            scores = np.where(np.isin(self.ids, list(exclude)), -np.inf, scores)
        if not scores.shape[0] or not np.isfinite(scores).any():
            return None, float("-inf")
        best = int(np.argmax(scores))
        return int(self.ids[best]), float(scores[best])

    def all_scores(self, unit: np.ndarray) -> np.ndarray:
        """(n,) scores of a voice against every known speaker's centroid, in the order of `ids`."""
        if not self.ids.shape[0]:
            return np.zeros(0, np.float32)
        p, mu, sd = (a[0] for a in self.prepare(unit[None]))
        return np.asarray(self._combine(self._proj @ p, mu, sd, self._mu, self._sd), np.float32)

    def score_of(self, unit: np.ndarray, sid: int) -> float | None:
        """The score of a voice against one known speaker's centroid (None: no voice centroid)."""
        rows = np.flatnonzero(self.ids == sid)
        if not rows.size:
            return None
        r = int(rows[0])
        p, mu, sd = (a[0] for a in self.prepare(unit[None]))
        return float(self._combine(self._proj[r:r + 1] @ p, mu, sd, self._mu[r:r + 1], self._sd[r:r + 1])[0])

    def scores_against(self, unit: np.ndarray, centroids: np.ndarray, key=None) -> np.ndarray:
        """(k,) scores of a voice against (k, D) unit vectors that are not in the index (named
        persons' enrolled and learned voices), on the same scale as `nearest` (the same centre and
        cohort). With a `key` (any hashable that changes whenever `centroids` does), their
        preparation is kept until the key or the centre changes."""
        if not len(centroids):
            return np.zeros(0, np.float32)
        hit = self._set_prep.get(key) if key is not None else None
        if hit is None or hit[0] is not self._mean:
            hit = (self._mean, self.prepare(np.asarray(centroids, np.float32)))
            if key is not None:
                self._set_prep = {key: hit}  # one set (the named persons) is in use at a time
        pc, mc, sc = hit[1]
        p, mu, sd = (a[0] for a in self.prepare(unit[None]))
        return np.asarray(self._combine(pc @ p, mu, sd, mc, sc), np.float32)

    def remember(self, sid: int, unit: np.ndarray, voice_count: int) -> None:
        """Keep a voice of a speaker who has at most MAX_EXEMPLARS of them (counting this one)."""
        if voice_count <= MAX_EXEMPLARS:
            self._exemplars.setdefault(sid, deque(maxlen=MAX_EXEMPLARS)).append(unit)

    def merge_candidate(self, sid: int, counts: Mapping[int, int], named: Iterable[int],
                        threshold: float, faced: Iterable[int] = ()) -> tuple[int, int, float] | None:
        """(keep, absorb, worst score) when `sid` and another speaker should be one: the one with
        fewer voices (all at hand) has every voice scoring >= `threshold` against the other's
        centroid. Two named speakers never, nor two with a face each (two faces are two people);
        a named one is always kept."""
        named, faced = set(named), set(faced)
        row = {int(s): i for i, s in enumerate(self.ids)}
        if sid not in row or len(row) < 2:
            return None
        pairs = []
        for other in row:
            if other == sid or (other in named and sid in named) or (other in faced and sid in faced):
                continue
            small, big = sorted((sid, other), key=lambda s: (counts[s], -s))
            ex = self._exemplars.get(small)
            if ex and len(ex) >= counts[small]:  # only a speaker whose every voice is at hand can be judged
                pairs.append((small, big))
        prepared = self._prepared_voices({small for small, _ in pairs})
        best = None
        for small, big in pairs:
            p, mu, sd = prepared[small]
            b = row[big]
            worst = float(np.min(self._combine(p @ self._proj[b], mu, sd, self._mu[b], self._sd[b])))
            if worst >= threshold and (best is None or worst > best[0]):
                best = (worst, small, big)
        if best is None:
            return None
        worst, small, big = best
        keep, absorb = (small, big) if small in named else (big, small)
        return keep, absorb, worst

    def _prepared_voices(self, sids) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Speaker id -> `prepare` of their remembered voices, kept until they or the centre change.
        The stale ones are prepared in one batch: a new speaker moves the centre, and re-preparing
        every splinter one call at a time was most of the cache's time with dozens of them."""
        stale = [sid for sid in sids if (hit := self._ex_prep.get(sid)) is None
                 or hit[0] != len(self._exemplars[sid]) or hit[1] is not self._mean]
        if stale:
            sizes = [len(self._exemplars[sid]) for sid in stale]
            p, mu, sd = self.prepare(np.stack([v for sid in stale for v in self._exemplars[sid]]))
            for sid, lo, hi in zip(stale, np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes)):
                self._ex_prep[sid] = (int(hi - lo), self._mean, (p[lo:hi], mu[lo:hi], sd[lo:hi]))
        return {sid: self._ex_prep[sid][2] for sid in sids}

    def merged(self, keep: int, absorb: int, voice_count: int) -> None:
        """`absorb` is being merged into `keep`, which will have `voice_count` voices: its
        remembered voices move to `keep` (call before the profiles change and `rebuild`)."""
        kept = list(self._exemplars.get(keep, ())) + list(self._exemplars.pop(absorb, ()))
        self._ex_prep.pop(keep, None)
        self._ex_prep.pop(absorb, None)
        if voice_count <= MAX_EXEMPLARS:
            self._exemplars[keep] = deque(kept, maxlen=MAX_EXEMPLARS)
        else:
            self._exemplars.pop(keep, None)


__all__ = ["VoiceIndex", "MAX_EXEMPLARS"]
