"""The demo overlay against a golden image (tolerant: anti-aliased text may differ by a few levels
between OpenCV builds), and its layout at other sizes."""

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from mlsan_edge.demo.overlay import OverlayState, draw_overlay  # noqa: E402
from mlsan_edge.runtime.events import Event  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "demo_overlay_golden.png"


def fixed_event(**kw) -> Event:
    probs = {"neutral": 0.05, "surprise": 0.02, "fear": 0.01, "sadness": 0.04, "joy": 0.81, "disgust": 0.03,
             "anger": 0.04}
    base = dict(start_s=3.2, end_s=5.1, speaker_id=2, speaker_name="Ann", speaker_similarity=0.83, emotion="joy",
                probs=probs, trust={"text": 0.1, "audio": 0.6, "visual": 0.3}, modalities=["text", "audio", "visual"],
                timings_ms={"vad": 0.8, "embedding": 12.0, "cache": 4.0, "audio_features": 28.0, "face": 3.0,
                            "text": 0.0, "stage1": 0.2, "stage2": 0.3, "stage3": 9.0, "total_after_end": 70.0},
                over_budget=["total_after_end"], face_used=True, face={"track": 1})
    base.update(kw)
    return Event(**base)


def fixed_frame(w: int = 640, h: int = 480) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    return np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)), np.full((h, w), 90.0)],
                    axis=-1).astype(np.uint8)


def fixed_state(scale: float = 1.0) -> OverlayState:
    s = lambda b: tuple(int(v * scale) for v in b)  # noqa: E731
    ev = fixed_event()
    return OverlayState(t=5.4, faces=[(1, s((120, 110, 150, 170))), (4, s((330, 220, 60, 70)))], speaker_track=1,
                        event=ev, recent=[("#1", "neutral"), ("#1", "anger"), ("Ann (#2)", "joy")], vu_db=-24.0,
                        in_speech=True, budgets={"vad": 10, "embedding": 25, "cache": 10, "audio_features": 30,
                                                 "face": 15, "text": 20, "stage1": 5, "stage2": 5, "stage3": 5,
                                                 "total_after_end": 60},
                        title="test")


def test_overlay_matches_golden():
    img = draw_overlay(fixed_frame(), fixed_state())
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    if not GOLDEN.exists():  # first run writes it; commit it
        cv2.imwrite(str(GOLDEN), img)
        pytest.skip(f"wrote the golden image {GOLDEN}")
    gold = cv2.imread(str(GOLDEN))
    diff = np.abs(img.astype(np.int16) - gold.astype(np.int16))
    assert diff.mean() < 2.0, f"mean abs difference {diff.mean():.2f}"
    assert (diff.max(axis=-1) > 60).mean() < 0.01, "more than 1% of pixels differ strongly"


def test_overlay_draws_on_a_copy_and_changes_the_frame():
    frame = fixed_frame()
    before = frame.copy()
    img = draw_overlay(frame, fixed_state())
    assert np.array_equal(frame, before)
    assert np.abs(img.astype(int) - frame.astype(int)).mean() > 5


def test_small_frames_are_enlarged_and_boxes_follow():
    small = fixed_frame(320, 240)
    img = draw_overlay(small, fixed_state(0.5))
    assert img.shape[:2] == (480, 640)
    # the speaker's box (scaled back up) is drawn in joy's colour at its enlarged place
    x, y = 120, 110 + 80
    assert tuple(img[y, x]) != tuple(cv2.resize(small, (640, 480))[y, x])


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_layout_fits(size):
    w, h = size
    img = draw_overlay(fixed_frame(w, h), fixed_state())
    assert img.shape[:2] == (h, w)


def test_overlay_without_event():
    img = draw_overlay(fixed_frame(), OverlayState())
    assert img.shape == (480, 640, 3)
