"""SQLite storage of the speaker cache: schema, opening, corruption, transactions, rows.

One row per speaker holds the serialised `SpeakerProfile`, an optional unique display name,
first/last seen times, an utterance count, and an opaque blob of FiLM/gate parameters tagged with
the profile version it was computed from. No audio or images are ever stored: only embeddings and
statistics. Who is who (matching, merging) is `speakers.py`'s business, not this module's.

The file is created with mode 0600 (a folder created for it 0700; a wider mode on an existing
file is narrowed, with a warning) and written in WAL mode inside transactions; a corrupt file is
moved aside to `<name>.corrupt-<timestamp>` and replaced by an empty store, with a warning that
says where it went. A write that fails for lack of space (disk full) is rolled back and raised as
`CacheWriteError` (an OSError): the file stays as it was before the write. Deleted rows are
overwritten (`secure_delete`), and `scrub()` truncates the WAL and vacuums, so nothing of a
forgotten speaker is left in the file.

With a key (`speaker_crypto.py`: $MLSAN_CACHE_KEY or a key file) the profile, identity (face
descriptor centroid, enrolled and learned voices: biometric data like the voice) and params columns are sealed
with AES-256-GCM; names, ids and times stay in clear. The identity column was added after schema
version 1 shipped: a file without it gains it when opened (an additive change; older runtimes
ignore it).

Length: ~420 lines, a little over the ~400 guide: opening (permissions, corruption, keys,
schema migration) and the guarded writes (disk full, secure delete) are one storage contract and
read best together.

Not thread-safe on its own: `SpeakerCache` serialises access with its lock.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import stat
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlsan_edge.profile import SpeakerProfile
from mlsan_edge.runtime.speaker_crypto import CacheKeyError, Sealer, is_sealed, key_material

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _is_full(e: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL ("database or disk is full") or SQLITE_IOERR ("disk I/O error")."""
    code = getattr(e, "sqlite_errorcode", None)
    return code in (13, 10) or (code is not None and code & 0xFF in (13, 10)) or any(
        w in str(e) for w in ("is full", "disk I/O error"))

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
    utterances INTEGER NOT NULL DEFAULT 0,
    identity TEXT                          -- the person's other keys as JSON (face centroid, enrolled
                                           -- voices; speakers.py), sealed like the profile; NULL: none
);
CREATE INDEX IF NOT EXISTS speakers_last_seen ON speakers(last_seen);
"""


class CacheWriteError(OSError):
    """A write to the speaker cache failed for lack of space or an I/O error; it was rolled back."""


def _make_private_dirs(folder: Path) -> None:
    """Create `folder` and missing parents 0700 (folders that exist are left as they are)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask


def _create_private(path: Path) -> None:
    """Create an empty file readable only by its owner (0600), before SQLite opens it."""
    _make_private_dirs(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


def _narrow_mode(path: Path) -> None:
    """An existing cache file readable by others is made 0600 (SQLite gives its -wal/-shm the same mode)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        msg = f"speaker cache {path} was readable by others (mode {mode:o}); made it 0600"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=6)


class SpeakerStore:
    """The speakers table of one SQLite file.

    Args:
        path: SQLite file (created 0600), or ":memory:".
        voice_dim: dimension of the voice embeddings in the profiles (checked against the file).
        key, key_file: the encryption secret (`speaker_crypto.key_material`: default
            $MLSAN_CACHE_KEY or $MLSAN_CACHE_KEY_FILE; none: the cache is not encrypted).
    """

    def __init__(self, path: str | Path, voice_dim: int, key: str | bytes | None = None,
                 key_file: str | Path | None = None) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        self.voice_dim = int(voice_dim)
        self._material = key_material(key, key_file)
        self._sealer: Sealer | None = None
        self.conn: sqlite3.Connection | None = self._open()

    @property
    def encrypted(self) -> bool:
        return self._sealer is not None

    # --- opening, corruption, schema ----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if isinstance(self.path, Path):
            if not self.path.exists():
                _create_private(self.path)
            else:
                _narrow_mode(self.path)
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
            if "identity" not in [r[1] for r in conn.execute("PRAGMA table_info(speakers)")]:
                conn.execute("ALTER TABLE speakers ADD COLUMN identity TEXT")  # a cache from before face identity
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
        except BaseException:  # a wrong key, another voice_dim: not corruption, and nothing left open
            if conn is not None:
                conn.close()
            raise

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
        # SpeakerCache() -> SpeakerStore() -> _open -> _move_aside: point at SpeakerCache's caller
        warnings.warn(msg, RuntimeWarning, stacklevel=5)
        return aside

    def _check_meta(self, conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             [("schema_version", str(SCHEMA_VERSION)), ("voice_dim", str(self.voice_dim))])
            self._setup_key(conn, {})
            return
        self._setup_key(conn, meta)
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {meta.get('schema_version')} != {SCHEMA_VERSION}")
        if int(meta.get("voice_dim", -1)) != self.voice_dim:
            raise ValueError(f"speaker cache {self.path} holds {meta['voice_dim']}-d voice embeddings but this "
                             f"runtime makes {self.voice_dim}-d ones; use another --cache file")

    def _setup_key(self, conn: sqlite3.Connection, meta: dict) -> None:
        """Check (or, for an empty cache, set up) encryption against the key given."""
        if "kdf_salt" in meta:
            if self._material is None:
                raise CacheKeyError(f"speaker cache {self.path} is encrypted: set $MLSAN_CACHE_KEY or give its key "
                                    "file (--key-file / $MLSAN_CACHE_KEY_FILE)")
            self._sealer = Sealer(self._material, bytes.fromhex(meta["kdf_salt"]))
            self._sealer.verify(bytes.fromhex(meta["key_check"]), self.path)
            return
        if self._material is None:
            return
        if conn.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]:
            raise CacheKeyError(f"speaker cache {self.path} holds unencrypted speakers but a key was given; export "
                                "them without the key (`mlsan-edge speakers export`) and import them into a new "
                                "cache with it, or unset the key")
        salt = Sealer.new_salt()
        self._sealer = Sealer(self._material, salt)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("kdf_salt", salt.hex()), ("key_check", self._sealer.check_value().hex())])

    # --- (de)serialising the sealed columns ---------------------------------------------------
    def _dump_profile(self, profile: SpeakerProfile):
        text = json.dumps(profile.to_dict())
        return text if self._sealer is None else sqlite3.Binary(self._sealer.seal(text.encode(), "profile"))

    def _load_profile(self, value) -> dict:
        if is_sealed(value) or self._sealer is not None:
            if self._sealer is None:
                raise CacheKeyError(f"speaker cache {self.path} holds encrypted profiles but no key was given")
            value = self._sealer.open(bytes(value), "profile").decode()
        return json.loads(value)

    def _dump_identity(self, identity: dict | None):
        if not identity:
            return None
        text = json.dumps(identity)
        return text if self._sealer is None else sqlite3.Binary(self._sealer.seal(text.encode(), "identity"))

    def _load_identity(self, value) -> dict | None:
        if value is None:
            return None
        if is_sealed(value) or self._sealer is not None:
            if self._sealer is None:
                raise CacheKeyError(f"speaker cache {self.path} holds encrypted identities but no key was given")
            value = self._sealer.open(bytes(value), "identity").decode()
        return json.loads(value)

    def write_identity(self, sid: int, identity: dict | None) -> None:
        """Replace the speaker's identity keys (JSON-able dict of lists and numbers; None clears)."""
        self.conn.execute("UPDATE speakers SET identity = ? WHERE id = ?", (self._dump_identity(identity), sid))

    def identities(self) -> dict[int, dict]:
        """Every speaker's identity keys by id (speakers without any are left out)."""
        rows = self.conn.execute("SELECT id, identity FROM speakers WHERE identity IS NOT NULL").fetchall()
        return {sid: self._load_identity(v) for sid, v in rows}

    def unknown(self, what) -> str:
        """The message of the KeyError for a speaker that is not in the store."""
        return f"no speaker {what!r} in {self.path}; `mlsan-edge speakers list --cache {self.path}` shows them"

    # --- transactions and writes --------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception) around the writes inside."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError) and _is_full(e):
                raise CacheWriteError(errno.ENOSPC, f"speaker cache {self.path}: the write failed ({e}); it was "
                                      "rolled back and the cache is as it was; free space on its disk") from e
            raise

    def insert(self, profile: SpeakerProfile, name: str | None, now: float, utterances: int) -> int:
        """A new row; returns its id."""
        cur = self.conn.execute(
            "INSERT INTO speakers (name, profile, first_seen, last_seen, utterances) VALUES (?, ?, ?, ?, ?)",
            (name, self._dump_profile(profile), now, now, utterances))
        return int(cur.lastrowid)

    def write_profile(self, sid: int, profile: SpeakerProfile, seen: float | None, utterances: int = 0,
                      bump: bool = True) -> None:
        """Replace the profile, add `utterances`, move last_seen up to `seen`; `bump` makes a new
        profile version (the cached parameters go stale)."""
        sql = ("UPDATE speakers SET profile = ?, utterances = utterances + ?"
               + (", profile_version = profile_version + 1" if bump else ""))
        args: list = [self._dump_profile(profile), utterances]
        if seen is not None:
            sql += ", last_seen = MAX(last_seen, ?)"
            args.append(seen)
        self.conn.execute(sql + " WHERE id = ?", (*args, sid))

    def evict(self, keep: int, max_speakers: int) -> list[int]:
        """Delete the least recently seen rows beyond `max_speakers` (unnamed ones first, never
        `keep`); returns their ids."""
        n = self.conn.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]
        if n <= max_speakers:
            return []
        victims = [r[0] for r in self.conn.execute(
            "SELECT id FROM speakers WHERE id != ? ORDER BY (name IS NOT NULL), last_seen LIMIT ?",
            (keep, n - max_speakers))]
        self.conn.executemany("DELETE FROM speakers WHERE id = ?", [(v,) for v in victims])
        log.info("speaker cache full (%d): evicted least recently seen %s", max_speakers, victims)
        return victims

    def delete(self, sid: int) -> None:
        self.conn.execute("DELETE FROM speakers WHERE id = ?", (sid,))

    def inherit(self, sid: int, first_seen: float, name: str | None) -> None:
        """Take an earlier first_seen, and `name` when the row has none (merging two speakers)."""
        self.conn.execute("UPDATE speakers SET first_seen = MIN(first_seen, ?), name = COALESCE(name, ?) "
                          "WHERE id = ?", (first_seen, name, sid))

    def set_last_seen(self, sid: int, t: float) -> None:
        self.conn.execute("UPDATE speakers SET last_seen = ? WHERE id = ?", (t, sid))

    def set_name(self, sid: int, name: str | None) -> None:
        """Rename (ValueError when another speaker has the name)."""
        try:
            with self.transaction() as conn:
                conn.execute("UPDATE speakers SET name = ? WHERE id = ?", (name, sid))
        except sqlite3.IntegrityError as e:
            raise ValueError(f"the name {name!r} is already used by another speaker; "
                             "merge the two or pick another name") from e

    def put_params(self, sid: int, params: bytes, profile_version: int) -> None:
        """Cache parameters computed from profile version `profile_version` (KeyError: no such speaker)."""
        with self.transaction() as conn:
            cur = conn.execute("UPDATE speakers SET params = ?, params_version = ? WHERE id = ?",
                               (sqlite3.Binary(self._seal_params(params)), int(profile_version), sid))
            if cur.rowcount == 0:
                raise KeyError(self.unknown(sid))

    def bind_params(self, owner: str) -> int:
        """Cached parameters are a model's output: when `owner` (the model that will read them)
        differs from the one recorded, every cached parameter is dropped and `owner` recorded.
        Returns how many were dropped."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'params_owner'").fetchone()
        if row is not None and row[0] == owner:
            return 0
        with self.transaction() as conn:
            n = conn.execute("UPDATE speakers SET params = NULL, params_version = NULL "
                             "WHERE params IS NOT NULL").rowcount
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('params_owner', ?)", (owner,))
        return int(n)

    def _seal_params(self, params: bytes) -> bytes:
        return params if self._sealer is None else self._sealer.seal(params, "params")

    def expire(self, cutoff: float) -> list[int]:
        """Delete every speaker last seen before `cutoff` (unix time, s); returns their ids."""
        with self.transaction() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM speakers WHERE last_seen < ?", (cutoff,))]
            conn.executemany("DELETE FROM speakers WHERE id = ?", [(i,) for i in ids])
        return ids

    # --- reads --------------------------------------------------------------------------------
    def profiles(self) -> dict[int, SpeakerProfile]:
        """Every speaker's profile by id."""
        rows = self.conn.execute("SELECT id, profile FROM speakers").fetchall()
        return {sid: SpeakerProfile.from_dict(self._load_profile(p)) for sid, p in rows}

    def profile_version(self, sid: int) -> int:
        row = self.conn.execute("SELECT profile_version FROM speakers WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise KeyError(self.unknown(sid))
        return int(row[0])

    def params(self, sid: int) -> bytes | None:
        """The cached parameters, or None when absent or computed from an older profile version."""
        row = self.conn.execute("SELECT params, params_version, profile_version FROM speakers WHERE id = ?",
                                (sid,)).fetchone()
        if row is None:
            raise KeyError(self.unknown(sid))
        params, pv, version = row
        if params is None or pv != version:
            return None
        return bytes(params) if self._sealer is None else self._sealer.open(bytes(params), "params")

    def name(self, sid: int) -> str | None:
        row = self.conn.execute("SELECT name FROM speakers WHERE id = ?", (sid,)).fetchone()
        return None if row is None else row[0]

    def id_of(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def named_ids(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM speakers WHERE name IS NOT NULL")]

    def row(self, sid: int) -> dict:
        """name, first_seen, last_seen, utterances and profile_version of one speaker."""
        r = self.conn.execute("SELECT name, first_seen, last_seen, utterances, profile_version FROM speakers "
                              "WHERE id = ?", (sid,)).fetchone()
        if r is None:
            raise KeyError(self.unknown(sid))
        return dict(zip(("name", "first_seen", "last_seen", "utterances", "profile_version"), r))

    def rows(self) -> list[dict]:
        """Every speaker (id, name, times, utterances, profile_version), most recently seen first."""
        rows = self.conn.execute("SELECT id, name, utterances, first_seen, last_seen, profile_version "
                                 "FROM speakers ORDER BY last_seen DESC").fetchall()
        keys = ("id", "name", "utterances", "first_seen", "last_seen", "profile_version")
        return [dict(zip(keys, r)) for r in rows]

    def export_rows(self) -> list[dict]:
        """Every speaker with its profile (as a dict) and identity keys (when any), by id; no cached parameters."""
        rows = self.conn.execute("SELECT id, name, profile, first_seen, last_seen, utterances, identity "
                                 "FROM speakers ORDER BY id").fetchall()
        out = []
        for r in rows:
            d = {"id": r[0], "name": r[1], "profile": self._load_profile(r[2]), "first_seen": r[3],
                 "last_seen": r[4], "utterances": r[5]}
            identity = self._load_identity(r[6])
            if identity:
                d["identity"] = identity
            out.append(d)
        return out

    # --- lifecycle ----------------------------------------------------------------------------
    def scrub(self) -> None:
        """Push deletions out of the WAL, then rewrite the file so no freed page keeps old bytes."""
        if isinstance(self.path, Path):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.execute("VACUUM")
        if isinstance(self.path, Path):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Checkpoint the WAL into the file and close (idempotent)."""
        if self.conn is not None:
            if isinstance(self.path, Path):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()
            self.conn = None
