"""The on-device speaker cache: who is speaking, and what the model knows about them (SQLite).

One row per speaker holds the serialised `SpeakerProfile` (voice centroid and count, per-modality
running statistics, stage-3 prototype: the one update rule of `mlsan_edge.profile`), an optional
display name, first/last seen times, an utterance count, and an opaque blob of FiLM/gate
parameters tagged with the profile version it was computed from. The runtime computes them once
after each utterance, when the profile changes, and reads them for the speaker's next utterance;
matching a voice does not invalidate them. No audio or images are ever stored: only embeddings and
statistics.

A voice embedding is scored against every speaker's centroid: with the bundle's `VoiceScorer`
(emotion directions projected out, AS-norm against a cohort; `mlsan_edge.features.voice_scorer`)
or, without one, by plain cosine similarity. At or above `threshold` it is that speaker; below
`new_threshold` (default: the same value) it is a new speaker; in between it is attributed to the
nearest speaker but does not move their centroid (so an ambiguous voice cannot drag one speaker
toward another). A speaker split off by atypical first utterances is merged back once every one of
its (few) voices fits another speaker's settled centroid (`merge_threshold`); events already
emitted keep the id they had.

Storage (SQLite, mode 0600, WAL, transactions, a corrupt file moved aside) is `speaker_store.py`,
the export file `speaker_io.py`. The cache holds at most `max_speakers`; adding one more evicts
the least recently seen (unnamed speakers before enrolled ones). `forget()` deletes with `secure_delete`, truncates the
WAL and vacuums, so nothing of the speaker is left in the file.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from mlsan_edge.config import VOICE_DIM
from mlsan_edge.profile import SpeakerProfile
from mlsan_edge.runtime.speaker_io import read_export, write_export
from mlsan_edge.runtime.speaker_store import SpeakerStore
from mlsan_edge.runtime.voice_index import VoiceIndex

log = logging.getLogger(__name__)

# Without a VoiceScorer (a bundle exported before it existed): cosine similarity of GE2E voice
# embeddings at or above which a voice is a known speaker. benchmarks/speaker_threshold.py
# (results/speaker_threshold.json, "cosine_merge") tunes it on streams of unseen RAVDESS actors:
# the same rule as for the scorer picks 0.775. With the bundle's scorer the threshold is the scorer's own.
DEFAULT_THRESHOLD = 0.775
DEFAULT_MAX_SPEAKERS = 200


class Match(NamedTuple):
    """Result of `SpeakerCache.identify`."""

    speaker_id: int | None  # None only when is_new and update=False
    similarity: float  # score of the nearest known speaker (scorer units, or cosine without a scorer;
    #                    -inf when the cache is empty)
    is_new: bool


@dataclass(frozen=True)
class SpeakerInfo:
    """A speaker as listed (no embeddings)."""

    id: int
    name: str | None
    utterances: int
    voice_count: int
    first_seen: float  # unix time, s
    last_seen: float
    profile_version: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _unit(embedding: np.ndarray, voice_dim: int) -> np.ndarray:
    e = np.asarray(embedding, np.float32).reshape(-1)
    if e.shape[0] != voice_dim:
        raise ValueError(f"voice embedding must have {voice_dim} values, got {e.shape[0]}")
    n = float(np.linalg.norm(e))
    if not np.isfinite(n) or n == 0.0:
        raise ValueError("voice embedding is zero or not finite; embed at least ~0.5 s of speech")
    return e / n


class SpeakerCache:
    """Persistent, thread-safe speaker cache.

    Args:
        path: SQLite file (created 0600), or ":memory:" for a throw-away cache.
        threshold: score at or above which a voice is a known speaker (default: the scorer's tuned
            threshold, or `DEFAULT_THRESHOLD` for plain cosine).
        new_threshold: below this a voice becomes a new speaker (default `threshold`); between the
            two it is attributed to the nearest speaker without updating them.
        max_speakers: bound on rows; the least recently seen are evicted beyond it.
        dims: modality -> feature dimension of new profiles (from the bundle), e.g.
            {"audio": 136, "visual": 35, "text": 384}.
        voice_dim: dimension of voice embeddings (256 for GE2E).
        scorer: a `VoiceScorer` (from the bundle); None compares by plain cosine.
        merge_threshold: a speaker with at most `voice_index.MAX_EXEMPLARS` voices (heard in this run) is
            merged into another when every one of its voices scores at least this against the
            other's centroid (default `threshold`).
            Online clustering splits a voice whose first utterances were atypical (a shout, a
            whisper); once the speaker's centroid has settled, the splinter is folded back.
            Two named (enrolled) speakers are never merged; a named one always survives.
        auto_merge: whether to merge splinters as above.
        retention_days: speakers not seen for this many days are forgotten (checked when the
            cache opens and then at most hourly; enrolled speakers too). None keeps them.
        key, key_file: encrypt the profiles and cached parameters at rest (`speaker_crypto.py`);
            default: $MLSAN_CACHE_KEY / $MLSAN_CACHE_KEY_FILE when set.
    """

    def __init__(self, path: str | Path, threshold: float | None = None, new_threshold: float | None = None,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS, dims: dict[str, int] | None = None,
                 voice_dim: int = VOICE_DIM, scorer=None, merge_threshold: float | None = None,
                 auto_merge: bool = True, retention_days: float | None = None, key: str | bytes | None = None,
                 key_file: str | Path | None = None) -> None:
        self.scorer = scorer
        if threshold is None:
            threshold = scorer.threshold if scorer is not None else DEFAULT_THRESHOLD
        self.threshold = float(threshold)
        self.merge_threshold = self.threshold if merge_threshold is None else float(merge_threshold)
        self.auto_merge = bool(auto_merge)
        self.new_threshold = self.threshold if new_threshold is None else float(new_threshold)
        if self.new_threshold > self.threshold:
            raise ValueError(f"new_threshold ({self.new_threshold}) must not exceed threshold ({self.threshold})")
        if max_speakers < 1:
            raise ValueError(f"max_speakers must be >= 1, got {max_speakers}")
        self.max_speakers, self.voice_dim = int(max_speakers), int(voice_dim)
        self.dims = dict(dims or {})
        if retention_days is not None and not retention_days > 0:
            raise ValueError(f"retention_days must be > 0 (or None to keep speakers), got {retention_days}")
        self.retention_days = retention_days
        self._lock = threading.RLock()
        self._store = SpeakerStore(path, self.voice_dim, key=key, key_file=key_file)
        self.path = self._store.path
        self._profiles: dict[int, SpeakerProfile] = self._store.profiles()
        self._index = VoiceIndex(scorer, self.voice_dim)  # in-memory matching (voice_index.py)
        self._reindex()
        self._expired_at = float("-inf")
        self.expire()

    @property
    def encrypted(self) -> bool:
        """Whether profiles and parameters are sealed at rest."""
        return self._store.encrypted

    def expire(self, now: float | None = None) -> list[int]:
        """Forget the speakers not seen for `retention_days` (nothing without a retention limit);
        returns their ids. Their freed pages are overwritten, as by `forget`."""
        if self.retention_days is None:
            return []
        now = time.time() if now is None else now
        with self._lock:
            self._expired_at = now
            gone = self._store.expire(now - self.retention_days * 86400.0)
            if gone:
                for sid in gone:
                    self._profiles.pop(sid, None)
                self._reindex()
                self._store.scrub()
                log.info("retention (%g days): forgot speakers %s", self.retention_days, gone)
            return gone

    @property
    def _conn(self):
        """The SQLite connection (for tests that inspect the file's settings)."""
        return self._store.conn

    def _reindex(self) -> None:
        self._index.rebuild(self._profiles)

    def _new_profile(self) -> SpeakerProfile:
        return SpeakerProfile(dims=dict(self.dims), voice_dim=self.voice_dim)

    # --- matching -----------------------------------------------------------------------------
    def identify(self, embedding: np.ndarray, update: bool = True, now: float | None = None) -> Match:
        """Who is speaking.

        Args:
            embedding: (voice_dim,) float32 voice embedding (normalised here).
            update: fold the embedding into the matched speaker's voice centroid and count the
                utterance (a new speaker is created from it); False only looks.
            now: unix time of the utterance (default: now).

        Returns:
            Match(speaker_id, similarity, is_new). With update=False a new voice gives speaker_id None.
        """
        e = _unit(embedding, self.voice_dim)
        now = time.time() if now is None else now
        if self.retention_days is not None and now - self._expired_at > 3600.0:  # days-long runs
            self.expire(now)
        with self._lock:
            sid, sim = self._index.nearest(e)
            if sid is not None and sim >= self.new_threshold:
                if update:
                    with self._store.transaction():
                        prof = self._profiles[sid]
                        moved = sim >= self.threshold  # (in the grey zone: attribute, do not move)
                        if moved:
                            prof.update({}, voice=e)
                        # no new version: the cached parameters serve this utterance, which they
                        # were computed for (from the earlier ones); `update_profile` bumps it
                        self._store.write_profile(sid, prof, now, utterances=1, bump=False)
                    if moved:
                        self._index.remember(sid, e, prof.voice_count)
                    if not self._index.refresh(sid, prof):  # O(D) for a known speaker, not O(N)
                        self._reindex()
                    sid = self._auto_merge(sid)
                return Match(sid, sim, False)
            if not update:
                return Match(None, sim, True)
            prof = self._new_profile()
            prof.update({}, voice=e)
            with self._store.transaction():
                new = self._store.insert(prof, None, now, utterances=1)
                evicted = self._store.evict(new, self.max_speakers)
            self._profiles[new] = prof
            for v in evicted:
                self._profiles.pop(v, None)
            self._index.remember(new, e, prof.voice_count)
            self._reindex()
            log.info("new speaker %d (nearest similarity %.3f)", new, sim)
            return Match(self._auto_merge(new), sim, True)

    def _auto_merge(self, sid: int) -> int:
        """Fold a splinter into `sid` or `sid` into another speaker (see `merge_threshold`);
        returns the id that now holds `sid`'s voices."""
        if not self.auto_merge:
            return sid
        counts = {s: p.voice_count for s, p in self._profiles.items()}
        found = self._index.merge_candidate(sid, counts, self._store.named_ids(), self.merge_threshold)
        if found is None:
            return sid
        keep, absorb, worst = found
        self._index.merged(keep, absorb, counts[keep] + counts[absorb])  # before: merge() re-indexes
        self.merge(keep, absorb, scrub=False)
        log.info("merged speaker %d into %d: each of its voices scores >= %.2f against it", absorb, keep, worst)
        return keep if sid in (keep, absorb) else sid

    # --- profiles and cached parameters -------------------------------------------------------
    def get_profile(self, speaker_id: int) -> SpeakerProfile:
        """A copy of the speaker's profile (modifying it changes nothing until `put_profile`)."""
        with self._lock:
            return SpeakerProfile.from_dict(self._require(speaker_id).to_dict())

    def put_profile(self, speaker_id: int, profile: SpeakerProfile) -> int:
        """Replace the speaker's profile; returns the new profile version (cached params go stale)."""
        with self._lock:
            self._require(speaker_id)
            with self._store.transaction():
                self._store.write_profile(speaker_id, profile, None)
                version = self._store.profile_version(speaker_id)
            self._profiles[speaker_id] = SpeakerProfile.from_dict(profile.to_dict())
            self._reindex()
            return int(version)

    def update_profile(self, speaker_id: int, features: dict[str, np.ndarray | None],
                       latent: np.ndarray | None = None, voice: np.ndarray | None = None) -> int:
        """Fold one utterance's observations in (`SpeakerProfile.update`), after its prediction.

        `identify(update=True)` has already folded the voice; pass voice only if it did not.
        Returns the new profile version.
        """
        with self._lock:
            prof = self.get_profile(speaker_id)
            prof.update(features, voice=voice, latent=latent)
            return self.put_profile(speaker_id, prof)

    def profile_version(self, speaker_id: int) -> int:
        with self._lock:
            return self._store.profile_version(speaker_id)

    def get_params(self, speaker_id: int) -> bytes | None:
        """The cached FiLM/gate parameters, or None when absent or computed from an older profile."""
        with self._lock:
            return self._store.params(speaker_id)

    def put_params(self, speaker_id: int, params: bytes, profile_version: int) -> None:
        """Cache parameters computed from profile version `profile_version`."""
        with self._lock:
            self._store.put_params(speaker_id, params, profile_version)

    # --- management ---------------------------------------------------------------------------
    def enroll(self, name: str, embeddings: np.ndarray | Sequence[np.ndarray], now: float | None = None) -> int:
        """Create (or add to) the speaker called `name` from (n, voice_dim) or (voice_dim,) embeddings."""
        if not name or not name.strip():
            raise ValueError("enroll needs a non-empty name")
        name = name.strip()
        embs = np.asarray(embeddings, np.float32).reshape(-1, self.voice_dim)
        units = [_unit(e, self.voice_dim) for e in embs]
        now = time.time() if now is None else now
        with self._lock:
            sid = self.resolve(name, missing_ok=True)
            prof = self._new_profile() if sid is None else self._profiles[sid]
            for u in units:
                prof.update({}, voice=u)
            with self._store.transaction():
                if sid is None:
                    sid = self._store.insert(prof, name, now, utterances=0)
                    evicted = self._store.evict(sid, self.max_speakers)
                else:
                    self._store.write_profile(sid, prof, now)
                    evicted = []
            self._profiles[sid] = prof
            for v in evicted:
                self._profiles.pop(v, None)
            self._reindex()
            return sid

    def resolve(self, id_or_name: int | str, missing_ok: bool = False) -> int | None:
        """Speaker id from an id (int or digits) or a display name."""
        with self._lock:
            if isinstance(id_or_name, int) or str(id_or_name).isdigit():
                if int(id_or_name) in self._profiles:
                    return int(id_or_name)
            if not isinstance(id_or_name, int):  # a name, or digits that are no id: try the names
                sid = self._store.id_of(str(id_or_name))
                if sid is not None:
                    return sid
            if missing_ok:
                return None
            raise KeyError(self._store.unknown(id_or_name))

    def rename(self, speaker_id: int | str, name: str | None) -> None:
        """Set (or with None clear) a speaker's display name; names are unique."""
        with self._lock:
            self._store.set_name(self.resolve(speaker_id), name)

    def merge(self, keep: int | str, absorb: int | str, scrub: bool = True) -> int:
        """Merge speaker `absorb` into `keep` (same person found twice); `absorb` is forgotten
        (its freed pages overwritten unless scrub=False)."""
        with self._lock:
            a, b = self.resolve(keep), self.resolve(absorb)
            if a == b:
                raise ValueError(f"cannot merge speaker {a} with itself")
            prof = self.get_profile(a)
            prof.merge(self._profiles[b])
            rb = self._store.row(b)
            with self._store.transaction():
                self._store.delete(b)
                self._store.write_profile(a, prof, rb["last_seen"], utterances=rb["utterances"])
                self._store.inherit(a, rb["first_seen"], rb["name"])
            self._profiles[a] = prof
            del self._profiles[b]
            self._reindex()
            if scrub:
                self._store.scrub()
            return a

    def forget(self, speaker_id: int | str) -> None:
        """Remove every trace of a speaker: row, profile, cached parameters, and the freed pages."""
        with self._lock:
            sid = self.resolve(speaker_id)
            with self._store.transaction():
                self._store.delete(sid)
            del self._profiles[sid]
            self._reindex()
            self._store.scrub()
            log.info("forgot speaker %d", sid)

    def name(self, speaker_id: int) -> str | None:
        """The speaker's display name, or None (unnamed or unknown)."""
        with self._lock:
            return self._store.name(speaker_id)

    def list(self) -> list[SpeakerInfo]:
        """All speakers, most recently seen first."""
        with self._lock:
            return [SpeakerInfo(voice_count=self._profiles[r["id"]].voice_count, **r) for r in self._store.rows()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._profiles)

    # --- export / import ----------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Write every speaker (names, profiles, times; not cached params) to a JSON file (0600)."""
        with self._lock:
            rows = self._store.export_rows()
        write_export(path, rows, self.voice_dim)

    def import_(self, path: str | Path) -> list[int]:
        """Add the speakers of an `export()` file (new ids; a clashing name is merged). Returns their ids."""
        speakers = read_export(path, self.voice_dim)
        ids = []
        with self._lock:
            for s in speakers:
                prof = SpeakerProfile.from_dict(s["profile"])
                existing = self.resolve(s["name"], missing_ok=True) if s.get("name") else None
                with self._store.transaction():
                    if existing is not None:
                        merged = self._profiles[existing]
                        merged.merge(prof)
                        self._store.write_profile(existing, merged, s["last_seen"], s["utterances"])
                        sid = existing
                    else:
                        sid = self._store.insert(prof, s.get("name"), s["first_seen"], s["utterances"])
                        self._store.set_last_seen(sid, s["last_seen"])
                        self._profiles[sid] = prof
                    evicted = self._store.evict(sid, self.max_speakers)
                for v in evicted:
                    self._profiles.pop(v, None)
                ids.append(sid)
            self._reindex()
        return [i for i in ids if i in self._profiles]

    # --- lifecycle ----------------------------------------------------------------------------
    def _require(self, speaker_id: int) -> SpeakerProfile:
        prof = self._profiles.get(speaker_id)
        if prof is None:
            raise KeyError(self._store.unknown(speaker_id))
        return prof

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def __enter__(self) -> "SpeakerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
