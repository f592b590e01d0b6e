"""Who a face is: a 128-d descriptor per face track (dlib's face-recognition ResNet), off the latency path.

The speaker cache (`speakers.py`) uses the descriptor of the speaking face as a person's identity
key whenever a face is in view; the voice is the fallback. A descriptor is computed from a face
box found by `face_tracking.py` (no second detector): dlib's 5-point shape predictor aligns the
face, and `face_recognition_model_v1` (a ResNet-34-like network, 128-d output, about 75 ms per
face on the development CPU) describes a 150x150 aligned chip. Same person: Euclidean distance
<= ~0.45, different people >= ~0.54 on 28 identities (RAVDESS stills, GRID, CREMA-D, a Pexels
clip; issue #10); `FACE_THRESHOLD` sits between.

Weights: `dlib_face_recognition_resnet_model_v1.dat` and `shape_predictor_5_face_landmarks.dat`
from the `face_recognition_models` package (CC0 weights; the 68-point model it also ships is not
used: its training data is reputedly non-commercial); runtime `dlib-bin` (Boost licence). Both
come with the `[face-id]` extra; nothing is downloaded at run time. Without them the runtime
behaves as before: voices only.

Cost: `FaceAnalyzer` asks for a descriptor at most once per `refresh_s` per face track (in the
video thread, or the caller's thread with `Step.frame`), and every observation of the track in
between carries the latest one, so the end of an utterance only reads what is already there.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FACE_DIM = 128
# Euclidean distance between raw descriptors (they are not unit vectors: norm ~1.44), as dlib's
# own 0.6 rule. At or below it, the same person. Measured on 28 identities: same person <= 0.45,
# different >= 0.54 (issue #10); on the shared GRID + CREMA-D clips (Haar boxes, 5 frames per
# clip): same <= 0.45, different >= 0.63.
FACE_THRESHOLD = 0.5
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
INSTALL_HINT = "pip install 'mlsan-edge[face-id]' (dlib-bin and face_recognition_models)"
MIN_FACE_PX = 40  # smaller faces give unreliable descriptors: none is computed


def models_dir() -> Path | None:
    """The folder holding the `face_recognition_models` weights, or None when not installed.

    Found without importing the package (its __init__ needs pkg_resources, gone from new setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if (d / RECOGNITION_MODEL).exists() and (d / SHAPE_MODEL).exists():
            return d
    return None


def available() -> bool:
    """Whether face identity can run (dlib and the weights are installed)."""
    return importlib.util.find_spec("dlib") is not None and models_dir() is not None


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two (128,) descriptors (or a descriptor and a centroid)."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


class FaceDescriber:
    """BGR frame + face box -> (128,) float32 descriptor (dlib ResNet on the 5-point aligned chip).

    Args:
        models: folder of the two .dat files (default: the `face_recognition_models` package's).

    Raises ImportError, saying what to install, when dlib or the weights are missing.
    """

    def __init__(self, models: str | Path | None = None) -> None:
        try:
            import dlib
        except ImportError as e:
            raise ImportError(f"face identity needs dlib: {INSTALL_HINT}") from e
        d = Path(models) if models is not None else models_dir()
        if d is None or not (d / RECOGNITION_MODEL).exists() or not (d / SHAPE_MODEL).exists():
            raise ImportError(f"face identity needs the weights {RECOGNITION_MODEL} and {SHAPE_MODEL}: {INSTALL_HINT}")
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(d / SHAPE_MODEL))
        self._net = dlib.face_recognition_model_v1(str(d / RECOGNITION_MODEL))
        self._lock = threading.Lock()  # one network, called from the video thread and tests

    def __call__(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """The descriptor of the face in `box` (x, y, w, h pixels) of a BGR (H, W, 3) uint8 frame,
        or None when the box is too small (< `MIN_FACE_PX`)."""
        x, y, w, h = (int(v) for v in box)
        if min(w, h) < MIN_FACE_PX:
            return None
        rgb = np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else np.ascontiguousarray(
            np.repeat(image[:, :, None], 3, axis=2))
        rect = self._dlib.rectangle(x, y, x + w, y + h)
        with self._lock:
            shape = self._shape(rgb, rect)
            d = self._net.compute_face_descriptor(rgb, shape)
        return np.asarray(d, np.float32)


def describer_or_none(mode: str = "auto") -> FaceDescriber | None:
    """The describer for `RuntimeConfig.face_id`: "auto" (when installed; else None, logged once),
    "on" (required: ImportError when missing) or "none"."""
    if mode == "none":
        return None
    if mode == "auto" and not available():
        log.info("face identity off (%s); speakers are told apart by voice only", INSTALL_HINT)
        return None
    return FaceDescriber()


__all__ = ["FACE_DIM", "FACE_THRESHOLD", "FaceDescriber", "available", "describer_or_none", "face_distance",
           "models_dir"]
