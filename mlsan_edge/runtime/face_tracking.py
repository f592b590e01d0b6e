"""Faces in video frames: detection, landmarks, per-frame geometric measures, tracking (no torch).

Pipeline per video frame (`FaceAnalyzer.analyze`):

1. **Detection**: OpenCV's Haar cascade `haarcascade_frontalface_default.xml` (shipped in
   opencv-python-headless < 5 under `cv2.data.haarcascades`) on a grey copy downscaled to at most
   `max_width` pixels (13 ms at 320x240 instead of 28-74 ms at 640x480, COMPONENTS.md).
2. **Landmarks** (optional): MediaPipe Face Mesh (`face_landmark.tflite`, 468 points from a
   192x192 RGB crop; Apache-2.0, vendored from the mediapipe 0.10.14 wheel in
   `mlsan_edge/assets/face/`) run by a TFLite interpreter — `ai-edge-litert` or `tflite-runtime`,
   imported only here and only when present. Without one, faces are still detected and tracked,
   but **the visual modality is reported missing**: a box says nothing about action units.
3. **Tracking**: boxes are linked frame to frame by IoU so each face has a track id.

Each face with landmarks also gets the raw geometric measures (`MEASURES`, `geometric_measures`)
that `face_features.py` turns into the AU-like visual vector of an utterance; `FaceBuffer` keeps
the analysed frames until the utterances that need them are processed, and `FaceFeed` feeds it at
most `fps` frames per second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MESH_PATH = Path(__file__).resolve().parents[1] / "assets" / "face" / "face_landmark.tflite"
MESH_SIZE = 192  # Face Mesh input: 192x192 RGB in [0, 1]
MESH_ROI_SCALE = 1.5  # MediaPipe enlarges the detection box 1.5x before cropping
MESH_MIN_PRESENCE = 0.5  # sigmoid of the model's face-flag output below which landmarks are discarded

# raw geometric measures (IOD units), computed per frame from landmarks
MEASURES = ("brow_inner", "brow_outer", "brow_gap", "eye_open", "cheek_lid", "nose_len", "nose_lip",
            "corner_lift", "chin_lip", "mouth_width", "lip_thick", "lip_gap", "jaw")
MEASURE_INDEX = {m: i for i, m in enumerate(MEASURES)}
CUT_CHANGE = 0.45  # mean |change| of a track's z-scored face thumbnail that means another face (a cut)


# --- interpreter and models ------------------------------------------------------------------------
def _tflite_interpreter(path: Path, threads: int = 1):
    """A TFLite interpreter from ai-edge-litert or tflite-runtime, or None when neither is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            return None
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


class FaceMesh:
    """MediaPipe Face Mesh on one face crop: (192, 192, 3) RGB -> (468, 3) landmarks, presence.

    Raises ImportError (with what to install) when no TFLite interpreter is available.
    """

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        path = Path(model_path) if model_path is not None else MESH_PATH
        if not path.exists():
            raise FileNotFoundError(f"face mesh model not found at {path}; expected the vendored "
                                    "mlsan_edge/assets/face/face_landmark.tflite (reinstall mlsan-edge)")
        self._it = _tflite_interpreter(path, threads)
        if self._it is None:
            raise ImportError("face landmarks need a TFLite interpreter: pip install ai-edge-litert "
                              "(or tflite-runtime on a Jetson); without it the visual modality is missing")
        self._in = self._it.get_input_details()[0]["index"]
        outs = sorted(self._it.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
        self._landmarks, self._flag = outs[0]["index"], outs[1]["index"]
        self._lock = threading.Lock()  # a TFLite interpreter is not re-entrant

    def __call__(self, crop_rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Landmarks in crop pixels (468, 3) float32 and face presence in [0, 1]."""
        x = (crop_rgb.astype(np.float32) / 255.0)[None]
        with self._lock:
            self._it.set_tensor(self._in, x)
            self._it.invoke()
            lm = self._it.get_tensor(self._landmarks).reshape(-1, 3).copy()
            flag = float(self._it.get_tensor(self._flag).reshape(-1)[0])
        return lm, float(1.0 / (1.0 + np.exp(-flag)))


class HaarDetector:
    """Frontal faces with OpenCV's Haar cascade: BGR frame -> (n, 4) int boxes x, y, w, h."""

    def __init__(self, max_width: int = 320, min_face: int = 32) -> None:
        import cv2

        xml = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cv2 = cv2
        self._clf = cv2.CascadeClassifier(str(xml))
        if self._clf.empty():
            raise RuntimeError(f"cannot load {xml}; OpenCV 5 has no Haar cascades: pip install "
                               "'opencv-python-headless<5'")
        self.max_width, self.min_face = max_width, min_face

    def __call__(self, image: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        h, w = image.shape[:2]
        s = min(1.0, self.max_width / w)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        if s < 1.0:
            grey = cv2.resize(grey, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        boxes = self._clf.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                           minSize=(self.min_face, self.min_face))
        if len(boxes) == 0:
            return np.zeros((0, 4), np.int32)
        return np.round(np.asarray(boxes, np.float32) / s).astype(np.int32)


# --- geometry --------------------------------------------------------------------------------------
def geometric_measures(lm: np.ndarray) -> np.ndarray:
    """The raw measures of `MEASURES` from (468, >=2) landmarks: (13,) float32 in IOD units.

    Coordinates are rotated so the eye line is horizontal (roll) and divided by the
    inter-ocular distance, so they do not depend on face size or in-plane tilt.
    """
    p = lm[:, :2].astype(np.float64)
    eye_r, eye_l = p[33], p[263]
    d = eye_l - eye_r
    iod = float(np.hypot(*d))
    if iod < 1e-6:
        return np.full(len(MEASURES), np.nan, np.float32)
    c, s = d / iod
    rot = np.array([[c, s], [-s, c]])  # rotates the eye line onto +x
    q = (p - eye_r) @ rot.T / iod  # y grows downwards, as in the image

    def dist(a, b):
        return float(np.hypot(*(q[a] - q[b])))

    mid_y = (q[13, 1] + q[14, 1]) / 2
    m = {
        "brow_inner": ((q[133, 1] - q[107, 1]) + (q[362, 1] - q[336, 1])) / 2,
        "brow_outer": ((q[33, 1] - q[70, 1]) + (q[263, 1] - q[300, 1])) / 2,
        "brow_gap": dist(107, 336),
        "eye_open": (dist(159, 145) + dist(386, 374)) / 2,
        "cheek_lid": (dist(205, 145) + dist(425, 374)) / 2,
        "nose_len": dist(168, 2),
        "nose_lip": dist(2, 0),
        "corner_lift": mid_y - (q[61, 1] + q[291, 1]) / 2,
        "chin_lip": dist(17, 152),
        "mouth_width": dist(61, 291),
        "lip_thick": dist(0, 13) + dist(14, 17),
        "lip_gap": dist(13, 14),
        "jaw": dist(2, 152),
    }
    return np.array([m[k] for k in MEASURES], np.float32)


# --- per-frame analysis and tracking -----------------------------------------------------------------
@dataclass
class FaceObs:
    """One face in one frame."""

    track: int
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    measures: np.ndarray | None  # (13,) IOD units, or None without landmarks
    mouth: float  # mouth-opening signal: lip aperture (IOD) or lower-face motion (no landmarks)
    descriptor: np.ndarray | None = None  # (128,) identity of the track's face (`face_identity.py`),
    #                                       computed at most every `refresh_s`; None without [face-id]
    descriptor_t: float | None = None  # frame time the descriptor was computed on, s

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


@dataclass
class FrameFaces:
    t: float  # frame time, s
    faces: list[FaceObs] = field(default_factory=list)
    ms: float = 0.0  # analysis time of the frame


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


class FaceAnalyzer:
    """Detects, tracks and (with a TFLite interpreter) measures the faces of each frame.

    Args:
        landmarks: "auto" (Face Mesh when an interpreter is installed), "none" (boxes only), or
            the path of a face_landmark.tflite file.
        max_width: detection runs on a copy at most this wide (pixels).
        describer: a `face_identity.FaceDescriber` (None: no identity descriptors).
        refresh_s: a track's descriptor is recomputed when older than this (s); the observations
            in between carry the latest one.
    """

    def __init__(self, landmarks: str = "auto", max_width: int = 320, describer=None,
                 refresh_s: float = 1.0) -> None:
        self.detector = HaarDetector(max_width=max_width)
        self.describer, self.refresh_s = describer, float(refresh_s)
        self._described: dict[int, tuple[float, np.ndarray]] = {}  # track -> (t, descriptor)
        self._thumbs: dict[int, np.ndarray] = {}  # track -> its face's last 16x16 z-scored grey thumbnail
        self.mesh: FaceMesh | None = None
        if landmarks != "none":
            try:
                self.mesh = FaceMesh(None if landmarks == "auto" else landmarks)
            except ImportError as e:
                if landmarks != "auto":
                    raise
                log.warning("%s", e)
        self._tracks: dict[int, tuple[tuple, np.ndarray | None]] = {}  # id -> (last box, last mouth patch)
        self._next = 0
        self._lock = threading.Lock()

    @property
    def has_landmarks(self) -> bool:
        return self.mesh is not None

    def reset(self) -> None:
        with self._lock:
            self._tracks, self._next = {}, 0
            self._described, self._thumbs = {}, {}

    def _crop(self, image: np.ndarray, box) -> tuple[np.ndarray, float, float, float]:
        import cv2

        x, y, w, h = box
        side = MESH_ROI_SCALE * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = cx - side / 2, cy - side / 2
        scale = MESH_SIZE / side
        m = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
        crop = cv2.warpAffine(image, m, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), x0, y0, 1.0 / scale

    def _mouth_motion(self, image: np.ndarray, box, prev: np.ndarray | None) -> tuple[float, np.ndarray]:
        """Mean absolute change of the lower third of the face box (a 32x16 grey patch)."""
        import cv2

        x, y, w, h = box
        roi = image[max(0, y + 2 * h // 3):y + h, max(0, x + w // 4):x + 3 * w // 4]
        if roi.size == 0:
            return 0.0, prev
        patch = cv2.resize(cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY), (32, 16)).astype(np.float32)
        return (float(np.abs(patch - prev).mean()) if prev is not None else 0.0), patch

    def analyze(self, t: float, image: np.ndarray) -> FrameFaces:
        """Faces of one BGR frame at stream time `t` (s)."""
        t0 = time.perf_counter()
        boxes = [tuple(int(v) for v in b) for b in self.detector(image)]
        out = FrameFaces(t)
        with self._lock:
            free = dict(self._tracks)
            tracks = {}
            for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
                best = max(free, key=lambda k: _iou(free[k][0], box), default=None)
                if best is None or _iou(free[best][0], box) < 0.3:
                    best, prev = self._next, None
                    self._next += 1
                else:
                    prev = free.pop(best)[1]
                measures = None
                if self.mesh is not None:
                    crop, x0, y0, inv = self._crop(image, box)
                    lm, presence = self.mesh(crop)
                    if presence >= MESH_MIN_PRESENCE:
                        lm[:, 0], lm[:, 1] = lm[:, 0] * inv + x0, lm[:, 1] * inv + y0
                        measures = geometric_measures(lm)
                if measures is not None and np.all(np.isfinite(measures)):
                    mouth, patch = float(measures[MEASURE_INDEX["lip_gap"]]), prev
                else:
                    measures = None
                    mouth, patch = self._mouth_motion(image, box, prev)
                obs = FaceObs(best, box, measures, mouth)
                if self._describe(obs, image, t):  # another person in the same place (a hard cut)
                    obs.track = self._next
                    self._next += 1
                    self._described[obs.track] = self._described.pop(best)
                    self._thumbs[obs.track] = self._thumbs.pop(best)
                tracks[obs.track] = (box, patch)
                out.faces.append(obs)
            self._tracks = tracks
            self._described = {k: v for k, v in self._described.items() if k in tracks}
            self._thumbs = {k: v for k, v in self._thumbs.items() if k in tracks}
        out.ms = (time.perf_counter() - t0) * 1000
        return out


    def _describe(self, obs: FaceObs, image: np.ndarray, t: float) -> bool:
        """Attach the track's identity descriptor: a new one when the last is older than refresh_s.
        True when the new one is another person's (farther than FACE_THRESHOLD from the last)."""
        if self.describer is None:
            return False
        from mlsan_edge.runtime.face_identity import FACE_THRESHOLD, face_distance

        last = self._described.get(obs.track)
        changed = False
        thumb = _thumbnail(image, obs.box)
        before = self._thumbs.get(obs.track)
        self._thumbs[obs.track] = thumb
        # the face in the box changed at once (a hard cut to another person at the same place):
        # describe it now, not `refresh_s` later (frame to frame: same face <= 0.31, cut >= 0.58 on GRID)
        jump = before is not None and thumb is not None and float(np.abs(thumb - before).mean()) > CUT_CHANGE
        if last is None or jump or t - last[0] >= self.refresh_s or t < last[0]:
            d = self.describer(image, obs.box)
            if d is not None:
                changed = last is not None and face_distance(d, last[1]) > FACE_THRESHOLD
                last = self._described[obs.track] = (t, d)
        if last is not None:
            obs.descriptor_t, obs.descriptor = last
        return changed


def _thumbnail(image: np.ndarray, box) -> np.ndarray | None:
    """16x16 grey thumbnail of the box, z-scored (None for an empty box)."""
    import cv2

    x, y, w, h = box
    roi = image[max(0, y):y + h, max(0, x):x + w]
    if roi.size == 0:
        return None
    g = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY) if roi.ndim == 3 else roi
    t = cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (t - t.mean()) / (t.std() + 1e-6)


class FaceBuffer:
    """The analysed frames of the last `seconds` of stream (bounded; thread-safe)."""

    def __init__(self, seconds: float = 20.0, fps: float = 10.0) -> None:
        self._frames: deque[FrameFaces] = deque(maxlen=max(8, int(seconds * fps)))
        self._lock = threading.Lock()
        self.latest_t = -np.inf
        self.last: FrameFaces | None = None  # the frame added last

    def add(self, f: FrameFaces) -> None:
        with self._lock:
            self._frames.append(f)
            self.latest_t = max(self.latest_t, f.t)
            self.last = f

    def window(self, start_s: float, end_s: float) -> list[FrameFaces]:
        with self._lock:
            return [f for f in self._frames if start_s <= f.t < end_s]

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self.latest_t = -np.inf



class FaceFeed:
    """Video frames -> analysed faces in a `FaceBuffer`, at most `fps` frames per second of video.

    Args:
        analyzer: the `FaceAnalyzer` (its tracks are reset: a new video starts).
        fps: frames analysed per second of video; the others are skipped.
    """

    def __init__(self, analyzer: FaceAnalyzer, fps: float) -> None:
        analyzer.reset()
        self.analyzer = analyzer
        self.buffer = FaceBuffer(fps=fps)
        self._period, self._next_t = 1.0 / fps, -np.inf

    def wants(self, t: float) -> bool:
        """Whether the frame at stream time `t` (s) would be analysed (not skipped for the rate)."""
        return t >= self._next_t

    def add(self, t: float, image: np.ndarray) -> bool:
        """Analyse the BGR frame at stream time `t` (s) unless the rate skips it; True when analysed."""
        if not self.wants(t):
            return False
        self._next_t = t + self._period * 0.999
        self.buffer.add(self.analyzer.analyze(t, image))
        return True
