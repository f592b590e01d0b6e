"""runtime/clip_list: the labelled clip lists of `mlsan-edge eval --dataset clips`."""

import pytest

from mlsan_edge.config import EMOTIONS
from mlsan_edge.runtime.clip_list import (EMOTION_ALIASES, ClipListError, emotion_name, read_clip_list, resolve_list,
                                          shipped_lists)


def _list(tmp_path, text, files=("a.wav", "b.mp4")):
    for f in files:
        (tmp_path / f).write_bytes(b"x")
    p = tmp_path / "l.csv"
    p.write_text(text)
    return p


def test_reads_rows_aliases_spans_and_comments(tmp_path):
    p = _list(tmp_path, "# licence: a comment\n\nPath,Speaker,Emotion,start,end\na.wav,alice,Happy,,\n"
                        "b.mp4,bob,anger,1.5,4\n# trailing comment\n")
    a, b = read_clip_list(p)
    assert (a.path, a.speaker, a.emotion, a.start, a.end) == (tmp_path / "a.wav", "alice", "joy", None, None)
    assert (b.emotion, b.start, b.end, b.is_video, a.is_video) == ("anger", 1.5, 4.0, True, False)
    assert a.where == f"{p} line 4" and b.where == f"{p} line 5"


def test_every_alias_is_a_class_and_classes_pass_through():
    assert set(EMOTION_ALIASES.values()) <= set(EMOTIONS)
    for alias, cls in {"happy": "joy", "sad": "sadness", "angry": "anger", "fearful": "fear", "calm": "neutral",
                       "disgusted": "disgust", "surprised": "surprise", "ps": "surprise",
                       "Pleasant Surprise": "surprise", "neu": "neutral"}.items():
        assert emotion_name(alias) == cls and emotion_name(alias.upper()) == cls
    assert [emotion_name(c) for c in EMOTIONS] == list(EMOTIONS)


def test_unknown_label_names_the_row_the_value_and_the_accepted_names(tmp_path):
    p = _list(tmp_path, "path,speaker,emotion\na.wav,alice,neutral\nb.mp4,bob,bored\n")
    with pytest.raises(ClipListError, match=r"l\.csv line 3: unknown emotion 'bored'; accepted: neutral, surprise.*"
                                            r"happy->joy"):
        read_clip_list(p)


def test_missing_file_names_the_row_and_the_file(tmp_path):
    p = _list(tmp_path, "path,speaker,emotion\na.wav,alice,neutral\nnope.flac,bob,calm\n")
    with pytest.raises(FileNotFoundError, match=r"line 3: clip not found: .*nope\.flac.*--root"):
        read_clip_list(p)
    assert len(read_clip_list(p, check_files=False)) == 2


def test_root_overrides_the_lists_folder(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.wav").write_bytes(b"x")
    p = _list(tmp_path, "path,speaker,emotion\na.wav,alice,neutral\n", files=())
    assert read_clip_list(p, root=tmp_path / "media")[0].path == tmp_path / "media" / "a.wav"
    with pytest.raises(FileNotFoundError, match="not a folder"):
        read_clip_list(p, root=tmp_path / "nowhere")


@pytest.mark.parametrize("text, message", [
    ("path,emotion\na.wav,joy\n", "missing column.*speaker"),
    ("path,speaker,emotion\na.wav,,joy\n", "line 2: empty 'speaker'"),
    ("path,speaker,emotion,start,end\na.wav,s,joy,2,1\n", "line 2: end 1 s is not after start 2 s"),
    ("path,speaker,emotion,start\na.wav,s,joy,soon\n", "line 2: start 'soon' is not a number"),
    ("path,speaker,emotion,start\na.wav,s,joy,-1\n", "start must be >= 0"),
    ("path,speaker,emotion\n", "lists no clips"),
    ("# only a comment\n", "no header"),
])
def test_bad_lists_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(ClipListError, match=message):
        read_clip_list(_list(tmp_path, text))


def test_shipped_lists_resolve_by_name_and_parse():
    assert {"talking_grid13", "talking_cremad1001", "emospeech_eval"} <= set(shipped_lists())
    assert resolve_list("talking_grid13") == resolve_list("talking_grid13.csv")
    with pytest.raises(FileNotFoundError, match="shipped list: .*talking_grid13"):
        resolve_list("no_such_list")
    grid = read_clip_list("talking_grid13", check_files=False)
    assert len(grid) == 13 and {c.emotion for c in grid} == {"neutral"} and all(c.is_video for c in grid)
    assert sorted({c.speaker for c in grid}) == ["s1", "s2", "s20", "s22", "s26", "s5"]
    assert sum(c.speaker == "s1" for c in grid) == 7 and sum(c.speaker == "s2" for c in grid) == 2
    crema = read_clip_list("talking_cremad1001", check_files=False)
    assert sorted(c.emotion for c in crema) == sorted(set(EMOTIONS) - {"surprise"})
    emo = read_clip_list("emospeech_eval", check_files=False)
    assert len(emo) == 300 and len({c.speaker for c in emo}) == 24
    assert {c.emotion for c in emo} == {"neutral", "anger", "fear", "joy"}
