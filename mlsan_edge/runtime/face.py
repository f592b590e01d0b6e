"""Face detection, landmarks and the 35-d AU-like visual vector (offline, no torch).

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

Per utterance (`visual_features`): the frames inside [start_s, end_s) are turned into one vector
in the OpenFace layout the model was trained on (`mlsan_edge.data.ravdess.AU_COLUMNS`: 17 AU
intensities `AUxx_r_mean` + 18 presence fractions `AUxx_c_frac`).

What the vector is — and is not
-------------------------------
The model was trained on OpenFace 2 action units (RAVDESS), which no wheel computes. These are
**AU-like geometric measures**, not AUs: distances between Face Mesh landmarks in the image
plane, roll-corrected and divided by the inter-ocular distance (IOD, eye outer corners 33-263),
taken relative to the **speaker's own neutral baseline** (the running mean of the same measure over
every frame seen of that speaker), signed so that the AU's muscle action increases it, and mapped
to OpenFace's 0-5 scale by a fixed, *uncalibrated* unit per measure (`UNITS`):

    AU01 inner brow raiser   inner brow (107/336) height above inner eye corner (133/362)
    AU02 outer brow raiser   outer brow (70/300) height above outer eye corner (33/263)
    AU04 brow lowerer        - distance between the inner brows (107-336)
    AU05 upper lid raiser    eye aperture, upper-lower lid (159-145, 386-374)
    AU06 cheek raiser        - distance cheek (205/425) to lower lid (145/374)
    AU07 lid tightener       - eye aperture
    AU09 nose wrinkler       - nose length, nasion (168) to subnasale (2)
    AU10 upper lip raiser    - distance subnasale (2) to upper lip (0)
    AU12 lip corner puller   lip corners (61/291) height above the lip midline (13/14)
    AU14 dimpler             not derivable from landmarks: NaN (filled by the runtime)
    AU15 lip corner depressor - AU12's measure
    AU17 chin raiser         - distance lower lip (17) to chin (152)
    AU20 lip stretcher       mouth width (61-291)
    AU23 lip tightener       - lip thickness, (0-13) + (14-17)
    AU25 lips part           inner lip aperture (13-14)
    AU26 jaw drop            subnasale (2) to chin (152)
    AU45 blink               - eye aperture; presence = aperture below 60 % of the baseline
    AU28 lip suck (presence only) not derivable: NaN

Intensity per frame = clip((measure - baseline) / unit, 0, 5); `_r_mean` is its mean over the
utterance's frames, `_c_frac` the fraction of frames with intensity >= 1 (OpenFace's presence is a
separate classifier; this threshold only imitates it). Several AUs share one measure with opposite
signs (AU05/AU07/AU45, AU12/AU15), and head pitch/yaw are not compensated. Columns that cannot be
derived are NaN and `derived` says which; the runtime fills them with the training mean, so stage 1
sees them as "average". **No accuracy of the model on these live features has been measured:**
treat the visual modality on device as unvalidated until it is (stage 2's trust weight shows how
much the model leans on it).

Several faces: the utterance goes to the face whose mouth opening (lip aperture, or lower-face
motion when there are no landmarks) correlates best with the voice's energy envelope
(`attribute`); with too few frames or no positive correlation, to the largest face.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsan_edge.config import SAMPLE_RATE, VISUAL_DIM

log = logging.getLogger(__name__)

MESH_PATH = Path(__file__).resolve().parents[1] / "assets" / "face" / "face_landmark.tflite"
MESH_SIZE = 192  # Face Mesh input: 192x192 RGB in [0, 1]
MESH_ROI_SCALE = 1.5  # MediaPipe enlarges the detection box 1.5x before cropping
MESH_MIN_PRESENCE = 0.5  # sigmoid of the model's face-flag output below which landmarks are discarded

# (name, OpenFace AU number, direction). Measure functions below, one per row of MEASURES.
AU_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)  # intensities (_r_mean)
AU_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)  # presence (_c_frac)
assert len(AU_R) + len(AU_C) == VISUAL_DIM
UNDERIVED = (14, 28)  # no landmark geometry for the dimpler or lip suck

# raw geometric measures (IOD units), computed per frame from landmarks
MEASURES = ("brow_inner", "brow_outer", "brow_gap", "eye_open", "cheek_lid", "nose_len", "nose_lip",
            "corner_lift", "chin_lip", "mouth_width", "lip_thick", "lip_gap", "jaw")
_M = {m: i for i, m in enumerate(MEASURES)}
# AU -> (measure, sign): the sign makes the AU's muscle action increase (sign * measure)
AU_MEASURE = {1: ("brow_inner", 1), 2: ("brow_outer", 1), 4: ("brow_gap", -1), 5: ("eye_open", 1),
              6: ("cheek_lid", -1), 7: ("eye_open", -1), 9: ("nose_len", -1), 10: ("nose_lip", -1),
              12: ("corner_lift", 1), 15: ("corner_lift", -1), 17: ("chin_lip", -1), 20: ("mouth_width", 1),
              23: ("lip_thick", -1), 25: ("lip_gap", 1), 26: ("jaw", 1), 45: ("eye_open", -1)}
# IOD change that counts as one intensity unit (uncalibrated: eye/brow movements are small,
# mouth and jaw movements large)
UNITS = {"brow_inner": 0.015, "brow_outer": 0.015, "brow_gap": 0.015, "eye_open": 0.012, "cheek_lid": 0.012,
         "nose_len": 0.012, "nose_lip": 0.015, "corner_lift": 0.02, "chin_lip": 0.03, "mouth_width": 0.03,
         "lip_thick": 0.02, "lip_gap": 0.04, "jaw": 0.05}
BLINK_RATIO = 0.6  # AU45 present when the eye aperture falls below 60 % of the speaker's baseline
MIN_CORR = 0.1  # correlation with the voice envelope needed to prefer a face over the largest one
MIN_ATTRIB_FRAMES = 4


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
    """

    def __init__(self, landmarks: str = "auto", max_width: int = 320) -> None:
        self.detector = HaarDetector(max_width=max_width)
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
        import time

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
                    mouth, patch = float(measures[_M["lip_gap"]]), prev
                else:
                    measures = None
                    mouth, patch = self._mouth_motion(image, box, prev)
                tracks[best] = (box, patch)
                out.faces.append(FaceObs(best, box, measures, mouth))
            self._tracks = tracks
        out.ms = (time.perf_counter() - t0) * 1000
        return out


class FaceBuffer:
    """The analysed frames of the last `seconds` of stream (bounded; thread-safe)."""

    def __init__(self, seconds: float = 20.0, fps: float = 10.0) -> None:
        self._frames: deque[FrameFaces] = deque(maxlen=max(8, int(seconds * fps)))
        self._lock = threading.Lock()
        self.latest_t = -np.inf

    def add(self, f: FrameFaces) -> None:
        with self._lock:
            self._frames.append(f)
            self.latest_t = max(self.latest_t, f.t)

    def window(self, start_s: float, end_s: float) -> list[FrameFaces]:
        with self._lock:
            return [f for f in self._frames if start_s <= f.t < end_s]

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self.latest_t = -np.inf


# --- attribution ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attribution:
    track: int | None  # the face the utterance is attributed to (None: no face in the window)
    method: str  # "only", "voice_correlation", "largest" or "none"
    correlation: float | None  # Pearson r of the chosen face's mouth signal with the voice envelope
    n_faces: int  # distinct faces (tracks) seen during the utterance


def energy_envelope(audio: np.ndarray, start_s: float, times: np.ndarray, win_s: float = 0.08) -> np.ndarray:
    """RMS (dB) of the utterance audio in a `win_s` window around each time in `times` (s)."""
    half = int(win_s * SAMPLE_RATE / 2)
    idx = np.round((np.asarray(times) - start_s) * SAMPLE_RATE).astype(int)
    out = np.empty(len(idx), np.float32)
    for i, c in enumerate(idx):
        seg = audio[max(0, c - half):max(0, c + half)]
        out[i] = 10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-10) if seg.size else -100.0
    return out


def attribute(frames: list[FrameFaces], audio: np.ndarray, start_s: float) -> Attribution:
    """Pick the face that speaks: mouth opening correlated with the voice envelope, else the largest."""
    per: dict[int, list[tuple[float, float, int]]] = {}
    for f in frames:
        for o in f.faces:
            per.setdefault(o.track, []).append((f.t, o.mouth, o.area))
    if not per:
        return Attribution(None, "none", None, 0)
    largest = max(per, key=lambda k: np.mean([a for _, _, a in per[k]]) * len(per[k]))
    if len(per) == 1:
        return Attribution(largest, "only", _corr(per[largest], audio, start_s), 1)
    corrs = {k: _corr(v, audio, start_s) for k, v in per.items()}
    valid = {k: c for k, c in corrs.items() if c is not None}
    if valid:
        best = max(valid, key=valid.get)
        if valid[best] >= MIN_CORR:
            return Attribution(best, "voice_correlation", valid[best], len(per))
    return Attribution(largest, "largest", corrs.get(largest), len(per))


def _corr(obs: list[tuple[float, float, int]], audio: np.ndarray, start_s: float) -> float | None:
    if len(obs) < MIN_ATTRIB_FRAMES:
        return None
    t = np.array([o[0] for o in obs])
    mouth = np.array([o[1] for o in obs], np.float64)
    env = energy_envelope(audio, start_s, t).astype(np.float64)
    if mouth.std() < 1e-9 or env.std() < 1e-9:
        return None
    return float(np.corrcoef(mouth, env)[0, 1])


# --- the visual vector --------------------------------------------------------------------------
class VisualBaselines:
    """Per-speaker neutral baseline of the raw measures: the running mean over their frames.

    Held in memory (bounded LRU), keyed by speaker id: the speaker profile's own running visual
    statistics (stage 1's calibration) then normalise the AU-like vector per speaker.
    """

    MIN_FRAMES = 30  # below this, the current utterance's frames join the baseline before use

    def __init__(self, max_speakers: int = 256) -> None:
        self._b: OrderedDict[object, tuple[np.ndarray, int]] = OrderedDict()
        self._max = max_speakers
        self._lock = threading.Lock()

    def baseline(self, key, measures: np.ndarray) -> np.ndarray:
        """The baseline for `key` to use with this utterance's (T, 13) measures; updates it."""
        with self._lock:
            mean, n = self._b.pop(key, (np.zeros(len(MEASURES)), 0))
            k = measures.shape[0]
            new_mean = (mean * n + measures.sum(0)) / (n + k)
            use = mean if n >= self.MIN_FRAMES else new_mean
            self._b[key] = (new_mean, n + k)
            while len(self._b) > self._max:
                self._b.popitem(last=False)
            return use

    def forget(self, key) -> None:
        with self._lock:
            self._b.pop(key, None)


def au_vector(measures: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """(T, 13) measures and (13,) baseline -> (35,) float32 in AU_COLUMNS order, NaN where underived."""
    r_frames = {}
    for au, (name, sign) in AU_MEASURE.items():
        j = _M[name]
        r_frames[au] = np.clip(sign * (measures[:, j] - baseline[j]) / UNITS[name], 0.0, 5.0)
    r = [float(r_frames[au].mean()) if au in r_frames else np.nan for au in AU_R]
    c = []
    for au in AU_C:
        if au == 45:
            j = _M["eye_open"]
            c.append(float(np.mean(measures[:, j] < BLINK_RATIO * max(baseline[j], 1e-6))))
        elif au in r_frames:
            c.append(float(np.mean(r_frames[au] >= 1.0)))
        else:
            c.append(np.nan)
    return np.array(r + c, np.float32)


def derived_mask() -> np.ndarray:
    """(35,) bool: columns of the visual vector computed from landmarks (False: NaN, filled later)."""
    return np.array([au not in UNDERIVED for au in AU_R] + [au not in UNDERIVED for au in AU_C])


@dataclass(frozen=True)
class VisualResult:
    vector: np.ndarray | None  # (35,) float32 with NaN in underived columns, or None (missing)
    attribution: Attribution
    frames: int  # frames of the chosen face with landmarks
    reason: str | None = None  # why the vector is missing


def visual_features(frames: list[FrameFaces], audio: np.ndarray, start_s: float, speaker_key,
                    baselines: VisualBaselines) -> VisualResult:
    """The utterance's visual vector from the analysed frames inside it."""
    att = attribute(frames, audio, start_s)
    if att.track is None:
        return VisualResult(None, att, 0, "no face during the utterance")
    ms = [o.measures for f in frames for o in f.faces if o.track == att.track and o.measures is not None]
    if not ms:
        return VisualResult(None, att, 0, "face found but no landmarks (install ai-edge-litert)")
    m = np.stack(ms).astype(np.float64)
    return VisualResult(au_vector(m, baselines.baseline(speaker_key, m)), att, len(ms))
