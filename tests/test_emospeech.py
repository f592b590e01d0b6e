"""EmoSpeech loader and its speaker split (data/emospeech.py)."""

import hashlib

import pytest

from mlsan_edge.data.emospeech import (EmoSpeechError, emospeech_calibration_speaker, emospeech_eval_speaker,
                                       emospeech_split, load_emospeech)


def _write(root, rows):
    (root / "audio").mkdir(parents=True, exist_ok=True)
    lines = ["file,speaker,emotion,raw_label,keyword"] + [",".join(r) for r in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_split_is_a_partition_by_hash():
    speakers = [f"user{i:03d}" for i in range(200)]
    splits = [emospeech_split(s) for s in speakers]
    assert set(splits) == {"train", "calibration", "eval"}
    for s, sp in zip(speakers, splits):
        bucket = int(hashlib.sha1(s.encode()).hexdigest(), 16) % 5
        assert (sp == "eval") == (bucket == 0) == emospeech_eval_speaker(s)
        assert (sp == "calibration") == (bucket == 1) == emospeech_calibration_speaker(s)
    assert emospeech_eval_speaker("emospeech:" + speakers[0]) == emospeech_eval_speaker(speakers[0])


def test_load_filters_by_split_and_groups_by_speaker(tmp_path):
    users = [f"user{i:03d}" for i in range(30)]
    _write(tmp_path, [(f"audio/{u}_{k}.flac", u, "neutral" if k else "anger", "calm", "stop")
                      for k in range(2) for u in users])
    every = load_emospeech(tmp_path)
    assert len(every) == 60 and [c.speaker for c in every] == sorted(c.speaker for c in every)
    ev = load_emospeech(tmp_path, "eval")
    assert ev and all(emospeech_eval_speaker(c.speaker) for c in ev)
    tr = load_emospeech(tmp_path, "train")
    assert not {c.speaker for c in tr} & {c.speaker for c in ev}
    assert every[0].speaker_key.startswith("emospeech:") and every[0].label in (0, 1, 2, 3, 4, 5, 6)


def test_bad_label_names_the_line(tmp_path):
    _write(tmp_path, [("audio/a.flac", "u1", "calm", "calm", "stop")])
    with pytest.raises(EmoSpeechError, match="line 2.*'calm'"):
        load_emospeech(tmp_path)


def test_not_a_folder(tmp_path):
    with pytest.raises(EmoSpeechError, match="labels.csv"):
        load_emospeech(tmp_path)
    _write(tmp_path, [("audio/a.flac", "u1", "anger", "angry", "stop")])
    with pytest.raises(ValueError, match="unknown EmoSpeech split"):
        load_emospeech(tmp_path, "test")
