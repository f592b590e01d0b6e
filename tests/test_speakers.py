"""The SQLite speaker cache: matching, management, privacy, robustness, threads."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.profile import SpeakerProfile
from mlsan_edge.config import VOICE_DIM
from mlsan_edge.runtime.speakers import DEFAULT_THRESHOLD, SpeakerCache

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"
DIMS = {"audio": 8, "visual": 4}


def _synthetic_voices(n_speakers: int, n_each: int, seed: int = 0) -> dict[int, list[np.ndarray]]:
    """Non-negative unit vectors (as GE2E's are): a centre per speaker plus small noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in range(n_speakers):
        centre = np.abs(rng.standard_normal(256))
        vs = [np.abs(centre + 0.15 * rng.standard_normal(256) * centre.mean()) for _ in range(n_each)]
        out[s] = [(v / np.linalg.norm(v)).astype(np.float32) for v in vs]
    return out


def _speech(wav: np.ndarray) -> np.ndarray:
    """The VAD-cut speech of a clip, as the runtime embeds it (silence makes voices look alike)."""
    from mlsan_edge.features.vad import segment

    utts = segment(wav)
    return np.concatenate([u.audio for u in utts]) if utts else wav


@pytest.fixture(scope="module")
def voices() -> dict[int, list[np.ndarray]]:
    """Real voice embeddings (VoiceEncoder on RAVDESS actors 1, 6, 7) when available, else synthetic."""
    shared = Path(os.environ.get("MLSAN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    try:
        from mlsan_edge.features.voice import VoiceEncoder
        from mlsan_edge.features.audio import load_audio

        enc = VoiceEncoder()
        if not enc.onnx_path.exists():
            raise FileNotFoundError
        out = {}
        for k, a in enumerate((1, 6, 7)):  # the four neutral clips of three distinct voices
            files = [f for f in sorted((shared / "ravdess" / "audio16k" / f"Actor_{a:02d}").glob("*.flac"))
                     if f.name.split("-")[2] == "01"]
            out[k] = list(enc.embed_batch([_speech(load_audio(f)) for f in files]))
        if all(len(v) == 4 for v in out.values()):
            return out
    except (ImportError, FileNotFoundError):
        pass
    return _synthetic_voices(3, 4)


@pytest.fixture
def cache(tmp_path):
    c = SpeakerCache(tmp_path / "speakers.db", threshold=DEFAULT_THRESHOLD, dims=DIMS)
    yield c
    c.close()


def test_identify_new_then_known(cache, voices):
    first = cache.identify(voices[0][0])
    assert first.is_new and first.speaker_id is not None and first.similarity == float("-inf")
    again = cache.identify(voices[0][1])
    assert not again.is_new and again.speaker_id == first.speaker_id and again.similarity >= DEFAULT_THRESHOLD
    other = cache.identify(voices[1][0])
    assert other.is_new and other.speaker_id != first.speaker_id and other.similarity < DEFAULT_THRESHOLD
    assert cache.get_profile(first.speaker_id).voice_count == 2
    peek = cache.identify(voices[2][0], update=False)
    assert peek.is_new and peek.speaker_id is None and len(cache) == 2
    with pytest.raises(ValueError, match="256 values"):
        cache.identify(np.ones(10))


def test_grey_zone_attributes_without_moving_the_centroid(tmp_path, voices):
    c = SpeakerCache(tmp_path / "c.db", threshold=0.999, new_threshold=0.0)
    sid = c.identify(voices[0][0]).speaker_id
    before = c.get_profile(sid).voice_centroid()
    m = c.identify(voices[0][1])
    assert m.speaker_id == sid and not m.is_new
    np.testing.assert_array_equal(c.get_profile(sid).voice_centroid(), before)
    assert c.list()[0].utterances == 2
    c.close()


def test_profile_and_cached_params_versioning(cache, voices):
    sid = cache.identify(voices[0][0]).speaker_id
    v = cache.profile_version(sid)
    cache.put_params(sid, b"\x01film", v)
    assert cache.get_params(sid) == b"\x01film"
    new_v = cache.update_profile(sid, {"audio": np.ones(8), "visual": None}, latent=np.ones(3))
    assert new_v == v + 1 and cache.get_params(sid) is None  # stale once the profile changed
    prof = cache.get_profile(sid)
    assert prof.stats["audio"].count == 1 and prof.stats["visual"].count == 0 and prof.latent_count == 1
    prof.update({"audio": np.zeros(8)})
    assert cache.get_profile(sid).stats["audio"].count == 1  # a copy: nothing changes until put
    assert cache.put_profile(sid, prof) == v + 2
    with pytest.raises(KeyError, match="no speaker"):
        cache.get_params(999)


def test_enroll_rename_merge(cache, voices):
    alice = cache.enroll("Alice", np.stack(voices[0][:3]))
    assert cache.identify(voices[0][3]).speaker_id == alice
    assert cache.enroll("Alice", voices[0][3]) == alice  # enrolling again adds to the same speaker
    bob = cache.identify(voices[1][0]).speaker_id
    cache.rename(bob, "Bob")
    assert {s.name for s in cache.list()} == {"Alice", "Bob"} and cache.resolve("Bob") == bob
    assert cache.name(bob) == "Bob" and cache.name(10_000) is None
    with pytest.raises(ValueError, match="already used"):
        cache.rename(bob, "Alice")
    cache.update_profile(bob, {"audio": np.ones(8)})
    cache.update_profile(alice, {"audio": np.zeros(8)})
    kept = cache.merge("Alice", "Bob")
    assert kept == alice and len(cache) == 1
    prof = cache.get_profile(alice)
    assert prof.voice_count == 6 and prof.stats["audio"].count == 2
    np.testing.assert_allclose(prof.stats["audio"].mean, 0.5)
    info = cache.list()[0]
    assert info.name == "Alice" and info.utterances == 2  # Alice's re-identify + Bob's utterance
    with pytest.raises(KeyError):
        cache.resolve("Bob")


def _all_text(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_forget_leaves_no_trace(cache, voices, tmp_path):
    sid = cache.enroll("Zebediah-Unique", np.stack(voices[0]))
    keep = cache.enroll("Other", np.stack(voices[1]))
    cache.put_params(sid, b"SECRET-PARAMS-" * 10, cache.profile_version(sid))
    cache.forget("Zebediah-Unique")
    assert [s.id for s in cache.list()] == [keep]
    cache.close()
    db = tmp_path / "speakers.db"
    con = sqlite3.connect(db)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for t in tables:
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})")]
        if "id" in cols:
            assert con.execute(f"SELECT COUNT(*) FROM {t} WHERE id = ?", (sid,)).fetchone()[0] == 0
    con.close()
    raw = _all_text(db)
    assert b"Zebediah-Unique" not in raw and b"SECRET-PARAMS" not in raw and b"Other" in raw


def test_export_import_round_trip(cache, voices, tmp_path):
    a = cache.enroll("Alice", np.stack(voices[0]))
    cache.update_profile(a, {"audio": np.arange(8.0)})
    b = cache.identify(voices[1][0]).speaker_id
    out = tmp_path / "export.json"
    cache.export(out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    doc = json.loads(out.read_text())
    assert doc["format"] == "mlsan-speaker-cache" and len(doc["speakers"]) == 2
    fresh = SpeakerCache(tmp_path / "fresh.db", dims=DIMS)
    ids = fresh.import_(out)
    assert len(ids) == 2 and {s.name for s in fresh.list()} == {"Alice", None}
    got = fresh.get_profile(fresh.resolve("Alice"))
    want = cache.get_profile(a)
    np.testing.assert_allclose(got.voice_centroid(), want.voice_centroid())
    np.testing.assert_allclose(got.stats["audio"].mean, want.stats["audio"].mean)
    assert fresh.identify(voices[0][0]).speaker_id == fresh.resolve("Alice")
    assert fresh.identify(voices[1][1], update=False).speaker_id not in (None, fresh.resolve("Alice"))
    fresh.close()
    with pytest.raises(ValueError, match="export"):
        out.write_text('{"format": "other"}')
        cache.import_(out)
    assert b >= 1


def test_bounded_size_evicts_least_recently_seen(tmp_path):
    vs = _synthetic_voices(5, 1, seed=1)
    c = SpeakerCache(tmp_path / "c.db", threshold=0.9, max_speakers=3)
    named = c.enroll("Named", vs[0][0], now=0.0)  # oldest, but enrolled: evicted last
    ids = [c.identify(vs[i][0], now=float(i)).speaker_id for i in (1, 2)]
    c.identify(vs[1][0], now=10.0)  # speaker 1 seen again: now the most recent
    new = c.identify(vs[3][0], now=11.0)
    assert new.is_new and len(c) == 3
    left = {s.id for s in c.list()}
    assert left == {named, ids[0], new.speaker_id}  # unnamed, least recently seen (2) went
    c.close()


def test_corrupt_file_is_moved_aside(tmp_path, voices):
    db = tmp_path / "c.db"
    c = SpeakerCache(db)
    c.identify(voices[0][0])
    c.close()
    db.write_bytes(b"this is not a database " * 200)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        c = SpeakerCache(db)
    assert len(c) == 0 and c.identify(voices[0][0]).is_new
    c.close()
    aside = list(tmp_path.glob("c.db.corrupt-*"))
    assert len(aside) >= 1 and any(p.read_bytes().startswith(b"this is not") for p in aside)


def test_truncated_database_is_detected(tmp_path, voices):
    db = tmp_path / "c.db"
    c = SpeakerCache(db)
    for i in range(3):
        c.enroll(f"name{i}", np.stack(voices[i]))
    c.close()
    data = db.read_bytes()
    db.write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # header kept, pages destroyed
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = SpeakerCache(db)
    assert any("corrupt" in str(x.message) for x in w) and len(c) == 0
    c.close()


def test_file_mode_is_0600(tmp_path, voices):
    db = tmp_path / "sub" / "c.db"
    c = SpeakerCache(db)
    c.identify(voices[0][0])
    for p in db.parent.iterdir():  # the database and its -wal / -shm files
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert c._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()


def test_persists_across_reopen(tmp_path, voices):
    db = tmp_path / "c.db"
    with SpeakerCache(db) as c:
        sid = c.enroll("Alice", np.stack(voices[0][:2]))
    with SpeakerCache(db) as c:
        m = c.identify(voices[0][2])
        assert m.speaker_id == sid and not m.is_new and c.list()[0].name == "Alice"


def test_statistics_of_another_feature_version_start_again(tmp_path, voices, caplog):
    """A cache written when the audio front-end was another width (an older feature version)
    opens: the speaker keeps their voice, the stale statistics start again (with a warning) and
    the next utterance updates them instead of failing."""
    db = tmp_path / "c.db"
    with SpeakerCache(db, dims=DIMS) as c:
        sid = c.identify(voices[0][0]).speaker_id
        version = c.update_profile(sid, {"audio": np.ones(8), "visual": np.ones(4)})
        c.put_params(sid, b"old model", version)
    with caplog.at_level("WARNING", logger="mlsan_edge.runtime.speakers"):
        c = SpeakerCache(db, dims={"audio": 9, "visual": 4})
    with c:
        assert "audio statistics of 8 values, this bundle computes 9" in caplog.text
        assert c.profile_version(sid) > version and c.get_params(sid) is None  # the old parameters are stale
        prof = c.get_profile(sid)
        assert prof.stats["audio"].dim == 9 and prof.stats["audio"].count == 0
        assert prof.stats["visual"].count == 1 and prof.voice_count == 1  # the rest is kept
        assert c.identify(voices[0][1]).speaker_id == sid
        c.update_profile(sid, {"audio": np.ones(9), "visual": None})
        assert c.get_profile(sid).stats["audio"].count == 1


def test_parameters_of_another_model_are_dropped_once(cache, voices):
    sid = cache.identify(voices[0][0]).speaker_id
    assert cache.bind_params("model A") == 0  # nothing cached yet
    cache.put_params(sid, b"A's", cache.profile_version(sid))
    assert cache.bind_params("model A") == 0 and cache.get_params(sid) == b"A's"
    assert cache.bind_params("model B") == 1 and cache.get_params(sid) is None
    assert cache.get_profile(sid).voice_count == 1  # the profile stays: parameters are recomputed from it


def test_concurrent_use_from_threads(tmp_path):
    vs = _synthetic_voices(4, 25, seed=2)
    c = SpeakerCache(tmp_path / "c.db", threshold=0.8, dims=DIMS)
    errors, results = [], {}

    def worker(s: int) -> None:
        try:
            got = []
            for k, v in enumerate(vs[s]):
                sid = c.identify(v).speaker_id
                got.append(sid)
                c.update_profile(sid, {"audio": np.full(8, float(s))})
                if k % 10 == 0:
                    c.list()
                    c.get_params(sid)
            results[s] = got
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in vs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(c) == 4 and all(len(set(r)) == 1 for r in results.values())
    assert sum(s.utterances for s in c.list()) == 100
    assert all(c.get_profile(r[0]).stats["audio"].count == 25 for r in results.values())
    c.close()


def test_profile_type_round_trip(cache, voices):
    sid = cache.identify(voices[0][0]).speaker_id
    assert isinstance(cache.get_profile(sid), SpeakerProfile)


def _geom(*coef):
    """Unit vectors c + k e2 in 256-d (c = e1): one speaker, spread along one 'emotion' axis."""
    out = []
    for k in coef:
        v = np.zeros(VOICE_DIM, np.float32)
        v[0], v[1] = 1.0, k
        out.append(v / np.linalg.norm(v))
    return out


def test_a_splinter_is_merged_back_once_the_centroid_settles():
    first, *rest = _geom(0.45, -0.2, *[0.0] * 8)  # an atypical first utterance, then typical ones
    for auto in (True, False):
        cache = SpeakerCache(":memory:", threshold=0.9, auto_merge=auto)
        ids = [cache.identify(first).speaker_id] + [cache.identify(e).speaker_id for e in rest]
        assert ids[1] != ids[0]  # the first utterance is too far from the next: split at first
        if auto:
            assert len(cache) == 1 and ids[-1] == ids[1]  # folded into the larger speaker
            info = cache.list()[0]
            assert info.voice_count == len(rest) + 1 and info.utterances == len(rest) + 1
        else:
            assert len(cache) == 2


def test_auto_merge_never_joins_two_named_speakers_and_keeps_the_named_one():
    a0, c = _geom(0.45, 0.0)
    cache = SpeakerCache(":memory:", threshold=0.9)
    x, y = cache.enroll("x", [a0]), cache.enroll("y", [c])
    for _ in range(5):
        cache.identify(c)
    assert {s.name for s in cache.list()} == {"x", "y"}
    # an unnamed splinter that fits a named speaker is absorbed by it
    cache2 = SpeakerCache(":memory:", threshold=0.9)
    first, *rest = _geom(0.45, -0.2, *[0.0] * 8)
    cache2.identify(first)
    named = cache2.identify(rest[0]).speaker_id
    cache2.rename(named, "ann")
    for e in rest[1:]:
        cache2.identify(e)
    assert [s.name for s in cache2.list()] == ["ann"]


# --- persons: face + voice (issue #10) ------------------------------------------------------------
def _faces(n: int, seed: int = 1) -> list[np.ndarray]:
    """Synthetic 128-d descriptors of n people, ~1.4 apart (as dlib's different people are)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(128) * 0.125).astype(np.float32) for _ in range(n)]


def _near(f: np.ndarray, seed: int) -> np.ndarray:
    """The same face seen again: ~0.2 away."""
    return (f + np.random.default_rng(seed).standard_normal(128).astype(np.float32) * 0.018).astype(np.float32)


def test_face_decides_binds_the_voice_and_merges_two_voice_clusters_seen_with_it():
    voices, faces = _synthetic_voices(3, 4), _faces(3)
    c = SpeakerCache(":memory:", dims=DIMS)
    v_only = c.identify(voices[0][0]).speaker_id  # heard, not seen: a voice-only person
    bound = c.identify(voices[0][1], face=faces[0])  # now seen: the face binds to that voice
    assert bound.speaker_id == v_only and bound.identified_by == "voice" and not bound.is_new
    again = c.identify(voices[1][0], face=_near(faces[0], 1))  # same face, another voice: still them
    assert again.speaker_id == v_only and again.identified_by == "face" and again.face_distance < 0.5
    assert c.identify(voices[0][2], face=_near(faces[0], 2)).identified_by == "both"
    # a separate voice-only cluster whose voice then comes with the face is merged into the person
    other = c.identify(voices[2][0]).speaker_id
    assert other != v_only
    c.identify(voices[2][1], face=_near(faces[0], 3))
    assert other not in {s.id for s in c.list()} and len(c) == 1
    assert c.list()[0].keys == ("voice", "face")


def test_one_voice_seen_with_two_faces_is_split_going_forward():
    voices, faces = _synthetic_voices(1, 4), _faces(2)
    c = SpeakerCache(":memory:", dims=DIMS)
    a = c.identify(voices[0][0], face=faces[0]).speaker_id
    b = c.identify(voices[0][1], face=faces[1])  # the same voice, another face: another person
    assert b.is_new and b.speaker_id != a and b.identified_by == "face"
    assert c.identify(voices[0][2], face=_near(faces[1], 5)).speaker_id == b.speaker_id
    assert c.identify(voices[0][3], face=_near(faces[0], 6)).speaker_id == a
    # two people with faces are never auto-merged, however alike their voices
    assert len(c) == 2


def test_short_voices_never_merge_people_and_are_said_to_be_unknown():
    voices, faces = _synthetic_voices(6, 2), _faces(1)
    c = SpeakerCache(":memory:", dims=DIMS)
    for s in range(6):  # six people saying a digit each: no one is created, no one merged
        m = c.identify(voices[s][0], voice_s=0.4)
        assert m.speaker_id is None and m.identified_by == "none" and "too short" in m.note
    assert len(c) == 0
    # with a face, the face decides; the short voice is not folded into the person
    first = c.identify(voices[0][0], face=faces[0], voice_s=0.4)
    assert first.is_new and c.get_profile(first.speaker_id).voice_count == 0
    assert c.identify(voices[1][0], face=_near(faces[0], 7), voice_s=0.4).speaker_id == first.speaker_id
    assert c.get_profile(first.speaker_id).voice_count == 0


def test_named_person_is_a_verification_target():
    voices = _synthetic_voices(3, 6)
    c = SpeakerCache(":memory:", dims=DIMS)
    ana = c.enroll("Ana", voices[0][:3])
    assert c.identify(voices[0][4]).speaker_id == ana  # verified against the enrolled voices
    stranger = c.identify(voices[1][0])
    assert stranger.speaker_id != ana and stranger.is_new
    # a voice that does not verify never gets the name, even if it would cluster with Ana
    strict = SpeakerCache(":memory:", dims=DIMS, named_threshold=1.01)
    bob = strict.enroll("Bob", voices[2][:3])
    assert strict.identify(voices[2][4]).speaker_id != bob
    assert [k for s in strict.list() for k in s.keys if s.id == bob] == ["voice", "enrolled_voice"]


def test_enrol_by_face_and_persons_persist_across_runs_encrypted(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    voices, faces = _synthetic_voices(2, 4), _faces(2)
    db = tmp_path / "people.db"
    with SpeakerCache(db, dims=DIMS, key="k" * 32) as c:
        ana = c.enroll("Ana", faces=[faces[0], _near(faces[0], 1)])
        seen = c.identify(voices[1][0], face=faces[1]).speaker_id
    raw = db.read_bytes()
    assert b"face_sum" not in raw  # sealed like the profile
    with SpeakerCache(db, dims=DIMS, key="k" * 32) as c:  # the next run
        m = c.identify(voices[0][0], face=_near(faces[0], 2))
        assert m.speaker_id == ana and c.name(ana) == "Ana" and m.identified_by == "face"
        assert c.identify(voices[1][1], face=_near(faces[1], 3)).speaker_id == seen
        c.export(tmp_path / "out.json")
        c.forget(seen)
        assert seen not in {s.id for s in c.list()}
    with SpeakerCache(tmp_path / "other.db", dims=DIMS) as d:
        d.import_(tmp_path / "out.json")
        people = {s.name: s for s in d.list()}
        assert people["Ana"].keys == ("voice", "face") and people["Ana"].face_count == 3
        assert d.identify(voices[0][1], face=_near(faces[0], 4)).speaker_id == d.resolve("Ana")


def test_merge_carries_the_face():
    voices, faces = _synthetic_voices(2, 2), _faces(1)
    c = SpeakerCache(":memory:", dims=DIMS)
    a = c.identify(voices[0][0]).speaker_id
    b = c.identify(voices[1][0], face=faces[0]).speaker_id
    c.merge(a, b)
    assert c.identify(voices[1][1], face=_near(faces[0], 9)).speaker_id == a
