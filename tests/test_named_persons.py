"""Named (enrolled) persons as verification targets: enrolled voices one by one, learned voices,
the unnamed-match check, and how their voices are stored (sealed, exported, validated)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlsan_edge.runtime.person_keys import MAX_LEARNED_VOICES, PersonKeys
from mlsan_edge.runtime.speakers import SpeakerCache

DIMS = {"audio": 8, "visual": 4}
B = np.eye(256, dtype=np.float32)  # orthonormal directions: voices with exact cosines


def v(*coefs: float) -> np.ndarray:
    """A unit voice with the given coordinates on the first directions."""
    x = sum(c * B[i] for i, c in enumerate(coefs))
    return (x / np.linalg.norm(x)).astype(np.float32)


# cosine rules (no scorer): named at >= 0.8, ahead of the next named person by 0.05
CALM, SHOUT = v(1, 0), v(0, 1)  # one person, two moods: their centroid is 0.71 from each


def test_a_voice_verifies_against_the_nearest_enrolled_voice_not_only_their_mean():
    c = SpeakerCache(":memory:", dims=DIMS)
    ana = c.enroll("Ana", [CALM, SHOUT])
    m = c.identify(v(1, 0, 0.2))  # 0.98 from the calm clip, 0.69 from the centroid
    assert m.speaker_id == ana and m.voice_similarity == pytest.approx(0.98, abs=0.01)
    keys = c._keys[ana]
    assert keys.enrol_count == 2 and len(keys.enrol_voices) == 2


def test_a_cache_from_before_keeps_verifying_against_the_centroid():
    c = SpeakerCache(":memory:", dims=DIMS)
    ana = c.enroll("Ana", [CALM, SHOUT])
    old = c._keys[ana].to_dict()
    del old["enrol_voices"]  # what an older runtime stored
    c._keys[ana] = PersonKeys.from_dict(old)
    assert c.identify(v(1, 0, 0.2)).speaker_id != ana  # 0.69 from the centroid: not verified
    assert c.identify(v(1, 1, 0.1)).speaker_id == ana


def test_a_high_scoring_voice_is_learned_and_later_voices_verify_against_it_without_chains():
    c = SpeakerCache(":memory:", dims=DIMS, learn_threshold=0.95)
    ana = c.enroll("Ana", [CALM])
    assert c.identify(v(1, 0.2)).speaker_id == ana  # 0.98 against the enrolled voice: learned
    assert len(c._keys[ana].learned_voices) == 1
    # 0.71 from the enrolled voice (above the 0.6 floor), 0.83 from the learned one: verified, not learned
    m = c.identify(v(1, 1))
    assert m.speaker_id == ana and len(c._keys[ana].learned_voices) == 1
    # nothing is learned without a scorer unless asked, and a voice below the floor never uses learned voices
    plain = SpeakerCache(":memory:", dims=DIMS)
    bob = plain.enroll("Bob", [CALM])
    plain.identify(v(1, 0.2))
    assert plain._keys[bob].learned_voices == [] and plain.identify(v(1, 1)).speaker_id != bob


def test_a_learned_voice_counts_only_for_voices_still_near_the_enrolled_ones():
    c = SpeakerCache(":memory:", dims=DIMS, learn_threshold=0.95)
    ana = c.enroll("Ana", [CALM])
    assert c.identify(v(1, 0.32)).speaker_id == ana and len(c._keys[ana].learned_voices) == 1
    # 0.81 from the learned voice but 0.59 from the enrolled one (below the 0.6 floor): not Ana
    assert c.identify(v(0.59, 0.807)).speaker_id != ana


def test_learned_voices_are_bounded():
    k = PersonKeys()
    for i in range(MAX_LEARNED_VOICES + 5):
        k.add_learned(v(1, 0.01 * i))
    assert len(k.learned_voices) == MAX_LEARNED_VOICES
    assert np.allclose(k.learned_voices[-1], v(1, 0.01 * (MAX_LEARNED_VOICES + 4)))


def test_a_stranger_is_refused_the_name_once_their_own_voice_matches_better():
    stranger_first, stranger_like_ana = v(1, 0, 0, 1.2), v(1, 0, 0, 0.6)  # 0.64 and 0.86 from Ana's voice
    for compete in (True, False):
        c = SpeakerCache(":memory:", dims=DIMS, compete_unnamed=compete)
        ana = c.enroll("Ana", [CALM])
        own = c.identify(stranger_first)
        assert own.is_new and own.speaker_id != ana
        m = c.identify(stranger_like_ana)  # 0.94 from the stranger's own cluster
        assert (m.speaker_id == own.speaker_id) if compete else (m.speaker_id == ana)
        assert c.identify(v(1, 0, 0.1)).speaker_id == ana  # Ana herself still verifies


def test_enrolled_and_learned_voices_are_sealed_persist_and_travel_in_exports(tmp_path):
    pytest.importorskip("cryptography")
    db = tmp_path / "people.db"
    with SpeakerCache(db, dims=DIMS, key="k" * 32, learn_threshold=0.95) as c:
        ana = c.enroll("Ana", [CALM, SHOUT])
        c.identify(v(1, 0.2))
        assert len(c._keys[ana].learned_voices) == 1
    assert b"enrol_voices" not in db.read_bytes() and b"learned_voices" not in db.read_bytes()
    with SpeakerCache(db, dims=DIMS, key="k" * 32) as c:  # the next run
        k = c._keys[ana]
        assert len(k.enrol_voices) == 2 and len(k.learned_voices) == 1
        assert np.allclose(k.enrol_voices[1], SHOUT, atol=1e-6)
        assert c.identify(v(0, 1, 0.2)).speaker_id == ana  # the shouting clip is still a witness
        c.export(tmp_path / "out.json")
    doc = json.loads((tmp_path / "out.json").read_text())
    assert len(doc["speakers"][0]["identity"]["enrol_voices"]) == 2
    with SpeakerCache(tmp_path / "other.db", dims=DIMS) as d:
        d.import_(tmp_path / "out.json")
        assert d.identify(v(0, 1, 0.2)).speaker_id == d.resolve("Ana")


@pytest.mark.parametrize("bad", [[[0.1] * 3], [[float("nan")] * 256], [[0.0] * 256], "not a list"])
def test_an_export_with_malformed_enrolled_voices_is_refused_whole(tmp_path, bad):
    c = SpeakerCache(":memory:", dims=DIMS)
    c.enroll("Ana", [CALM])
    c.export(tmp_path / "out.json")
    doc = json.loads((tmp_path / "out.json").read_text())
    doc["speakers"][0]["identity"]["enrol_voices"] = bad
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="enrol_voices"):
        SpeakerCache(":memory:", dims=DIMS).import_(tmp_path / "bad.json")


def test_merging_two_persons_keeps_both_sets_of_voices():
    c = SpeakerCache(":memory:", dims=DIMS)
    a, b = c.enroll("Ana", [CALM]), c.enroll("Ann", [SHOUT])
    c.merge(a, b)
    assert len(c._keys[a].enrol_voices) == 2 and c.identify(v(0, 1, 0.2)).speaker_id == a
