"""Face identity descriptors (dlib, the [face-id] extra) on real faces, and the face track plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from mlsan_edge.runtime.face_features import track_descriptor
from mlsan_edge.runtime.face_identity import FACE_DIM, FACE_THRESHOLD, available, describer_or_none, face_distance
from mlsan_edge.runtime.face_tracking import FaceObs, FrameFaces

needs_face_id = pytest.mark.skipif(not available(), reason="face identity needs mlsan-edge[face-id] (dlib)")


def _largest_face(image):
    from mlsan_edge.runtime.face_tracking import HaarDetector

    boxes = HaarDetector()(image)
    assert len(boxes), "no face found in the still"
    return tuple(int(v) for v in max(boxes, key=lambda b: b[2] * b[3]))


@needs_face_id
def test_descriptor_separates_people_and_matches_the_same_face(shared_data):
    """Two RAVDESS actors' stills: each is near itself (shifted/rescaled box) and far from the other."""
    import cv2

    fd = describer_or_none("on")
    descs = []
    for actor in (1, 2):
        img = cv2.imread(str(shared_data / "ravdess" / "faces" / f"Actor_{actor:02d}.png"))
        x, y, w, h = _largest_face(img)
        a = fd(img, (x, y, w, h))
        b = fd(img, (x + w // 20, y - h // 20, w, h))  # a slightly different box: the same person
        assert a.shape == (FACE_DIM,) and a.dtype == np.float32 and np.isfinite(a).all()
        assert face_distance(a, b) < FACE_THRESHOLD
        descs.append(a)
    assert face_distance(*descs) > FACE_THRESHOLD
    assert fd(np.zeros((100, 100, 3), np.uint8), (0, 0, 20, 20)) is None  # too small to describe


def test_missing_dlib_is_explained(monkeypatch):
    import importlib.util

    from mlsan_edge.runtime import face_identity

    monkeypatch.setattr(face_identity, "models_dir", lambda: None)
    assert describer_or_none("none") is None
    assert describer_or_none("auto") is None  # off, runs as before
    with pytest.raises(ImportError, match=r"mlsan-edge\[face-id\]"):
        describer_or_none("on")
    assert importlib.util.find_spec("mlsan_edge.runtime.face_identity") is not None


def test_track_descriptor_prefers_descriptors_computed_inside_the_utterance():
    old, new = np.zeros(FACE_DIM, np.float32), np.ones(FACE_DIM, np.float32)
    frames = [FrameFaces(1.0, [FaceObs(3, (0, 0, 50, 50), None, 0.0, old, 0.5)]),
              FrameFaces(1.1, [FaceObs(3, (0, 0, 50, 50), None, 0.0, new, 1.1)]),
              FrameFaces(1.2, [FaceObs(4, (60, 0, 50, 50), None, 0.0, old, 1.2)])]
    assert np.array_equal(track_descriptor(frames, 3), new)  # the stale one (t=0.5) is left out
    assert np.array_equal(track_descriptor(frames[:1], 3), old)  # none inside: the carried one
    assert track_descriptor(frames, 9) is None and track_descriptor(frames, None) is None
