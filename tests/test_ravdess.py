"""RAVDESS loader on a small generated folder (real FLAC + an AU csv), its errors, and the real data."""

from __future__ import annotations

import csv
import logging
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from mlsan_edge.config import EMOTIONS, SAMPLE_RATE, VISUAL_DIM
from mlsan_edge.data.ravdess import AU_COLUMNS, DataError, load_ravdess, parse_name, read_action_units

CLIPS = {  # file name -> (actor, MELD emotion)
    "03-01-01-01-01-01-01.flac": (1, "neutral"),
    "03-01-02-01-02-01-01.flac": (1, "neutral"),  # calm folds into neutral
    "03-01-05-02-01-02-01.flac": (1, "anger"),
    "03-01-03-01-01-01-02.flac": (2, "joy"),
    "03-01-08-02-02-02-02.flac": (2, "surprise"),
}


def au_row(name: str, value: float) -> dict:
    return {"video_id": "01" + name[2:-5], "audio_file": name, **{c: value for c in AU_COLUMNS}}


def write_csv(path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def ravdess_root(tmp_path):
    """Five 0.1 s FLAC clips of two actors, and AU rows for all but the last (one of them NaN)."""
    t = np.arange(SAMPLE_RATE // 10) / SAMPLE_RATE
    for i, (name, (actor, _)) in enumerate(CLIPS.items()):
        d = tmp_path / "audio16k" / f"Actor_{actor:02d}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / name, 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), SAMPLE_RATE, subtype="PCM_16")
    names = list(CLIPS)
    rows = [au_row(n, float(i)) for i, n in enumerate(names[:3])] + [au_row(names[3], float("nan"))]
    write_csv(tmp_path / "visual_au35.csv", rows, ["video_id", "audio_file", *AU_COLUMNS])
    return tmp_path


def test_load_generated_folder(ravdess_root):
    clips = load_ravdess(ravdess_root)
    assert [c.path.name for c in clips] == sorted(CLIPS, key=lambda n: (CLIPS[n][0], n))  # actor, then name
    for c in clips:
        actor, emotion = CLIPS[c.path.name]
        assert (c.actor, c.emotion, c.label) == (actor, emotion, EMOTIONS.index(emotion))
        assert c.speaker == f"ravdess_actor_{actor:02d}"
        audio, sr = sf.read(c.path)
        assert sr == SAMPLE_RATE and len(audio) == SAMPLE_RATE // 10
    by_name = {c.path.name: c for c in clips}
    anger = by_name["03-01-05-02-01-02-01.flac"]
    assert (anger.intensity, anger.statement, anger.repetition) == (2, 1, 2)
    assert anger.text == "Kids are talking by the door"
    assert anger.visual.shape == (VISUAL_DIM,) and anger.visual.dtype == np.float32
    np.testing.assert_array_equal(anger.visual, 2.0)
    assert by_name["03-01-03-01-01-01-02.flac"].visual is None  # NaN row: missing, not poisoned
    assert by_name["03-01-08-02-02-02-02.flac"].visual is None  # no AU row at all


def test_actor_filter(ravdess_root):
    assert {c.actor for c in load_ravdess(ravdess_root, actors=[2])} == {2}
    with pytest.raises(DataError, match="for actors"):
        load_ravdess(ravdess_root, actors=[7])


def test_missing_csv_is_audio_only(ravdess_root, caplog):
    (ravdess_root / "visual_au35.csv").unlink()
    with caplog.at_level(logging.WARNING, logger="mlsan_edge.data.ravdess"):
        clips = load_ravdess(ravdess_root)
    assert len(clips) == len(CLIPS) and all(c.visual is None for c in clips)
    assert "audio-only" in caplog.text


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not a RAVDESS folder"):
        load_ravdess(tmp_path / "nowhere")
    (tmp_path / "audio16k").mkdir()
    with pytest.raises(DataError, match="no RAVDESS clips"):
        load_ravdess(tmp_path)


def test_missing_columns(ravdess_root):
    columns = ["audio_file", *AU_COLUMNS[:-1]]  # AU45_c_frac dropped
    write_csv(ravdess_root / "visual_au35.csv", [au_row(n, 1.0) for n in CLIPS], columns)
    with pytest.raises(DataError, match="AU45_c_frac"):
        load_ravdess(ravdess_root)
    write_csv(ravdess_root / "visual_au35.csv", [au_row(n, 1.0) for n in CLIPS], AU_COLUMNS)
    with pytest.raises(DataError, match="audio_file"):
        read_action_units(ravdess_root / "visual_au35.csv")


def test_unknown_emotion_code(ravdess_root):
    sf.write(ravdess_root / "audio16k" / "Actor_01" / "03-01-09-01-01-01-01.flac", np.zeros(160), SAMPLE_RATE)
    with pytest.raises(DataError, match="emotion code 9"):
        load_ravdess(ravdess_root)


@pytest.mark.parametrize("name", ["clip.flac", "03-01-01-01-01-01.flac", "03-01-xx-01-01-01-01.flac",
                                  "03-01-01-01-01-01-01-01.flac"])
def test_bad_file_name(ravdess_root, name):
    with pytest.raises(DataError, match="not a RAVDESS file name"):
        parse_name(name)
    sf.write(ravdess_root / "audio16k" / "Actor_02" / name, np.zeros(160), SAMPLE_RATE)
    with pytest.raises(DataError, match="not a RAVDESS file name"):
        load_ravdess(ravdess_root)


def test_parse_name_fields():
    assert parse_name("03-01-06-02-01-02-17.flac") == {"emotion": 6, "intensity": 2, "statement": 1,
                                                       "repetition": 2, "actor": 17}


@pytest.mark.requires_data
def test_real_ravdess(shared_data):
    clips = load_ravdess(shared_data / "ravdess")
    assert len(clips) == 1200
    assert {c.actor for c in clips} == set(range(1, 21))
    assert Counter(c.actor for c in clips) == {a: 60 for a in range(1, 21)}
    labels = Counter(c.emotion for c in clips)
    assert len(labels) == 7 and set(labels) == set(EMOTIONS)
    assert labels["neutral"] == 240  # neutral + calm
    assert all(c.visual is not None and c.visual.shape == (VISUAL_DIM,) for c in clips)
    info = sf.info(str(clips[0].path))
    assert info.samplerate == SAMPLE_RATE and info.channels == 1
