"""Face features: geometry invariances, the AU-like vector's layout, attribution of the speaking
face, Haar detection and Face Mesh landmarks on a real clip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import SHARED_DATA
from mlsan_edge.config import VISUAL_DIM
from mlsan_edge.data.ravdess import AU_COLUMNS
from mlsan_edge.runtime.face_features import (AU_C, AU_R, VisualBaselines, attribute, au_vector, derived_mask,
                                              visual_features)
from mlsan_edge.runtime.face_tracking import MEASURES, FaceObs, FrameFaces, geometric_measures

CLIP = SHARED_DATA / "talking" / "cremad_1001_6emotions_13s.mp4"
HAVE_LITERT = any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))


def test_layout_matches_openface_columns():
    names = [f"AU{n:02d}_r_mean" for n in AU_R] + [f"AU{n:02d}_c_frac" for n in AU_C]
    assert names == list(AU_COLUMNS) and len(names) == VISUAL_DIM
    mask = derived_mask()
    assert [c for c, d in zip(AU_COLUMNS, mask) if not d] == ["AU14_r_mean", "AU14_c_frac", "AU28_c_frac"]


def test_measures_invariant_to_scale_shift_and_roll():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 100, (468, 3))
    lm[33, :2], lm[263, :2] = (30, 40), (70, 40)
    a = geometric_measures(lm)
    th = np.deg2rad(20)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lm2 = lm.copy()
    lm2[:, :2] = (lm[:, :2] @ rot.T) * 2.5 + (100, -7)
    np.testing.assert_allclose(geometric_measures(lm2), a, rtol=1e-4, atol=1e-5)


def test_au_vector_is_zero_at_baseline_and_nan_where_underived():
    m = np.tile(np.linspace(0.1, 1.0, len(MEASURES)), (5, 1))
    v = au_vector(m, m[0])
    assert v.shape == (VISUAL_DIM,)
    mask = derived_mask()
    assert np.all(np.isnan(v[~mask]))
    blink = list(AU_COLUMNS).index("AU45_c_frac")
    assert np.all(v[mask] == 0)
    m2 = m.copy()
    m2[:, MEASURES.index("lip_gap")] += 0.2  # mouth open by 0.2 IOD: AU25 fully on
    v2 = au_vector(m2, m[0])
    assert v2[list(AU_COLUMNS).index("AU25_r_mean")] == 5.0 and v2[list(AU_COLUMNS).index("AU25_c_frac")] == 1.0
    assert v2[blink] == 0


def _frames(mouths: dict[int, np.ndarray], areas: dict[int, int], fps=10.0):
    out = []
    for i in range(len(next(iter(mouths.values())))):
        out.append(FrameFaces(i / fps, [FaceObs(k, (0, 0, areas[k], 1), None, float(m[i])) for k, m in mouths.items()]))
    return out


def test_attribution_follows_the_voice_then_the_largest_face():
    t = np.arange(20) / 10
    env = (np.sin(2 * np.pi * 1.5 * t) > 0).astype(np.float32)  # bursts of voice
    audio = np.concatenate([np.random.default_rng(0).normal(0, 0.3 if e else 0.001, 1600) for e in env]).astype(np.float32)
    talking = env + 0.05 * np.random.default_rng(1).normal(size=20)
    still = np.random.default_rng(2).normal(0, 0.05, 20)
    frames = _frames({0: still, 1: talking}, {0: 200, 1: 50})
    a = attribute(frames, audio, -0.05)
    assert a.track == 1 and a.method == "voice_correlation" and a.n_faces == 2 and a.correlation > 0.5
    frames = _frames({0: still, 1: -talking}, {0: 200, 1: 50})
    assert attribute(frames, audio, -0.05).method == "largest"
    assert attribute([], audio, 0).method == "none"


def test_box_only_faces_make_visual_missing():
    frames = _frames({0: np.zeros(6)}, {0: 100})
    res = visual_features(frames, np.zeros(16000, np.float32), 0.0, 1, VisualBaselines())
    assert res.vector is None and "landmarks" in res.reason and res.attribution.track == 0


def _clip_frames(n=12, step=8):
    from mlsan_edge.runtime.sources import open_video

    if not CLIP.exists():
        pytest.skip(f"{CLIP} not found")
    out = []
    with open_video(f"file://{CLIP}") as src:
        for i, f in enumerate(src):
            if i % step == 0:
                out.append(f)
            if len(out) == n:
                break
    return out


@pytest.mark.requires_data
def test_haar_finds_the_face_on_a_real_clip():
    from mlsan_edge.runtime.face_tracking import FaceAnalyzer

    fa = FaceAnalyzer(landmarks="none")
    res = [fa.analyze(f.t, f.image) for f in _clip_frames()]
    assert sum(len(r.faces) == 1 for r in res) >= 10
    assert len({o.track for r in res for o in r.faces}) == 1  # one track throughout


@pytest.mark.requires_data
@pytest.mark.skipif(not HAVE_LITERT, reason="no TFLite interpreter (pip install ai-edge-litert)")
def test_face_mesh_landmarks_on_a_real_clip():
    from mlsan_edge.runtime.face_tracking import FaceAnalyzer

    fa = FaceAnalyzer()
    assert fa.has_landmarks
    res = [fa.analyze(f.t, f.image) for f in _clip_frames()]
    ms = np.stack([r.faces[0].measures for r in res if r.faces and r.faces[0].measures is not None])
    assert len(ms) >= 10
    med = dict(zip(MEASURES, np.median(ms, 0)))
    # plausible human proportions, in inter-ocular distances
    assert 0.4 < med["mouth_width"] < 0.9 and 0.02 < med["eye_open"] < 0.2 and 0.5 < med["jaw"] < 1.2
    v = visual_features(res, np.zeros(16000 * 4, np.float32), 0.0, "spk", VisualBaselines())
    assert v.vector is not None and np.all(np.isfinite(v.vector[derived_mask()]))
