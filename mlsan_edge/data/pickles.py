"""Pre-extracted MELD / IEMOCAP feature pickles (DialogueRNN, MMGCN, DialogueGCN layout).

**Security: loading a pickle can execute arbitrary code.** A pickle is a program for a small
stack machine, and a crafted one can import and call anything (``os.system`` included) the
moment it is loaded. Only load files whose origin you trust, and say so: `load_feature_pickle`
refuses unless called with ``trusted=True``. Even then it unpickles through `RestrictedUnpickler`,
which only lets numpy arrays/scalars/dtypes and plain builtin containers (dict, list, set, tuple,
str, numbers) be built; any other global raises `pickle.UnpicklingError`. That narrows the
attack surface, it does not make an untrusted file safe to open. Convert once to a table
(`UtteranceTable.save`, an ``.npz`` read with ``allow_pickle=False``) and keep that instead.

Layout: one pickled tuple
``(videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence,
trainVid, testVid[, validVid])``. The first seven are dicts keyed by dialogue id, each value
a per-utterance list or (n_utt, D) array; the last two or three are lists/sets of dialogue ids.
Some releases have nine elements, some ten; MMGCN's MELD file puts something other than a list
of ids in the tenth slot, in which case there is no ``valid`` split to load. Python 2 pickles
(IEMOCAP) need ``encoding='latin1'``; it is always used, since Python 3 pickles never contain
the 8-bit strings that it decodes.

Features: ``videoText`` -> ``text``, ``videoAudio`` -> ``audio``, ``videoVisual`` -> ``visual``,
at whatever widths the file has (MELD's are not this package's TEXT_DIM/VISUAL_DIM/AUDIO_DIM),
so a model trained on such a table needs ``ModelConfig(text_dim=..., audio_dim=...,
visual_dim=...)`` from ``table.text.shape[1]`` etc. Every row is marked present. There is no
voice embedding: ``voice`` is zeros with ``mask_voice`` False.

Labels: indices kept as stored (they must lie in ``0..len(label_names)-1``; -1 passes as
"unknown", as in `UtteranceTable`). MELD's order in these files is ['neutral', 'surprise', 'fear',
'sadness', 'joy', 'disgust', 'anger'], which is `config.EMOTIONS`. IEMOCAP has six other classes
(['happy', 'sad', 'neutral', 'angry', 'excited', 'frustrated'] in DialogueRNN's file): pass
``label_names`` so the range is checked against them, and build the model with
``n_classes=len(label_names)``; its logits then mean those classes, not EMOTIONS.

Speakers: ``videoSpeakers`` holds a one-hot *slot* per utterance (MELD: 9 slots; IEMOCAP:
'M'/'F', which DialogueRNN maps to slots 0/1). A slot names a speaker within one dialogue only;
slot 0 of one dialogue and slot 0 of the next are unrelated people. So the speaker key is
``f"{dialogue}:slot{k}"``, and what the speaker profile (`mlsan_edge.profile`) can do is limited:

* profiles never carry across dialogues: every dialogue starts each speaker from the global
  statistics, as an unseen speaker on the device would;
* there is no voice embedding, so the voice part of the speaker representation is absent;
* stage 1 calibrates only from that speaker's running statistics *within the dialogue* (a
  handful of utterances, so mostly the global prior), never from a long-term profile.

``group`` is the dialogue (its id when the ids are integers, as in MELD; otherwise its rank
among the file's sorted ids) and ``position`` the utterance's index within the dialogue.
"""

from __future__ import annotations

import _compat_pickle
import logging
import pickle
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS, VOICE_DIM
from mlsan_edge.data.ravdess import DataError
from mlsan_edge.data.table import UtteranceTable

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "valid")
FIELDS = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual",
          "videoSentence", "trainVid", "testVid", "validVid")
MODALITY_FIELDS = {"text": "videoText", "audio": "videoAudio", "visual": "videoVisual"}
GENDER_SLOTS = {"M": 0, "F": 1}  # IEMOCAP's speaker marks, DialogueRNN's one-hot order

# (module, name) pairs the restricted unpickler may build: numpy arrays, dtypes and scalars
# (numpy 1.x and 2.x spell the module differently) and inert builtins.
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
ALLOWED_GLOBALS = frozenset(
    {(m, n) for m in _NUMPY_MODULES for n in ("_reconstruct", "scalar", "_frombuffer")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # _codecs.encode: bytes in protocol <= 2
    | {("builtins", n) for n in ("dict", "list", "set", "frozenset", "tuple", "int", "float", "complex",
                                 "str", "bytes", "bytearray", "bool", "slice", "range")}
)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that builds only numpy arrays and builtin containers (see ALLOWED_GLOBALS)."""

    def find_class(self, module: str, name: str):
        key = _py3_name(module, name)  # Python 3 pickles never use the Python 2 names it maps
        if key not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: this feature pickle may only contain numpy arrays and "
                "builtin containers (dict/list/set/tuple/str/numbers); a pickle that imports anything else "
                "could run code on load. Do not open this file")
        if key[0].startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            key = ("numpy._core." + key[0][len("numpy.core."):], key[1])  # skip numpy 2's deprecation shim
        return super().find_class(*key)


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names as Python 3 sees them (`__builtin__.set` -> `builtins.set`), as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def read_pickle(path: str | Path, trusted: bool = False):
    """Unpickle `path` with `RestrictedUnpickler` (encoding latin1). Requires ``trusted=True``."""
    if trusted is not True:
        raise ValueError(
            f"refusing to unpickle {path}: loading a pickle can execute arbitrary code. Pass trusted=True only "
            "for a file whose origin you trust (loading is restricted to numpy arrays and builtin containers, "
            "which narrows but does not remove the risk), then save the result as a table (.npz)")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature pickle not found: {path} (expected e.g. MELD_features_raw.pkl or "
                        "IEMOCAP_features.pkl from DialogueRNN/MMGCN)")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError:
            raise
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
                MemoryError, RecursionError) as e:  # a length field of 2**63 (found by tests/test_fuzz.py)
            raise DataError(f"{path} is not a readable feature pickle: {type(e).__name__}: {e}") from e


def load_feature_pickle(path: str | Path, split: str = "train", label_names: list[str] | None = None,
                        trusted: bool = False) -> UtteranceTable:
    """One split of a DialogueRNN/MMGCN feature pickle as an `UtteranceTable`.

    Args:
        path: the ``.pkl`` file.
        split: "train", "test" or "valid" (only files whose tenth element lists dialogue ids).
        label_names: the class names the stored label indices refer to; default `EMOTIONS` (MELD).
        trusted: must be True: unpickling can run code (see the module docstring).

    Returns:
        A table with text/audio/visual at the file's widths (float32), zero voice, labels (N,)
        int64, speaker keys ``"{dialogue}:slot{k}"``, group = dialogue, position = utterance index.

    Raises:
        ValueError: `trusted` not True or an unknown split. DataError: missing or malformed file,
        split ids absent from the dicts, labels out of range, NaN/inf features.
        pickle.UnpicklingError: the file tries to build anything but arrays and builtins.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    names = list(label_names) if label_names is not None else list(EMOTIONS)
    path = Path(path)
    obj = read_pickle(path, trusted=trusted)
    if not isinstance(obj, (tuple, list)) or len(obj) not in (9, 10):
        got = f"a {len(obj)}-element {type(obj).__name__}" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise DataError(f"{path}: expected a 9- or 10-element tuple ({', '.join(FIELDS[:9])}[, validVid]), got {got}")
    parts = dict(zip(FIELDS, obj))
    for k in FIELDS[:7]:
        if not isinstance(parts[k], dict):
            raise DataError(f"{path}: {k} (element {FIELDS.index(k)}) should be a dict keyed by dialogue id, "
                            f"got {type(parts[k]).__name__}")
    vids = _split_ids(parts, split, path)
    return _build_table(parts, vids, names, path, split)


def _split_ids(parts: dict, split: str, path: Path) -> list:
    ids = parts.get(f"{split}Vid")
    if split == "valid" and not _is_id_list(ids):
        why = "its tuple has 9 elements" if ids is None else f"its tenth element is a {type(ids).__name__}"
        raise DataError(f"{path} has no valid split: {why}, not a list of dialogue ids (MMGCN's MELD file keeps "
                        "its validation dialogues inside trainVid; split them off yourself)")
    if not _is_id_list(ids):
        raise DataError(f"{path}: {split}Vid should be a list or set of dialogue ids, got {type(ids).__name__}")
    ids = sorted(ids, key=_id_sort_key)
    for k in ("videoIDs", "videoSpeakers", "videoLabels", *MODALITY_FIELDS.values()):
        missing = [v for v in ids if v not in parts[k]]
        if missing:
            raise DataError(f"{path}: {len(missing)} {split} dialogue ids are not keys of {k} "
                            f"(first: {missing[:3]}); the file is inconsistent")
    if not ids:
        raise DataError(f"{path}: the {split} split lists no dialogues")
    return ids


def _is_id_list(x) -> bool:
    return isinstance(x, (list, tuple, set, frozenset)) or (isinstance(x, np.ndarray) and x.ndim == 1)


def _id_sort_key(v):
    return (0, int(v), "") if _is_int(v) else (1, 0, str(v))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _build_table(parts: dict, ids: list, names: list[str], path: Path, split: str) -> UtteranceTable:
    all_ids = sorted(parts["videoIDs"], key=_id_sort_key)
    rank = {v: i for i, v in enumerate(all_ids)}
    feats = {m: [] for m in MODALITY_FIELDS}
    labels, speakers, groups, positions = [], [], [], []
    for vid in ids:
        lab = np.asarray(parts["videoLabels"][vid]).reshape(-1)
        n = len(lab)
        if np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)  # some releases store the class ids as floats
        if not np.issubdtype(lab.dtype, np.integer) or lab.min(initial=0) < -1 or lab.max(initial=0) >= len(names):
            raise DataError(f"{path}: dialogue {vid!r} has labels {sorted(set(lab.tolist()))}, expected integers "
                            f"in 0..{len(names) - 1} ({', '.join(names)}); for another label set pass label_names")
        for m, key in MODALITY_FIELDS.items():
            x = _matrix(parts[key][vid], n, f"{key}[{vid!r}]", path)
            if not np.all(np.isfinite(x)):
                bad = int(np.argmax(~np.all(np.isfinite(x), axis=1)))
                raise DataError(f"{path}: {key}[{vid!r}] has NaN/inf values (first at utterance {bad}); "
                                "re-extract the features or drop the dialogue")
            feats[m].append(x)
        spk = parts["videoSpeakers"][vid]
        if len(spk) != n:
            raise DataError(f"{path}: videoSpeakers[{vid!r}] has {len(spk)} entries for {n} labels")
        speakers += [_speaker_key(vid, s, i) for i, s in enumerate(spk)]
        labels.append(lab.astype(np.int64))
        groups.append(np.full(n, int(vid) if _is_int(vid) else rank[vid], np.int64))
        positions.append(np.arange(n, dtype=np.int64))
    arrays = {}
    for m, xs in feats.items():
        dims = {x.shape[1] for x in xs}
        if len(dims) != 1:
            raise DataError(f"{path}: {MODALITY_FIELDS[m]} vectors have differing widths {sorted(dims)}")
        arrays[m] = np.concatenate(xs)
    N = sum(len(lab) for lab in labels)
    log.info("%s [%s]: %d dialogues, %d utterances, dims text %d audio %d visual %d", path, split, len(ids), N,
             arrays["text"].shape[1], arrays["audio"].shape[1], arrays["visual"].shape[1])
    return UtteranceTable(
        corpus=f"pickle:{path.stem}:{split}", **arrays, voice=np.zeros((N, VOICE_DIM), np.float32),
        mask_audio=np.ones(N, bool), mask_visual=np.ones(N, bool), mask_text=np.ones(N, bool),
        mask_voice=np.zeros(N, bool), label=np.concatenate(labels), speaker=np.array(speakers),
        group=np.concatenate(groups), position=np.concatenate(positions))


def _matrix(x, n: int, what: str, path: Path) -> np.ndarray:
    """Per-utterance vectors as (n, D) float32."""
    try:
        a = np.asarray(x, np.float32)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: {what} is not a list of equal-length numeric vectors: {e}") from e
    if a.ndim != 2 or a.shape[0] != n:
        raise DataError(f"{path}: {what} has shape {a.shape}, expected ({n}, D): one vector per labelled utterance")
    return a


def _speaker_key(vid, s, i: int) -> str:
    """`{dialogue}:slot{k}`; a one-hot of all zeros gets a key of its own (never shares a profile)."""
    if isinstance(s, str):
        slot = GENDER_SLOTS.get(s, s)
    else:
        v = np.asarray(s, np.float64).reshape(-1)
        if v.size == 1:
            slot = int(v[0])
        elif v.size == 0 or not np.any(v > 0):
            return f"{vid}:unknown{i}"
        else:
            slot = int(np.argmax(v))
    return f"{vid}:slot{slot}"
