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

The file is created with mode 0600 and written in WAL mode inside transactions; a corrupt file
is moved aside to `<name>.corrupt-<timestamp>` and replaced by an empty cache, with a warning.
The cache holds at most `max_speakers`; adding one more evicts the least recently seen
(unnamed speakers before enrolled ones). `forget()` deletes with `secure_delete`, truncates the
WAL and vacuums, so nothing of the speaker is left in the file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from mlsan_edge.config import VOICE_DIM
from mlsan_edge.profile import SpeakerProfile
from mlsan_edge.runtime.voice_index import VoiceIndex

log = logging.getLogger(__name__)

# Without a VoiceScorer (a bundle exported before it existed): cosine similarity of GE2E voice
# embeddings at or above which a voice is a known speaker. benchmarks/speaker_threshold.py
# (results/speaker_threshold.json, "cosine_merge") tunes it on streams of unseen RAVDESS actors:
# the same rule as for the scorer picks 0.775. With the bundle's scorer the threshold is the scorer's own.
DEFAULT_THRESHOLD = 0.775
DEFAULT_MAX_SPEAKERS = 200
SCHEMA_VERSION = 1
EXPORT_FORMAT = "mlsan-speaker-cache"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so old logs never point at a new person
    name TEXT UNIQUE,
    profile TEXT NOT NULL,                 -- SpeakerProfile.to_dict() as JSON
    profile_version INTEGER NOT NULL DEFAULT 1,
    params BLOB,                           -- cached FiLM/gate parameters (opaque to the cache)
    params_version INTEGER,                -- profile_version the params were computed from
    first_seen REAL NOT NULL,              -- unix time, s
    last_seen REAL NOT NULL,
    utterances INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS speakers_last_seen ON speakers(last_seen);
"""


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


def _create_private(path: Path) -> None:
    """Create an empty file readable only by its owner (0600), before SQLite opens it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


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
    """

    def __init__(self, path: str | Path, threshold: float | None = None, new_threshold: float | None = None,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS, dims: dict[str, int] | None = None,
                 voice_dim: int = VOICE_DIM, scorer=None, merge_threshold: float | None = None,
                 auto_merge: bool = True) -> None:
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
        self.path = path if str(path) == ":memory:" else Path(path)
        self._lock = threading.RLock()
        self._conn = self._open()
        self._profiles: dict[int, SpeakerProfile] = {}
        self._index = VoiceIndex(scorer, self.voice_dim)  # in-memory matching (voice_index.py)
        self._load()

    # --- opening, corruption, schema ----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if isinstance(self.path, Path) and not self.path.exists():
            _create_private(self.path)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not just unlinked
        if isinstance(self.path, Path):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
        return conn

    def _open(self, retry: bool = True) -> sqlite3.Connection:
        conn = None
        try:
            conn = self._connect()
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
            conn.executescript(_SCHEMA)
            self._check_meta(conn)
            return conn
        except sqlite3.OperationalError:
            # locked, unwritable, disk full...: not corruption, so never move the file aside
            if conn is not None:
                conn.close()
            raise
        except sqlite3.DatabaseError as e:  # "file is not a database", "disk image is malformed"
            if conn is not None:
                conn.close()
            if not retry or not isinstance(self.path, Path) or not self.path.exists():
                raise
            self._move_aside(e)
            return self._open(retry=False)

    def _move_aside(self, error: Exception) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        msg = (f"speaker cache {self.path} is corrupt ({error}); moved it to {aside} and started an "
               "empty cache: known speakers will be re-learned (or re-import an export)")
        log.error(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        return aside

    def _check_meta(self, conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             [("schema_version", str(SCHEMA_VERSION)), ("voice_dim", str(self.voice_dim))])
            return
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {meta.get('schema_version')} != {SCHEMA_VERSION}")
        if int(meta.get("voice_dim", -1)) != self.voice_dim:
            raise ValueError(f"speaker cache {self.path} holds {meta['voice_dim']}-d voice embeddings but this "
                             f"runtime makes {self.voice_dim}-d ones; use another --cache file")

    def _load(self) -> None:
        rows = self._conn.execute("SELECT id, profile FROM speakers").fetchall()
        self._profiles = {sid: SpeakerProfile.from_dict(json.loads(p)) for sid, p in rows}
        self._reindex()

    def _reindex(self) -> None:
        self._index.rebuild(self._profiles)

    # --- transactions -------------------------------------------------------------------------
    def _tx(self):
        conn = self._conn

        class _Tx:
            def __enter__(self_):
                conn.execute("BEGIN IMMEDIATE")
                return conn

            def __exit__(self_, exc_type, exc, tb):
                conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _Tx()

    def _new_profile(self) -> SpeakerProfile:
        return SpeakerProfile(dims=dict(self.dims), voice_dim=self.voice_dim)

    def _insert(self, conn, profile: SpeakerProfile, name: str | None, now: float, utterances: int) -> int:
        cur = conn.execute(
            "INSERT INTO speakers (name, profile, first_seen, last_seen, utterances) VALUES (?, ?, ?, ?, ?)",
            (name, json.dumps(profile.to_dict()), now, now, utterances))
        return int(cur.lastrowid)

    def _write_profile(self, conn, sid: int, profile: SpeakerProfile, seen: float | None, utterances: int = 0,
                       bump: bool = True) -> None:
        sql = ("UPDATE speakers SET profile = ?, utterances = utterances + ?"
               + (", profile_version = profile_version + 1" if bump else ""))
        args: list = [json.dumps(profile.to_dict()), utterances]
        if seen is not None:
            sql += ", last_seen = MAX(last_seen, ?)"
            args.append(seen)
        conn.execute(sql + " WHERE id = ?", (*args, sid))

    def _evict(self, conn, keep: int) -> list[int]:
        n = conn.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]
        if n <= self.max_speakers:
            return []
        victims = [r[0] for r in conn.execute(
            "SELECT id FROM speakers WHERE id != ? ORDER BY (name IS NOT NULL), last_seen LIMIT ?",
            (keep, n - self.max_speakers))]
        conn.executemany("DELETE FROM speakers WHERE id = ?", [(v,) for v in victims])
        log.info("speaker cache full (%d): evicted least recently seen %s", self.max_speakers, victims)
        return victims

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
        with self._lock:
            sid, sim = self._index.nearest(e)
            if sid is not None and sim >= self.new_threshold:
                if update:
                    with self._tx() as conn:
                        prof = self._profiles[sid]
                        moved = sim >= self.threshold  # (in the grey zone: attribute, do not move)
                        if moved:
                            prof.update({}, voice=e)
                        # no new version: the cached parameters serve this utterance, which they
                        # were computed for (from the earlier ones); `update_profile` bumps it
                        self._write_profile(conn, sid, prof, now, utterances=1, bump=False)
                    if moved:
                        self._index.remember(sid, e, prof.voice_count)
                    self._reindex()
                    sid = self._auto_merge(sid)
                return Match(sid, sim, False)
            if not update:
                return Match(None, sim, True)
            prof = self._new_profile()
            prof.update({}, voice=e)
            with self._tx() as conn:
                new = self._insert(conn, prof, None, now, utterances=1)
                evicted = self._evict(conn, keep=new)
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
        named = [r[0] for r in self._conn.execute("SELECT id FROM speakers WHERE name IS NOT NULL")]
        counts = {s: p.voice_count for s, p in self._profiles.items()}
        found = self._index.merge_candidate(sid, counts, named, self.merge_threshold)
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
            with self._tx() as conn:
                self._write_profile(conn, speaker_id, profile, None)
                version = conn.execute("SELECT profile_version FROM speakers WHERE id = ?", (speaker_id,)).fetchone()[0]
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
            row = self._conn.execute("SELECT profile_version FROM speakers WHERE id = ?", (speaker_id,)).fetchone()
            if row is None:
                raise KeyError(self._unknown(speaker_id))
            return int(row[0])

    def get_params(self, speaker_id: int) -> bytes | None:
        """The cached FiLM/gate parameters, or None when absent or computed from an older profile."""
        with self._lock:
            row = self._conn.execute("SELECT params, params_version, profile_version FROM speakers WHERE id = ?",
                                     (speaker_id,)).fetchone()
            if row is None:
                raise KeyError(self._unknown(speaker_id))
            params, pv, version = row
            return bytes(params) if params is not None and pv == version else None

    def put_params(self, speaker_id: int, params: bytes, profile_version: int) -> None:
        """Cache parameters computed from profile version `profile_version`."""
        with self._lock, self._tx() as conn:
            cur = conn.execute("UPDATE speakers SET params = ?, params_version = ? WHERE id = ?",
                               (sqlite3.Binary(params), int(profile_version), speaker_id))
            if cur.rowcount == 0:
                raise KeyError(self._unknown(speaker_id))

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
            with self._tx() as conn:
                if sid is None:
                    sid = self._insert(conn, prof, name, now, utterances=0)
                    evicted = self._evict(conn, keep=sid)
                else:
                    self._write_profile(conn, sid, prof, now)
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
                row = self._conn.execute("SELECT id FROM speakers WHERE name = ?", (str(id_or_name),)).fetchone()
                if row is not None:
                    return int(row[0])
            if missing_ok:
                return None
            raise KeyError(self._unknown(id_or_name))

    def rename(self, speaker_id: int | str, name: str | None) -> None:
        """Set (or with None clear) a speaker's display name; names are unique."""
        with self._lock:
            sid = self.resolve(speaker_id)
            try:
                with self._tx() as conn:
                    conn.execute("UPDATE speakers SET name = ? WHERE id = ?", (name, sid))
            except sqlite3.IntegrityError as e:
                raise ValueError(f"the name {name!r} is already used by another speaker; "
                                 "merge the two or pick another name") from e

    def merge(self, keep: int | str, absorb: int | str, scrub: bool = True) -> int:
        """Merge speaker `absorb` into `keep` (same person found twice); `absorb` is forgotten
        (its freed pages overwritten unless scrub=False)."""
        with self._lock:
            a, b = self.resolve(keep), self.resolve(absorb)
            if a == b:
                raise ValueError(f"cannot merge speaker {a} with itself")
            prof = self.get_profile(a)
            prof.merge(self._profiles[b])
            rb = self._conn.execute("SELECT name, first_seen, last_seen, utterances FROM speakers WHERE id = ?",
                                    (b,)).fetchone()
            with self._tx() as conn:
                conn.execute("DELETE FROM speakers WHERE id = ?", (b,))
                self._write_profile(conn, a, prof, rb[2], utterances=rb[3])
                conn.execute("UPDATE speakers SET first_seen = MIN(first_seen, ?), name = COALESCE(name, ?) "
                             "WHERE id = ?", (rb[1], rb[0], a))
            self._profiles[a] = prof
            del self._profiles[b]
            self._reindex()
            if scrub:
                self._scrub()
            return a

    def forget(self, speaker_id: int | str) -> None:
        """Remove every trace of a speaker: row, profile, cached parameters, and the freed pages."""
        with self._lock:
            sid = self.resolve(speaker_id)
            with self._tx() as conn:
                conn.execute("DELETE FROM speakers WHERE id = ?", (sid,))
            del self._profiles[sid]
            self._reindex()
            self._scrub()
            log.info("forgot speaker %d", sid)

    def _scrub(self) -> None:
        """Push deletions out of the WAL, then rewrite the file so no freed page keeps old bytes."""
        if isinstance(self.path, Path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.execute("VACUUM")
        if isinstance(self.path, Path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def name(self, speaker_id: int) -> str | None:
        """The speaker's display name, or None (unnamed or unknown)."""
        with self._lock:
            row = self._conn.execute("SELECT name FROM speakers WHERE id = ?", (speaker_id,)).fetchone()
            return None if row is None else row[0]

    def list(self) -> list[SpeakerInfo]:
        """All speakers, most recently seen first."""
        with self._lock:
            rows = self._conn.execute("SELECT id, name, utterances, first_seen, last_seen, profile_version "
                                      "FROM speakers ORDER BY last_seen DESC").fetchall()
            return [SpeakerInfo(id=r[0], name=r[1], utterances=r[2], voice_count=self._profiles[r[0]].voice_count,
                                first_seen=r[3], last_seen=r[4], profile_version=r[5]) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return len(self._profiles)

    # --- export / import ----------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Write every speaker (names, profiles, times; not cached params) to a JSON file (0600)."""
        with self._lock:
            rows = self._conn.execute("SELECT id, name, profile, first_seen, last_seen, utterances FROM speakers "
                                      "ORDER BY id").fetchall()
        doc = {"format": EXPORT_FORMAT, "schema_version": SCHEMA_VERSION, "voice_dim": self.voice_dim,
               "speakers": [{"id": r[0], "name": r[1], "profile": json.loads(r[2]), "first_seen": r[3],
                             "last_seen": r[4], "utterances": r[5]} for r in rows]}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)

    def import_(self, path: str | Path) -> list[int]:
        """Add the speakers of an `export()` file (new ids; a clashing name is merged). Returns their ids."""
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != EXPORT_FORMAT or int(doc.get("voice_dim", -1)) != self.voice_dim:
            raise ValueError(f"{path} is not a {self.voice_dim}-d {EXPORT_FORMAT} export "
                             f"(format={doc.get('format')!r}, voice_dim={doc.get('voice_dim')})")
        ids = []
        with self._lock:
            for s in doc["speakers"]:
                prof = SpeakerProfile.from_dict(s["profile"])
                existing = self.resolve(s["name"], missing_ok=True) if s.get("name") else None
                with self._tx() as conn:
                    if existing is not None:
                        merged = self._profiles[existing]
                        merged.merge(prof)
                        self._write_profile(conn, existing, merged, s["last_seen"], s["utterances"])
                        sid = existing
                    else:
                        sid = self._insert(conn, prof, s.get("name"), s["first_seen"], s["utterances"])
                        conn.execute("UPDATE speakers SET last_seen = ? WHERE id = ?", (s["last_seen"], sid))
                        self._profiles[sid] = prof
                    evicted = self._evict(conn, keep=sid)
                for v in evicted:
                    self._profiles.pop(v, None)
                ids.append(sid)
            self._reindex()
        return [i for i in ids if i in self._profiles]

    # --- lifecycle ----------------------------------------------------------------------------
    def _require(self, speaker_id: int) -> SpeakerProfile:
        prof = self._profiles.get(speaker_id)
        if prof is None:
            raise KeyError(self._unknown(speaker_id))
        return prof

    def _unknown(self, what) -> str:
        return f"no speaker {what!r} in {self.path}; `mlsan-edge speakers list --cache {self.path}` shows them"

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if isinstance(self.path, Path):
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "SpeakerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
