"""VoiceScorer: nuisance projection, AS-norm scores, files; and the speaker cache using it."""

import numpy as np
import pytest

from mlsan_edge.metrics import purity_coverage
from mlsan_edge.runtime.speakers import SpeakerCache
from mlsan_edge.features.voice_scorer import VoiceScorer

D = 32


def synthetic(n_speakers=12, per=20, nuisance=3.0, noise=0.25, seed=0):
    """Speakers as random directions; every clip also moves along one shared 'emotion' axis by a
    large random amount, which raw cosine confuses with identity."""
    rng = np.random.default_rng(seed)
    emotion = rng.normal(size=D)
    emotion /= np.linalg.norm(emotion)
    centres = rng.normal(size=(n_speakers, D))
    x, y = [], []
    for s in range(n_speakers):
        for _ in range(per):
            x.append(centres[s] + nuisance * rng.normal() * emotion + noise * rng.normal(size=D))
            y.append(s)
    return np.asarray(x, np.float32), np.asarray(y), emotion


def eer(x, y):
    sims = x @ x.T
    iu = np.triu_indices(len(y), 1)
    same = (y[:, None] == y[None, :])[iu]
    s = sims[iu]
    ths = np.quantile(s, np.linspace(0, 1, 201))
    return min(max((s[~same] >= t).mean(), (s[same] < t).mean()) for t in ths)


def test_projection_removes_the_within_speaker_axis_and_helps_unseen_speakers():
    x, y, emotion = synthetic()
    train = y < 8
    sc = VoiceScorer.fit(x[train], y[train], nuisance_dims=1)
    assert abs(float(sc.nuisance[0] @ emotion)) > 0.95  # found the emotion axis
    p = sc.project(x[~train])
    assert np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)
    assert np.abs(p @ emotion).max() < 0.2
    raw = x[~train] / np.linalg.norm(x[~train], axis=1, keepdims=True)
    assert eer(p, y[~train]) < eer(raw, y[~train]) - 0.05


def test_scores_rank_the_right_speaker_first_and_use_cached_stats():
    x, y, _ = synthetic()
    sc = VoiceScorer.fit(x[y < 8], y[y < 8], nuisance_dims=1, top_k=20)
    cents = np.stack([x[(y == s)][:5].mean(0) for s in range(8, 12)])
    hits = [int(np.argmax(sc.scores(x[i], cents))) == y[i] - 8 for i in np.where(y >= 8)[0] if i % 20 >= 5]
    assert np.mean(hits) > 0.9
    (c, mu_c, sd_c), (e, mu_e, sd_e) = sc.prepare(cents), sc.prepare(x[200])
    np.testing.assert_allclose(sc.combine(c @ e[0], mu_e[0], sd_e[0], mu_c, sd_c), sc.scores(x[200], cents),
                               rtol=1e-5, atol=1e-5)
    assert sc.scores(x[0], np.zeros((0, D), np.float32)).shape == (0,)


def test_save_load_roundtrip_and_bad_files(tmp_path):
    x, y, _ = synthetic()
    sc = VoiceScorer.fit(x, y, threshold=0.7)
    back = VoiceScorer.load(sc.save(tmp_path / "s" / "voice_scorer.npz"))
    assert back.threshold == 0.7 and back.top_k == sc.top_k
    cents = x[:3]
    np.testing.assert_array_equal(back.scores(x[5], cents), sc.scores(x[5], cents))
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a voice scorer"):
        VoiceScorer.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="at least 2 speakers"):
        VoiceScorer.fit(x[y == 0], y[y == 0])


def _best_coverage(x, y, order, scorer, thresholds):
    """Highest coverage with purity >= 0.95 over `thresholds` (streams through the real cache)."""
    best = 0.0
    truth = y[order]
    for t in thresholds:
        cache = SpeakerCache(":memory:", scorer=scorer, voice_dim=D, threshold=t)
        ids = np.array([cache.identify(x[i]).speaker_id for i in order])
        pur, cov = purity_coverage(truth, ids)
        if pur >= 0.95:
            best = max(best, cov)
    return best


def test_speaker_cache_with_scorer_keeps_unseen_speakers_together_and_apart():
    x, y, _ = synthetic(n_speakers=14, per=20, seed=1)
    sc = VoiceScorer.fit(x[y < 10], y[y < 10], nuisance_dims=1, top_k=20, threshold=1.5)
    assert SpeakerCache(":memory:", scorer=sc, voice_dim=D).threshold == 1.5  # the scorer's tuned default
    assert SpeakerCache(":memory:", voice_dim=D).threshold == pytest.approx(0.775)
    order = np.random.default_rng(0).permutation(np.where(y >= 10)[0])
    with_scorer = _best_coverage(x, y, order, sc, np.arange(0.0, 10.01, 0.5))
    cosine = _best_coverage(x, y, order, None, np.arange(0.3, 0.951, 0.05))
    assert with_scorer == 1.0 and cosine < 0.95  # cosine must split the emotional clips to stay pure
