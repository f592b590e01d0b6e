"""MELD loader on a tiny generated csv, its errors, text repair, and the real dev split."""

from __future__ import annotations

import csv

import pytest

from mlsan_edge.config import EMOTIONS
from mlsan_edge.data.meld import REQUIRED_COLUMNS, clean_text, load_meld
from mlsan_edge.data.ravdess import DataError

COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "Season", "Episode", "StartTime", "EndTime"]
ROWS = [  # out of order on purpose: the loader sorts by dialogue, then utterance id
    ("1", "Oh my God, heâ€™s lost it.", "Phoebe", "sadness", "negative", "0", "0"),
    ("3", "Iâ€™m  fine.", "Monica", "Neutral ", "neutral", "0", "2"),
    ("2", "What?", "Monica", "surprise", "negative", "0", "1"),
    ("4", "Hey!", " Joey ", "joy", "positive", "5", "0"),
    ("5", "Stop it\x92s fine", "Ross", "anger", "negative", "5", "1"),
]


def write_csv(path, rows, columns=COLUMNS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            full = dict(zip(COLUMNS, list(r) + ["4", "7", "00:00:01,000", "00:00:02,000"]))
            w.writerow([full[c] for c in columns])


@pytest.fixture
def meld_root(tmp_path):
    write_csv(tmp_path / "dev_sent_emo.csv", ROWS)
    return tmp_path


def test_load_generated_csv(meld_root):
    dialogues = load_meld(meld_root, "dev")
    assert [[u.index for u in d] for d in dialogues] == [[0, 1, 2], [0, 1]]
    assert [d[0].dialogue for d in dialogues] == [0, 5]
    first = dialogues[0]
    assert [u.speaker for u in first] == ["Phoebe", "Monica", "Monica"]
    assert [u.emotion for u in first] == ["sadness", "surprise", "neutral"]  # case and spaces normalised
    assert [u.label for u in first] == [EMOTIONS.index(e) for e in ("sadness", "surprise", "neutral")]
    assert first[0].text == "Oh my God, he's lost it."
    assert first[2].text == "I'm fine."  # mojibake repaired, whitespace collapsed
    assert dialogues[1][0].speaker == "Joey"
    assert dialogues[1][1].text == "Stop it's fine"


@pytest.mark.parametrize("raw, clean", [
    ("Iâ€™m", "I'm"),  # UTF-8 read as Windows-1252
    ("I\x92m", "I'm"),  # a lone Windows-1252 quote
    ("he’s", "he's"),
    ("‘Cause", "'Cause"),
    ("So…", "So..."),  # NFKC
    ("Nestlé  Toll\tHouse", "Nestlé Toll House"),
    ("plain", "plain"),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_clean_text_latin1_mojibake():
    assert clean_text("Iâ\x80\x99m") == "I'm"


def test_bad_split(meld_root):
    with pytest.raises(ValueError, match="unknown MELD split 'valid'"):
        load_meld(meld_root, "valid")


def test_missing_file(meld_root):
    with pytest.raises(DataError, match="train_sent_emo.csv"):
        load_meld(meld_root, "train")
    with pytest.raises(DataError, match="not found"):
        load_meld(meld_root / "elsewhere", "dev")


@pytest.mark.parametrize("drop", REQUIRED_COLUMNS)
def test_missing_columns(meld_root, drop):
    write_csv(meld_root / "dev_sent_emo.csv", ROWS, [c for c in COLUMNS if c != drop])
    with pytest.raises(DataError, match=f"lacks the columns \\['{drop}'\\]"):
        load_meld(meld_root, "dev")


def test_unknown_emotion(meld_root):
    write_csv(meld_root / "dev_sent_emo.csv", ROWS + [("6", "Ugh.", "Ross", "contempt", "negative", "5", "2")])
    with pytest.raises(DataError, match="unknown emotion 'contempt' in row 6"):
        load_meld(meld_root, "dev")


def test_empty_file(meld_root):
    write_csv(meld_root / "dev_sent_emo.csv", [])
    with pytest.raises(DataError, match="no utterances"):
        load_meld(meld_root, "dev")


@pytest.mark.requires_data
def test_real_meld_dev(shared_data):
    dialogues = load_meld(shared_data / "meld", "dev")
    utts = [u for d in dialogues for u in d]
    assert len(utts) == 1109
    assert len(dialogues) == len({u.dialogue for u in utts})
    assert {u.emotion for u in utts} == set(EMOTIONS)
    for d in dialogues:
        assert [u.index for u in d] == sorted(u.index for u in d)
    assert not any("â€" in u.text or "\u2019" in u.text for u in utts)
    assert utts[0].text == "Oh my God, he's lost it. He's totally lost it."
