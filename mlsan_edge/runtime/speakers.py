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

Who is speaking (face first, voice as the fallback, names verified: `identify`) is
`speaker_matching.py`, with the verification of named persons in `named_persons.py`; storage
(SQLite, mode 0600, WAL, transactions, a corrupt file moved aside) `speaker_store.py`; the export
file `speaker_io.py`. The cache holds at most `max_speakers`; adding one more evicts the least
recently seen (unnamed speakers before enrolled ones). `forget()` deletes with `secure_delete`,
truncates the WAL and vacuums, so nothing of the speaker is left in the file.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mlsan_edge.config import VOICE_DIM
from mlsan_edge.profile import ModalityStats, SpeakerProfile
from mlsan_edge.runtime.face_identity import FACE_DIM, FACE_THRESHOLD
from mlsan_edge.runtime.named_persons import (  # noqa: F401 (re-exported)
    DEFAULT_LEARN_THRESHOLD, DEFAULT_NAMED_COSINE, DEFAULT_NAMED_THRESHOLD, NAMED_MARGIN, NAMED_MARGIN_COSINE,
    NamedPersons)
from mlsan_edge.runtime.person_keys import FaceIndex, PersonKeys
from mlsan_edge.runtime.speaker_io import read_export, write_export
from mlsan_edge.runtime.speaker_matching import Match, MatchingPolicy, unit_voice  # noqa: F401 (Match re-exported)
from mlsan_edge.runtime.speaker_store import SpeakerStore
from mlsan_edge.runtime.voice_index import VoiceIndex

log = logging.getLogger(__name__)

# Without a VoiceScorer (a bundle exported before it existed): cosine similarity of GE2E voice
# embeddings at or above which a voice is a known speaker. benchmarks/speaker_threshold.py
# (results/speaker_threshold.json, "cosine_merge") tunes it on streams of unseen RAVDESS actors:
# the same rule as for the scorer picks 0.775. With the bundle's scorer the threshold is the scorer's own.
DEFAULT_THRESHOLD = 0.775
DEFAULT_MAX_SPEAKERS = 200
# A voice shorter than this (s of speech) is too short to tell who it is (a "yes", a digit): it
# never creates, moves, binds or merges a person (issue #10: six people saying single digits all
# became one speaker).
MIN_VOICE_S = 1.0
# Named (enrolled) persons are verification targets (`named_persons.py`: enrolled voices one by
# one, learned voices, threshold and margin, no better unnamed match); their defaults live there.


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
    keys: tuple[str, ...] = ()  # what the person is known by: "voice", "face", "enrolled_voice"
    face_count: int = 0  # face descriptors folded into the face key

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["keys"] = list(self.keys)
        return d


class SpeakerCache(MatchingPolicy):
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
        named_threshold, named_margin, learn_threshold, compete_unnamed: how a voice is verified
            against named (enrolled) persons (`named_persons.NamedPersons`; defaults there).
        strict_names: a named person's id goes only to voices that verify (else the nearest
            cluster may be a named person's).
        retention_days: speakers not seen for this many days are forgotten (checked when the
            cache opens and then at most hourly; enrolled speakers too). None keeps them.
        key, key_file: encrypt the profiles and cached parameters at rest (`speaker_crypto.py`);
            default: $MLSAN_CACHE_KEY / $MLSAN_CACHE_KEY_FILE when set.
    """

    def __init__(self, path: str | Path, threshold: float | None = None, new_threshold: float | None = None,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS, dims: dict[str, int] | None = None,
                 voice_dim: int = VOICE_DIM, scorer=None, merge_threshold: float | None = None,
                 auto_merge: bool = True, retention_days: float | None = None, key: str | bytes | None = None,
                 key_file: str | Path | None = None, face_threshold: float = FACE_THRESHOLD,
                 min_voice_s: float = MIN_VOICE_S, named_threshold: float | None = None,
                 named_margin: float | None = None, strict_names: bool = True,
                 learn_threshold: float | None = None, compete_unnamed: bool = True) -> None:
        self.scorer = scorer
        self.face_threshold, self.min_voice_s = float(face_threshold), float(min_voice_s)
        self._named = NamedPersons(scorer is not None, named_threshold, named_margin, learn_threshold, compete_unnamed)
        self.named_threshold, self.named_margin = self._named.threshold, self._named.margin
        self.strict_names = bool(strict_names)
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
        self._restart_foreign_stats()
        self._keys: dict[int, PersonKeys] = {sid: PersonKeys.from_dict(d) for sid, d in self._store.identities().items()}
        self._index = VoiceIndex(scorer, self.voice_dim)  # in-memory matching (voice_index.py)
        self._faces = FaceIndex()
        self._reindex()
        self._expired_at = float("-inf")
        self.expire()

    def _restart_foreign_stats(self) -> None:
        """Profiles written by another front-end (a feature vector of another width than this
        bundle's `dims`) keep their voice and face, and their feature statistics start again: they
        describe features this version no longer computes. The reset is written with a new profile
        version, so parameters cached from the old statistics are never used."""
        stale = {}
        for sid, p in self._profiles.items():
            reset = [m for m, d in self.dims.items() if m in p.stats and p.stats[m].dim != d]
            for m in reset:
                stale.setdefault(m, (p.stats[m].dim, self.dims[m], []))[2].append(sid)
                p.dims[m], p.stats[m] = self.dims[m], ModalityStats(self.dims[m])
            if reset:
                with self._store.transaction():
                    self._store.write_profile(sid, p, None)
        for m, (old, new, sids) in stale.items():
            log.warning("speaker cache %s: %d speaker(s) hold %s statistics of %d values, this bundle computes %d "
                        "(another feature version); they keep their voices and faces and their %s statistics "
                        "start again", self.path, len(sids), m, old, new, m)

    def bind_params(self, owner: str) -> int:
        """Declare the model that computes and reads the cached FiLM/gate parameters (`owner`, e.g.
        `load.params_owner(stages)`): parameters cached by another model (an earlier bundle) are
        dropped, so each speaker's are recomputed from their profile on their next utterance.
        Returns how many were dropped."""
        with self._lock:
            n = self._store.bind_params(owner)
        if n:
            log.info("speaker cache %s: %d speakers' cached parameters came from another model; they are "
                     "recomputed on each speaker's next utterance", self.path, n)
        return n

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
        self._keys = {sid: k for sid, k in self._keys.items() if sid in self._profiles}
        self._index.rebuild(self._profiles)
        self._faces.rebuild(self._keys)

    def _new_profile(self) -> SpeakerProfile:
        return SpeakerProfile(dims=dict(self.dims), voice_dim=self.voice_dim)

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
    def enroll(self, name: str, embeddings: np.ndarray | Sequence[np.ndarray] | None = None,
               now: float | None = None, faces: np.ndarray | Sequence[np.ndarray] | None = None) -> int:
        """Create (or add to) the person called `name` from their voice, their face, or both.

        Args:
            embeddings: (n, voice_dim) or (voice_dim,) voice embeddings; they join the voice
                centroid and the enrolled voices a later voice is verified against.
            faces: (m, 128) or (128,) face descriptors (`face_identity.py`); they join the face key.
        """
        if not name or not name.strip():
            raise ValueError("enroll needs a non-empty name")
        if embeddings is None and faces is None:
            raise ValueError("enroll needs voice embeddings, face descriptors or both")
        name = name.strip()
        units = [] if embeddings is None else [
            unit_voice(e, self.voice_dim) for e in np.asarray(embeddings, np.float32).reshape(-1, self.voice_dim)]
        descs = [] if faces is None else list(np.asarray(faces, np.float32).reshape(-1, FACE_DIM))
        if not np.isfinite(np.asarray(descs)).all():
            raise ValueError("face descriptors must be finite")
        now = time.time() if now is None else now
        with self._lock:
            sid = self.resolve(name, missing_ok=True)
            prof = self._new_profile() if sid is None else self._profiles[sid]
            keys = PersonKeys() if sid is None else self._keys.get(sid, PersonKeys())
            for u in units:
                prof.update({}, voice=u)
                keys.add_enrolled(u)
            for d in descs:
                keys.add_face(d)
            with self._store.transaction():
                if sid is None:
                    sid = self._store.insert(prof, name, now, utterances=0)
                    evicted = self._store.evict(sid, self.max_speakers)
                else:
                    self._store.write_profile(sid, prof, now)
                    evicted = []
                self._store.write_identity(sid, keys.to_dict())
            self._profiles[sid] = prof
            self._keys[sid] = keys
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
            keys = PersonKeys.from_dict(self._keys.get(a, PersonKeys()).to_dict())
            keys.merge(self._keys.get(b, PersonKeys()))  # the face and enrolled voices go along
            rb = self._store.row(b)
            with self._store.transaction():
                self._store.delete(b)
                self._store.write_profile(a, prof, rb["last_seen"], utterances=rb["utterances"])
                self._store.inherit(a, rb["first_seen"], rb["name"])
                self._store.write_identity(a, keys.to_dict())
            self._profiles[a] = prof
            self._keys[a] = keys
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
            out = []
            for r in self._store.rows():
                k, vc = self._keys.get(r["id"], PersonKeys()), self._profiles[r["id"]].voice_count
                keys = tuple(n for n, has in (("voice", vc > 0), ("face", k.face_count > 0),
                                             ("enrolled_voice", k.enrol_count > 0)) if has)
                out.append(SpeakerInfo(voice_count=vc, keys=keys, face_count=k.face_count, **r))
            return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._profiles)

    # --- export / import ----------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Write every speaker (names, profiles, face and enrolled-voice keys, times; not cached params)
        to a JSON file (0600): biometric data, keep it as safe as the cache."""
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
                keys = PersonKeys.from_dict(s.get("identity"))
                existing = self.resolve(s["name"], missing_ok=True) if s.get("name") else None
                with self._store.transaction():
                    if existing is not None:
                        merged = self._profiles[existing]
                        merged.merge(prof)
                        self._store.write_profile(existing, merged, s["last_seen"], s["utterances"])
                        sid = existing
                        keys.merge(self._keys.get(sid, PersonKeys()))
                    else:
                        sid = self._store.insert(prof, s.get("name"), s["first_seen"], s["utterances"])
                        self._store.set_last_seen(sid, s["last_seen"])
                        self._profiles[sid] = prof
                    if keys:
                        self._store.write_identity(sid, keys.to_dict())
                        self._keys[sid] = keys
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
