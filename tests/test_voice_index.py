"""VoiceIndex: nearest speaker, remembered voices of small speakers, merge candidates."""

import numpy as np

from mlsan_edge.profile import SpeakerProfile
from mlsan_edge.runtime.voice_index import MAX_EXEMPLARS, VoiceIndex

D = 16


def unit(*coef):
    v = np.zeros(D, np.float32)
    v[: len(coef)] = coef
    return v / np.linalg.norm(v)


def profiles(**voices):
    out = {}
    for sid, vs in voices.items():
        p = SpeakerProfile(dims={}, voice_dim=D)
        for v in vs:
            p.update({}, voice=v)
        out[int(sid[1:])] = p
    return out


def test_nearest_and_empty():
    idx = VoiceIndex(None, D)
    assert idx.nearest(unit(1)) == (None, float("-inf"))
    idx.rebuild(profiles(s1=[unit(1, 0)], s2=[unit(0, 1)]))
    sid, score = idx.nearest(unit(1, 0.1))
    assert sid == 1 and score > 0.99


def test_merge_candidate_needs_every_voice_of_the_smaller_speaker():
    a0, a1, c = unit(1, 0.45), unit(1, -0.2), unit(1, 0)
    profs = profiles(s1=[a0], s2=[a1] + [c] * 8)
    idx = VoiceIndex(None, D)
    idx.rebuild(profs)
    counts = {s: p.voice_count for s, p in profs.items()}
    assert idx.merge_candidate(2, counts, [], 0.9) is None  # speaker 1's voice was never remembered
    idx.remember(1, a0, 1)
    keep, absorb, worst = idx.merge_candidate(2, counts, [], 0.9)
    assert (keep, absorb) == (2, 1) and worst >= 0.9
    assert idx.merge_candidate(2, counts, [1, 2], 0.9) is None  # two named speakers: never
    assert idx.merge_candidate(2, counts, [1], 0.9)[:2] == (1, 2)  # a named one is kept
    assert idx.merge_candidate(2, counts, [], 0.95) is None  # below the threshold


def test_only_small_speakers_keep_voices():
    idx = VoiceIndex(None, D)
    for n in range(1, MAX_EXEMPLARS + 3):
        idx.remember(7, unit(1, n), n)
    assert len(idx._exemplars[7]) == MAX_EXEMPLARS
    idx.merged(7, 8, MAX_EXEMPLARS + 5)
    assert 7 not in idx._exemplars  # too big to be absorbed any more: its voices are dropped


def test_refresh_of_one_speaker_equals_a_rebuild():
    """identify() follows a known speaker's moved centroid with refresh (O(D)); it must leave the
    index exactly as rebuilding after each change would (the scorer's centre stays put while the
    set of speakers is unchanged), with the scorer and with plain cosine."""
    from mlsan_edge.features.voice_scorer import VoiceScorer

    rng = np.random.default_rng(0)
    scorer = VoiceScorer.fit(rng.normal(size=(40, D)), np.repeat(np.arange(4), 10))
    for sc in (None, scorer):
        profs = profiles(s1=[unit(1, 0)], s2=[unit(0, 1)], s3=[unit(1, 1)])
        inc, full = VoiceIndex(sc, D), VoiceIndex(sc, D)
        inc.rebuild(profs)
        full.rebuild(profs)
        for v in (unit(0.2, 1), unit(0.1, 1, 0.3), unit(0, 1, -0.2)):
            profs[2].update({}, voice=v)
            assert inc.refresh(2, profs[2])
            full.rebuild(profs)
        np.testing.assert_array_equal(inc.ids, full.ids)
        np.testing.assert_allclose(inc._proj, full._proj, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(inc._mu, full._mu, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(inc._sd, full._sd, rtol=1e-6, atol=1e-7)
        q = unit(0.15, 1, 0.1)
        assert inc.nearest(q) == full.nearest(q)
        assert not inc.refresh(9, profs[2])  # unknown speaker: the caller rebuilds


def test_nearest_can_leave_speakers_out_and_scores_against_keyed_sets_follow_the_centre():
    """The named-person check: the best *unnamed* speaker (named ids left out), and enrolled voices
    prepared once per (set, centre) but never served for another set or an old centre."""
    from mlsan_edge.features.voice_scorer import VoiceScorer

    rng = np.random.default_rng(1)
    scorer = VoiceScorer.fit(rng.normal(size=(40, D)), np.repeat(np.arange(4), 10))
    for sc in (None, scorer):
        idx = VoiceIndex(sc, D)
        idx.rebuild(profiles(s1=[unit(1, 0)], s2=[unit(0, 1)]))
        assert idx.nearest(unit(1, 0.1), exclude={1})[0] == 2
        assert idx.nearest(unit(1, 0.1), exclude={1, 2}) == (None, float("-inf"))
        assert len(idx.all_scores(unit(1))) == 2
        a, b = np.stack([unit(1, 0), unit(1, 1)]), np.stack([unit(0, 0, 1)])
        fresh = idx.scores_against(unit(1, 0.2), a)
        np.testing.assert_allclose(idx.scores_against(unit(1, 0.2), a, key="a"), fresh, rtol=1e-6)
        np.testing.assert_allclose(idx.scores_against(unit(1, 0.2), b, key="b"),
                                   idx.scores_against(unit(1, 0.2), b), rtol=1e-6)
        idx.rebuild(profiles(s1=[unit(1, 0)], s2=[unit(0, 1)], s3=[unit(0, 0, 1)]))  # a new centre
        np.testing.assert_allclose(idx.scores_against(unit(1, 0.2), a, key="a"),
                                   idx.scores_against(unit(1, 0.2), a), rtol=1e-6)


def test_small_speakers_voices_are_prepared_together_as_one_by_one():
    """merge_candidate prepares every stale splinter's voices in one batch (a new speaker moves the
    centre): the same projections and cohort statistics as preparing each alone, re-prepared when
    a speaker gains a voice or the centre moves, and nothing else."""
    from mlsan_edge.features.voice_scorer import VoiceScorer

    rng = np.random.default_rng(2)
    scorer = VoiceScorer.fit(rng.normal(size=(40, D)), np.repeat(np.arange(4), 10))
    voices = {s: [unit(*rng.normal(size=4)) for _ in range(s)] for s in (1, 2, 3)}
    idx = VoiceIndex(scorer, D)
    idx.rebuild(profiles(**{f"s{s}": vs for s, vs in voices.items()}))
    for s, vs in voices.items():
        for n, v in enumerate(vs, 1):
            idx.remember(s, v, n)
    got = idx._prepared_voices({1, 2, 3})
    for s, vs in voices.items():
        for a, b in zip(got[s], idx.prepare(np.stack(vs))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    before = dict(idx._ex_prep)
    idx.remember(2, unit(0, 0, 1), 3)  # speaker 2 gains a voice: only its preparation is redone
    again = idx._prepared_voices({1, 2, 3})
    assert again[2][0].shape[0] == 3 and idx._ex_prep[1] is before[1] and idx._ex_prep[3] is before[3]
