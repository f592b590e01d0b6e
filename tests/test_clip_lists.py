"""data/clip_lists: writing the clip lists (GRID, CREMA-D, EmoSpeech eval users) that runtime/clip_list reads."""

import csv
import hashlib

import numpy as np
import pytest

from mlsan_edge.data.clip_lists import (WORD_PAD_S, cremad_rows, emospeech_rows, grid_rows, grid_word_rows, main,
                                        utterance_spans, write_clip_list)
from mlsan_edge.data.emospeech import emospeech_eval_speaker
from mlsan_edge.runtime.clip_list import read_clip_list


def _speakers(bucket: int, n: int) -> list[str]:
    """`n` speaker ids whose sha1 % 5 is `bucket` (0: evaluation speakers)."""
    out, i = [], 0
    while len(out) < n:
        s = f"u{i:04d}"
        if int(hashlib.sha1(s.encode()).hexdigest(), 16) % 5 == bucket:
            out.append(s)
        i += 1
    return out


@pytest.fixture
def emospeech(tmp_path):
    """A fake EmoSpeech folder: 3 evaluation users (1, 3 and 5 clips) and 2 training users."""
    root = tmp_path / "emospeech"
    (root / "audio").mkdir(parents=True)
    ev, tr = _speakers(0, 3), _speakers(2, 2)
    rows = [(f"audio/{s}-{k}.flac", s, ("neutral", "anger", "fear", "joy")[k % 4])
            for s, n in zip(ev + tr, (1, 3, 5, 2, 2)) for k in range(n)]
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "speaker", "emotion", "raw_label", "keyword"])
        for p, s, e in rows:
            (root / p).write_bytes(b"x")
            w.writerow([p, s, e, e, "stop"])
    return root, ev, tr


def test_emospeech_rows_are_the_eval_users_or_the_named_ones(emospeech):
    root, ev, tr = emospeech
    rows = emospeech_rows(root)
    assert len(rows) == 9 and {s for _, s, _ in rows} == set(ev) and all(emospeech_eval_speaker(s) for _, s, _ in rows)
    assert {s for _, s, _ in emospeech_rows(root, speakers=tr)} == set(tr)
    with pytest.raises(ValueError, match="no EmoSpeech clips for speaker"):
        emospeech_rows(root, speakers=["nobody"])


def test_emospeech_rows_round_robin_over_users_seeded(emospeech):
    root, ev, _ = emospeech
    four = emospeech_rows(root, n=4, seed=0)
    assert len(four) == 4 and {s for _, s, _ in four[:3]} == set(ev)  # everyone once before anyone twice
    assert emospeech_rows(root, n=4, seed=0) == four
    assert len(emospeech_rows(root, n=100)) == 9  # no more than there are


def test_written_lists_read_back(emospeech, tmp_path):
    root, _, _ = emospeech
    out = write_clip_list(emospeech_rows(root), tmp_path / "l.csv", ["licence: CC BY-NC-SA 4.0"])
    assert out.read_text().startswith("# licence: CC BY-NC-SA 4.0\npath,speaker,emotion\n")
    clips = read_clip_list(out, root=root)
    assert len(clips) == 9 and all(c.path.is_file() for c in clips)
    with pytest.raises(ValueError, match="not one of"):
        write_clip_list([("a.wav", "s", "happy")], tmp_path / "x.csv")  # lists hold class names


def test_utterance_spans_cut_between_utterances():
    sr = 16000
    rng = np.random.default_rng(0)
    wav = rng.normal(0, 1e-4, sr * 6).astype(np.float32)  # quiet room
    for a, b in ((0.5, 1.5), (2.5, 3.2), (4.0, 5.5)):  # three utterances; one with a 0.1 s pause inside
        wav[int(a * sr):int(b * sr)] += rng.normal(0, 0.1, int((b - a) * sr)).astype(np.float32)
    wav[int(4.6 * sr):int(4.7 * sr)] = 0
    assert utterance_spans(wav, sr, 3) == [(0.0, 2.0), (2.0, 3.6), (3.6, 6.0)]
    with pytest.raises(ValueError, match="found 3 utterances, expected 4"):
        utterance_spans(wav, sr, 4)


def test_talking_lists_from_the_files(tmp_path):
    (tmp_path / "grid").mkdir()
    for n in ("s1_bbaf2n.mpg", "s20_brbk7n.mpg"):
        (tmp_path / "grid" / n).write_bytes(b"x")
    assert grid_rows(tmp_path) == [("grid/s1_bbaf2n.mpg", "s1", "neutral"), ("grid/s20_brbk7n.mpg", "s20", "neutral")]
    with pytest.raises(FileNotFoundError, match="cremad_1001_6emotions_13s.mp4"):
        cremad_rows(tmp_path)
    out = write_clip_list([("a.mp4", "x", "neutral", 0.0, 1.5), ("a.mp4", "x", "joy", 1.5, 3.0)], tmp_path / "c.csv")
    assert out.read_text().splitlines() == ["path,speaker,emotion,start,end", "a.mp4,x,neutral,0.0,1.5",
                                            "a.mp4,x,joy,1.5,3.0"]
    with pytest.raises(FileNotFoundError, match="no GRID clips"):
        grid_rows(tmp_path / "nowhere")


def test_grid_words_from_the_alignments(tmp_path):
    """One neutral row per aligned word (not sil/sp), in seconds (1/25000 s units), widened by
    WORD_PAD_S within the clip; alignments without a clip are skipped."""
    (tmp_path / "grid").mkdir()
    (tmp_path / "align").mkdir()
    (tmp_path / "grid" / "s1_bbaf2n.mpg").write_bytes(b"x")
    (tmp_path / "align" / "s1_bbaf2n.align").write_text("0 23750 sil\n23750 29500 bin\n29500 31000 sp\n"
                                                        "31000 34000 blue\n34000 74500 now\n")
    (tmp_path / "align" / "s9_xxxx.align").write_text("0 25000 sil\n25000 50000 red\n")  # no s9 clip
    assert WORD_PAD_S == 0.1
    assert grid_word_rows(tmp_path) == [("grid/s1_bbaf2n.mpg", "s1", "neutral", 0.85, 1.28),
                                        ("grid/s1_bbaf2n.mpg", "s1", "neutral", 1.14, 1.46),
                                        ("grid/s1_bbaf2n.mpg", "s1", "neutral", 1.26, 2.98)]
    out = write_clip_list(grid_word_rows(tmp_path), tmp_path / "w.csv")
    assert [(c.start, c.end) for c in read_clip_list(out, tmp_path)] == [(0.85, 1.28), (1.14, 1.46), (1.26, 2.98)]
    with pytest.raises(FileNotFoundError, match="no GRID word alignments"):
        grid_word_rows(tmp_path / "grid")


@pytest.mark.requires_data
def test_shipped_lists_match_the_shared_data(shared_data):
    """The lists in mlsan_edge/assets/clips are what this module writes from ../shared/data today."""
    talking = shared_data / "talking"
    if not (talking / "grid").is_dir() or not (shared_data / "emospeech" / "labels.csv").exists():
        pytest.skip(f"no talking/ or emospeech/ under {shared_data}")
    key = lambda c: (c.path.relative_to(talking).as_posix(), c.speaker, c.emotion)  # noqa: E731
    assert [key(c) for c in read_clip_list("talking_grid13", talking)] == grid_rows(talking)
    assert [(*key(c), c.start, c.end) for c in read_clip_list("talking_cremad1001", talking)] == cremad_rows(talking)
    assert [(*key(c), c.start, c.end) for c in read_clip_list("talking_grid_words", talking)] == grid_word_rows(talking)
    emo = shared_data / "emospeech"
    assert [(c.path.relative_to(emo).as_posix(), c.speaker, c.emotion)
            for c in read_clip_list("emospeech_eval", emo)] == emospeech_rows(emo)
