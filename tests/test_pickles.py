"""DialogueRNN/MMGCN feature pickles: layout variants, the trust gate and the restricted unpickler."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from mlsan_edge.config import EMOTIONS, VOICE_DIM
from mlsan_edge.data.pickles import load_feature_pickle, read_pickle
from mlsan_edge.data.ravdess import DataError
from mlsan_edge.data.replay import profile_inputs, stream_order
from mlsan_edge.profile import GlobalStats
from mlsan_edge.data.table import UtteranceTable

D_TEXT, D_AUDIO, D_VISUAL, N_SLOTS = 6, 5, 4, 9
IEMOCAP = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]


def one_hot(k: int, n: int = N_SLOTS) -> list[float]:
    v = [0.0] * n
    v[k] = 1.0
    return v


def make_parts(ids=(0, 1, 2), lengths=(3, 4, 2), n_classes=7, seed=0, gender=False) -> dict:
    """The seven per-dialogue dicts, mixing numpy arrays and python lists as real files do."""
    rng = np.random.default_rng(seed)
    parts = {k: {} for k in ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio",
                             "videoVisual", "videoSentence")}
    for vid, n in zip(ids, lengths):
        slots = [i % 2 for i in range(n)]
        parts["videoIDs"][vid] = [f"{vid}_{i}" for i in range(n)]
        parts["videoSpeakers"][vid] = ["MF"[s] for s in slots] if gender else [one_hot(s) for s in slots]
        parts["videoLabels"][vid] = [int(x) for x in rng.integers(0, n_classes, n)]
        parts["videoText"][vid] = [rng.normal(size=D_TEXT).astype(np.float32) for _ in range(n)]  # list of arrays
        parts["videoAudio"][vid] = rng.normal(size=(n, D_AUDIO))  # one float64 array
        parts["videoVisual"][vid] = rng.normal(size=(n, D_VISUAL)).tolist()  # lists of floats
        parts["videoSentence"][vid] = [f"utterance {i} of {vid}" for i in range(n)]
    return parts


def as_tuple(parts: dict, train, test, valid=None, tenth: object = "absent") -> tuple:
    t = tuple(parts[k] for k in ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio",
                                 "videoVisual", "videoSentence")) + (train, test)
    if valid is not None:
        return t + (valid,)
    return t if tenth == "absent" else t + (tenth,)


def write(path, obj, protocol=2) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 8-bit strings (SHORT_BINSTRING/BINSTRING), as a Python 2 pickle of
    numpy arrays stores their data: such files only load with encoding='latin1'."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2(path, obj) -> str:
    import io

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # numpy 1.x names
    assert b"c__builtin__\n" in data and b"cnumpy.core.multiarray\n" in data  # Python 2 / numpy 1 names
    path.write_bytes(data)
    return str(path)


def check_rows(t: UtteranceTable, parts: dict, ids) -> None:
    row = 0
    for vid in ids:
        n = len(parts["videoLabels"][vid])
        sl = slice(row, row + n)
        np.testing.assert_array_equal(t.label[sl], parts["videoLabels"][vid])
        np.testing.assert_allclose(t.text[sl], np.stack(parts["videoText"][vid]), rtol=1e-6)
        np.testing.assert_allclose(t.audio[sl], np.asarray(parts["videoAudio"][vid], np.float32), rtol=1e-6)
        np.testing.assert_allclose(t.visual[sl], np.asarray(parts["videoVisual"][vid], np.float32), rtol=1e-6)
        np.testing.assert_array_equal(t.position[sl], np.arange(n))
        row += n
    assert row == len(t)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_nine_tuple_round_trip(tmp_path, protocol):
    parts = make_parts()
    path = write(tmp_path / "meld.pkl", as_tuple(parts, train={1, 0}, test=[2]), protocol)
    t = load_feature_pickle(path, "train", trusted=True)
    assert (t.text.shape, t.audio.shape, t.visual.shape) == ((7, D_TEXT), (7, D_AUDIO), (7, D_VISUAL))
    assert t.text.dtype == t.audio.dtype == t.visual.dtype == np.float32
    check_rows(t, parts, [0, 1])  # dialogues in sorted id order, even from a set
    assert t.voice.shape == (7, VOICE_DIM) and not t.voice.any() and not t.mask_voice.any()
    assert t.mask_text.all() and t.mask_audio.all() and t.mask_visual.all()
    assert t.label.dtype == np.int64 and t.group.dtype == np.int64
    np.testing.assert_array_equal(t.group, [0, 0, 0, 1, 1, 1, 1])
    assert list(t.speaker) == ["0:slot0", "0:slot1", "0:slot0", "1:slot0", "1:slot1", "1:slot0", "1:slot1"]
    test = load_feature_pickle(path, "test", trusted=True)
    check_rows(test, parts, [2])
    np.testing.assert_array_equal(test.group, [2, 2])


def test_ten_tuple_with_valid_split(tmp_path):
    parts = make_parts()
    path = write(tmp_path / "meld10.pkl", as_tuple(parts, train=[0], test=[2], valid=[1]))
    for split, vid in (("train", 0), ("valid", 1), ("test", 2)):
        t = load_feature_pickle(path, split, trusted=True)
        check_rows(t, parts, [vid])
        assert set(t.group) == {vid}


def test_valid_split_absent(tmp_path):
    parts = make_parts()
    nine = write(tmp_path / "nine.pkl", as_tuple(parts, train=[0, 1], test=[2]))
    with pytest.raises(DataError, match="no valid split.*9 elements"):
        load_feature_pickle(nine, "valid", trusted=True)
    # MMGCN's MELD file: the tenth element is not a list of dialogue ids
    mmgcn = write(tmp_path / "mmgcn.pkl", as_tuple(parts, train=[0, 1], test=[2], tenth={0: [0, 1, 2]}))
    assert len(load_feature_pickle(mmgcn, "train", trusted=True)) == 7
    with pytest.raises(DataError, match="no valid split.*tenth element is a dict"):
        load_feature_pickle(mmgcn, "valid", trusted=True)


def test_python2_latin1_pickle_iemocap(tmp_path):
    ids = ("Ses01F_impro01", "Ses01M_script02", "Ses02F_impro03")
    parts = make_parts(ids=ids, n_classes=len(IEMOCAP), gender=True)
    parts["videoAudio"] = {k: np.asarray(v, np.float32) + 300.0 for k, v in parts["videoAudio"].items()}  # non-ASCII bytes
    path = write_py2(tmp_path / "iemocap.pkl", as_tuple(parts, train=set(ids[:2]), test=[ids[2]]))
    with pytest.raises(UnicodeDecodeError):  # proves this is a Python-2-style file
        with open(path, "rb") as f:
            pickle.load(f)
    t = load_feature_pickle(path, "train", label_names=IEMOCAP, trusted=True)
    check_rows(t, parts, ids[:2])
    assert list(t.speaker[:3]) == ["Ses01F_impro01:slot0", "Ses01F_impro01:slot1", "Ses01F_impro01:slot0"]
    np.testing.assert_array_equal(np.unique(t.group), [0, 1])  # string ids: rank among the sorted ids
    assert load_feature_pickle(path, "test", label_names=IEMOCAP, trusted=True).group[0] == 2


def test_integral_float_labels_are_accepted(tmp_path):
    parts = make_parts()
    parts["videoLabels"] = {k: np.asarray(v, np.float64) for k, v in parts["videoLabels"].items()}
    t = load_feature_pickle(write(tmp_path / "f.pkl", as_tuple(parts, train=[0], test=[2])), "train", trusted=True)
    assert t.label.dtype == np.int64
    np.testing.assert_array_equal(t.label, parts["videoLabels"][0])
    parts["videoLabels"][0][0] = 0.5
    with pytest.raises(DataError, match="expected integers"):
        load_feature_pickle(write(tmp_path / "g.pkl", as_tuple(parts, train=[0], test=[2])), "train", trusted=True)


def test_labels_validated_against_label_names(tmp_path):
    parts = make_parts()
    parts["videoLabels"][0][1] = 7  # one past MELD's last class
    path = write(tmp_path / "bad_label.pkl", as_tuple(parts, train=[0], test=[2]))
    with pytest.raises(DataError, match=r"0\.\.6"):
        load_feature_pickle(path, "train", trusted=True)
    names = list(EMOTIONS) + ["other"]
    assert load_feature_pickle(path, "train", label_names=names, trusted=True).label[1] == 7


def test_untrusted_is_refused_before_opening(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path / "evil.pkl", Evil(f"touch {marker}"))
    for trusted in (False, None, "yes"):
        with pytest.raises(ValueError, match="arbitrary code"):
            load_feature_pickle(path, "train", trusted=trusted)
    assert not marker.exists()


class Evil:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused(tmp_path, protocol):
    marker = tmp_path / "ran"
    parts = make_parts()
    parts["videoSentence"][0][0] = Evil(f"touch {marker}")  # hidden deep inside a valid-looking tuple
    path = write(tmp_path / "evil.pkl", as_tuple(parts, train=[0], test=[2]), protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_feature_pickle(path, "train", trusted=True)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (builtins|__builtin__)\.eval"):
        read_pickle(write(tmp_path / "eval.pkl", EvalReduce(), protocol), trusted=True)


class EvalReduce:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_bad_split_and_missing_file(tmp_path):
    path = write(tmp_path / "ok.pkl", as_tuple(make_parts(), train=[0], test=[2]))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_feature_pickle(path, "dev", trusted=True)
    with pytest.raises(DataError, match="not found"):
        load_feature_pickle(tmp_path / "nope.pkl", "train", trusted=True)


def test_wrong_tuple_length(tmp_path):
    parts = make_parts()
    path = write(tmp_path / "eight.pkl", as_tuple(parts, train=[0], test=[2])[1:])
    with pytest.raises(DataError, match="9- or 10-element tuple.*8-element tuple"):
        load_feature_pickle(path, "train", trusted=True)
    with pytest.raises(DataError, match="got dict"):
        load_feature_pickle(write(tmp_path / "dict.pkl", {"a": 1}), "train", trusted=True)


def test_split_ids_missing_from_dicts(tmp_path):
    parts = make_parts()
    path = write(tmp_path / "missing.pkl", as_tuple(parts, train=[0, 99], test=[2]))
    with pytest.raises(DataError, match=r"not keys of videoIDs.*\[99\]"):
        load_feature_pickle(path, "train", trusted=True)
    del parts["videoAudio"][2]
    path = write(tmp_path / "missing_audio.pkl", as_tuple(parts, train=[0], test=[2]))
    with pytest.raises(DataError, match="not keys of videoAudio"):
        load_feature_pickle(path, "test", trusted=True)


def test_nan_features_and_bad_shapes(tmp_path):
    parts = make_parts()
    parts["videoAudio"][1][2, 3] = np.nan
    path = write(tmp_path / "nan.pkl", as_tuple(parts, train=[0, 1], test=[2]))
    with pytest.raises(DataError, match=r"videoAudio\[1\] has NaN/inf values \(first at utterance 2\)"):
        load_feature_pickle(path, "train", trusted=True)
    assert len(load_feature_pickle(path, "test", trusted=True)) == 2  # other splits unaffected
    parts = make_parts()
    parts["videoText"][0] = parts["videoText"][0][:-1]  # one vector short
    path = write(tmp_path / "short.pkl", as_tuple(parts, train=[0], test=[2]))
    with pytest.raises(DataError, match=r"videoText\[0\] has shape \(2, 6\), expected \(3, D\)"):
        load_feature_pickle(path, "train", trusted=True)


def test_profiles_never_cross_dialogues(tmp_path):
    """slot0 of dialogue 1 is a new speaker: its first utterance gets the global statistics."""
    path = write(tmp_path / "meld.pkl", as_tuple(make_parts(), train=[0, 1, 2], test=[2]))
    t = load_feature_pickle(path, "train", trusted=True)
    stats = GlobalStats.fit(t)
    prof = profile_inputs(t, stream_order(t), stats)
    firsts = [np.flatnonzero(t.speaker == s)[0] for s in np.unique(t.speaker)]
    assert len(firsts) == 6  # two slots in each of three dialogues
    for i in firsts:
        np.testing.assert_allclose(prof["profile_audio_mean"][i], stats.mean["audio"], rtol=1e-5)
        np.testing.assert_array_equal(prof["profile_conf"][i], 0)
    t.save(tmp_path / "table.npz")  # the pickle-free form to keep
    back = UtteranceTable.load(tmp_path / "table.npz")
    np.testing.assert_array_equal(back.audio, t.audio)
    np.testing.assert_array_equal(back.speaker, t.speaker)
