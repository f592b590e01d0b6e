"""The speaker cache's storage as biometric data: file 0600 and folder 0700, a corrupt file kept
aside (and where it went said), disk full rolled back, forgotten speakers' bytes gone from the
file, retention, encryption at rest with a clear error for a wrong or missing key, no audio."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import warnings

import numpy as np
import pytest

from mlsan_edge.runtime.speaker_crypto import CacheKeyError
from mlsan_edge.runtime.speaker_store import CacheWriteError, SpeakerStore
from mlsan_edge.runtime.speakers import SpeakerCache

DIMS = {"audio": 8, "visual": 4, "text": 6}
KEY = "0123456789abcdef0123456789abcdef"


def voice(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    return v / np.linalg.norm(v)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def raw_bytes(db) -> bytes:
    """The cache file and its WAL/SHM side files, as a thief would copy them."""
    out = b""
    for suffix in ("", "-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


def test_file_0600_and_a_folder_made_for_it_0700(tmp_path):
    db = tmp_path / "robot" / "state" / "speakers.db"
    with SpeakerCache(db, dims=DIMS) as c:
        c.enroll("ann", voice(0))
        assert mode(db) == 0o600
        for side in ("-wal", "-shm"):
            p = db.with_name(db.name + side)
            assert not p.exists() or mode(p) & 0o077 == 0
    assert mode(tmp_path / "robot") == 0o700 and mode(tmp_path / "robot" / "state") == 0o700


def test_a_cache_readable_by_others_is_narrowed_with_a_warning(tmp_path):
    db = tmp_path / "speakers.db"
    SpeakerCache(db, dims=DIMS).close()
    os.chmod(db, 0o644)
    with pytest.warns(RuntimeWarning, match="readable by others"):
        SpeakerCache(db, dims=DIMS).close()
    assert mode(db) == 0o600


def test_corrupt_cache_is_kept_aside_and_the_warning_says_where(tmp_path):
    db = tmp_path / "speakers.db"
    with SpeakerCache(db, dims=DIMS) as c:
        c.enroll("ann", voice(0))
    raw = bytearray(db.read_bytes())
    raw[100:4096] = os.urandom(4096 - 100)  # the header's tail and the schema page
    db.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=r"moved it to .*speakers\.db\.corrupt-") as w:
        with SpeakerCache(db, dims=DIMS) as c:
            assert len(c) == 0
            c.enroll("bob", voice(1))  # a fresh cache works
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)  # kept, byte for byte
    assert str(aside[0]) in str(w[0].message)


def test_disk_full_during_a_write_rolls_back_and_keeps_what_was_there(tmp_path):
    """SQLite's max_page_count makes the file unable to grow: the same SQLITE_FULL a full disk gives."""
    db = tmp_path / "speakers.db"
    c = SpeakerCache(db, dims={"audio": 2000}, voice_dim=256)
    for i in range(3):
        c.enroll(f"s{i}", voice(i))
    pages = c._conn.execute("PRAGMA page_count").fetchone()[0]
    c._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(CacheWriteError, match="rolled back") as e:
        for i in range(3, 50):
            c.enroll(f"s{i}", voice(i))
    assert isinstance(e.value, OSError) and e.value.errno == 28  # ENOSPC: the CLI answers in one line
    c.close()
    with SpeakerCache(db, dims={"audio": 2000}) as c2:
        names = {s.name for s in c2.list()}
        assert {"s0", "s1", "s2"} <= names
        assert c2._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_forgotten_speakers_embedding_bytes_are_not_in_the_file(tmp_path):
    """The proof asked in issue #13: the forgotten voice's stored values (the profile JSON's
    numbers, and its float32/float64 bytes for good measure) are found in the file before and
    nowhere after; the other speaker's still are."""
    db = tmp_path / "speakers.db"
    c = SpeakerCache(db, dims=DIMS)
    gone = c.enroll("Gone", voice(1))
    kept = c.enroll("Kept", voice(2))
    c.put_params(gone, b"\x01\x02PARAMS-OF-GONE" * 8, c.profile_version(gone))

    def needles(sid):
        v = np.asarray(json.loads(c._store.conn.execute("SELECT profile FROM speakers WHERE id=?", (sid,))
                                  .fetchone()[0])["voice_sum"])
        return [json.dumps(float(x)).encode() for x in v[:8]] + [v.astype(np.float32).tobytes()[:64],
                                                                 v.astype(np.float64).tobytes()[:64]]

    n_gone, n_kept = needles(gone), needles(kept)
    c._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = raw_bytes(db)
    assert sum(n in before for n in n_gone[:8]) == 8  # the JSON numbers are there to be found
    c.forget("Gone")
    c.close()
    after = raw_bytes(db)
    assert not any(n in after for n in n_gone)
    assert b"PARAMS-OF-GONE" not in after and b"Gone" not in after
    assert sum(n in after for n in n_kept[:8]) == 8


def test_retention_expires_speakers_not_seen_for_n_days(tmp_path):
    db = tmp_path / "speakers.db"
    day = 86400.0
    now = time.time()
    with SpeakerCache(db, dims=DIMS) as c:
        c.enroll("Ozymandias-Old", voice(0), now=now - 40 * day)
        c.enroll("recent", voice(1), now=now - 2 * day)
    with SpeakerCache(db, dims=DIMS, retention_days=30) as c:
        assert {s.name for s in c.list()} == {"recent"}  # expired when the cache opened
        assert c.expire(now=now + 27 * day) == []  # "recent" unseen for 29 days: kept
        rid = c.resolve("recent")
        assert c.expire(now=now + 29 * day) == [rid] and len(c) == 0  # 31 days: gone
    assert b"Ozymandias-Old" not in raw_bytes(db)
    with pytest.raises(ValueError, match="retention_days"):
        SpeakerCache(":memory:", retention_days=0)


def test_encrypted_cache_round_trip_and_nothing_biometric_in_clear(tmp_path):
    db = tmp_path / "speakers.db"
    with SpeakerCache(db, dims=DIMS, key=KEY) as c:
        assert c.encrypted
        sid = c.enroll("ann", voice(3))
        c.put_params(sid, b"PARAMS" * 10, c.profile_version(sid))
        prof = c.get_profile(sid)
    with SpeakerCache(db, dims=DIMS, key=KEY) as c:
        assert c.get_params(sid) == b"PARAMS" * 10
        np.testing.assert_allclose(c.get_profile(sid).voice_sum, prof.voice_sum)
        assert c.identify(voice(3)).speaker_id == sid
    raw = raw_bytes(db)
    assert b"voice_sum" not in raw and b"PARAMS" not in raw
    assert json.dumps(float(prof.voice_sum[0])).encode() not in raw
    assert b"ann" in raw  # names stay in clear (documented)


def test_wrong_missing_and_unusable_keys_are_clear_errors(tmp_path, monkeypatch):
    db = tmp_path / "speakers.db"
    with SpeakerCache(db, dims=DIMS, key=KEY) as c:
        c.enroll("ann", voice(0))
    with pytest.raises(CacheKeyError, match="wrong key"):
        SpeakerCache(db, dims=DIMS, key="another key, long enough")
    monkeypatch.delenv("MLSAN_CACHE_KEY", raising=False)
    monkeypatch.delenv("MLSAN_CACHE_KEY_FILE", raising=False)
    with pytest.raises(CacheKeyError, match="is encrypted: set \\$MLSAN_CACHE_KEY"):
        SpeakerCache(db, dims=DIMS)
    monkeypatch.setenv("MLSAN_CACHE_KEY", KEY)  # the environment variable is the default key
    with SpeakerCache(db, dims=DIMS) as c:
        assert [s.name for s in c.list()] == ["ann"]
    monkeypatch.delenv("MLSAN_CACHE_KEY")
    keyfile = tmp_path / "cache.key"
    keyfile.write_text(KEY + "\n")
    with SpeakerCache(db, dims=DIMS, key_file=keyfile) as c:
        assert len(c) == 1
    with pytest.raises(CacheKeyError, match="at least 16"):
        SpeakerCache(tmp_path / "x.db", dims=DIMS, key="short")
    plain = tmp_path / "plain.db"
    with SpeakerCache(plain, dims=DIMS) as c:
        c.enroll("bob", voice(1))
    with pytest.raises(CacheKeyError, match="unencrypted speakers"):
        SpeakerCache(plain, dims=DIMS, key=KEY)


def test_a_key_without_the_secure_extra_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_cryptography(name, *a, **k):
        if name.startswith("cryptography"):
            raise ImportError("No module named 'cryptography'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cryptography)
    with pytest.raises(CacheKeyError, match=r"mlsan-edge\[secure\]"):
        SpeakerCache(tmp_path / "c.db", dims=DIMS, key=KEY)


def test_cli_key_file_export_import_and_wrong_key(tmp_path, capsys):
    from mlsan_edge import cli

    db, key, other = tmp_path / "c.db", tmp_path / "k", tmp_path / "k2"
    key.write_text(KEY)
    other.write_text("fedcba9876543210fedcba9876543210")
    with SpeakerCache(db, dims={"audio": 207, "visual": 35, "text": 384}, key_file=key) as c:
        c.enroll("ann", voice(0))
    assert cli.main(["speakers", "list", "--cache", str(db), "--key-file", str(other)]) == 2
    assert "wrong key" in capsys.readouterr().err
    out = tmp_path / "export.json"
    assert cli.main(["speakers", "export", str(out), "--cache", str(db), "--key-file", str(key)]) == 0
    assert mode(out) == 0o600
    assert cli.main(["speakers", "import", str(out), "--cache", str(tmp_path / "new.db")]) == 0
    assert cli.main(["speakers", "list", "--cache", str(tmp_path / "new.db"), "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out.splitlines()[-1])] == ["ann"]


def test_store_holds_no_audio_or_image_columns(tmp_path):
    """Only embeddings and statistics: no column could hold raw audio or frames."""
    db = tmp_path / "speakers.db"
    SpeakerStore(db, 256).close()
    con = sqlite3.connect(db)
    cols = {r[1] for t in ("speakers", "meta") for r in con.execute(f"PRAGMA table_info({t})")}
    con.close()
    assert cols == {"id", "name", "profile", "profile_version", "params", "params_version", "first_seen",
                    "last_seen", "utterances", "identity", "key", "value"}


def test_no_pickle_in_any_device_load_path():
    """The device reads JSON, SQLite, safetensors, npz without pickle and ONNX; `pickle` appears
    only in the opt-in, restricted feature-pickle loader of the training side."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "mlsan_edge"
    offenders = []
    for p in root.rglob("*.py"):
        text = p.read_text()
        if re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)|allow_pickle\s*=\s*True|torch\.load\(",
                     text, re.M):
            offenders.append(str(p.relative_to(root)))
    assert [o for o in offenders if o != "data/pickles.py" and not o.startswith("model/")] == [], offenders
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from mlsan_edge.data.pickles import load_feature_pickle  # noqa: F401  (importing it loads nothing)
