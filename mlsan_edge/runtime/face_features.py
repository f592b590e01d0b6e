"""The 35-d AU-like visual vector of an utterance, and which face in the frames is speaking.

Per utterance (`visual_features`): the analysed frames inside [start_s, end_s) (`face_tracking.py`)
are turned into one vector in the OpenFace layout the model was trained on
(`mlsan_edge.data.ravdess.AU_COLUMNS`: 17 AU intensities `AUxx_r_mean` + 18 presence fractions
`AUxx_c_frac`).

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

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from mlsan_edge.config import SAMPLE_RATE, VISUAL_DIM
from mlsan_edge.runtime.face_tracking import MEASURE_INDEX, MEASURES, FrameFaces

# OpenFace AU numbers of the vector's columns
AU_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)  # intensities (_r_mean)
AU_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)  # presence (_c_frac)
assert len(AU_R) + len(AU_C) == VISUAL_DIM
UNDERIVED = (14, 28)  # no landmark geometry for the dimpler or lip suck

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


def track_descriptor(frames: list[FrameFaces], track: int | None) -> np.ndarray | None:
    """(128,) identity descriptor of face `track` in these frames: the mean of the distinct
    descriptors computed on these frames (`FaceAnalyzer` refreshes them every `refresh_s`); when
    none was, the latest one the track carries from before. None: no such track, or face identity off.
    (A descriptor from before the window may be another person's: a hard cut can keep the track.)"""
    if track is None or not frames:
        return None
    seen = {}
    for f in frames:
        for o in f.faces:
            if o.track == track and o.descriptor is not None:
                seen[o.descriptor_t] = o.descriptor
    if not seen:
        return None
    inside = [t for t in seen if t >= frames[0].t]
    use = [seen[t] for t in inside] if inside else [seen[max(seen)]]
    return np.mean(np.stack(use), axis=0).astype(np.float32)


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
        j = MEASURE_INDEX[name]
        r_frames[au] = np.clip(sign * (measures[:, j] - baseline[j]) / UNITS[name], 0.0, 5.0)
    r = [float(r_frames[au].mean()) if au in r_frames else np.nan for au in AU_R]
    c = []
    for au in AU_C:
        if au == 45:
            j = MEASURE_INDEX["eye_open"]
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
                    baselines: VisualBaselines, att: Attribution | None = None) -> VisualResult:
    """The utterance's visual vector from the analysed frames inside it (`att`: the attribution,
    when the caller already has it)."""
    att = attribute(frames, audio, start_s) if att is None else att
    if att.track is None:
        return VisualResult(None, att, 0, "no face during the utterance")
    ms = [o.measures for f in frames for o in f.faces if o.track == att.track and o.measures is not None]
    if not ms:
        return VisualResult(None, att, 0, "face found but no landmarks (install ai-edge-litert)")
    m = np.stack(ms).astype(np.float64)
    return VisualResult(au_vector(m, baselines.baseline(speaker_key, m)), att, len(ms))
