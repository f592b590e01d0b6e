"""runtime/clip_stream: labelled clips joined into one WAV (+ video-only mp4) on one clock."""

import numpy as np
import pytest
import soundfile as sf

from mlsan_edge.runtime.clip_list import Clip
from mlsan_edge.runtime.clip_stream import FPS, build_clip_stream
from mlsan_edge.runtime.source_base import SourceError

SAMPLE = __import__("mlsan_edge.cli", fromlist=["SAMPLE_DIR"]).SAMPLE_DIR / "audio16k" / "Actor_01"
TALKING = __import__("mlsan_edge.demo.sample", fromlist=["SAMPLE_VIDEO"]).SAMPLE_VIDEO  # 480x360, 25 fps


def test_audio_clips_are_joined_with_gaps_and_spans(tmp_path):
    a, b = SAMPLE / "03-01-01-01-01-01-01.flac", SAMPLE / "03-01-05-02-01-01-01.flac"
    clips = [Clip(a, "a01", "neutral", where="l.csv line 2"), Clip(b, "a01", "anger", 0.5, 2.0, "l.csv line 3")]
    s = build_clip_stream(clips, tmp_path, gap_s=0.5)
    wav, sr = sf.read(str(s.audio), dtype="float32")
    assert sr == 16000 and s.video is None and s.video_uri is None and s.audio_uri.startswith("file:///")
    first, second = s.segments
    assert first.start == pytest.approx(0.5) and second.end - second.start == pytest.approx(1.5)
    assert second.start == pytest.approx(first.end + 0.5) and s.seconds == pytest.approx(second.end + 0.5)
    assert len(wav) == pytest.approx(s.seconds * 16000, abs=1)
    src = sf.read(str(b), dtype="float32")[0]  # the span is the file's own samples from 0.5 s
    i = int(round(second.start * 16000))
    np.testing.assert_allclose(wav[i:i + 8000], src[8000:16000], atol=1e-6)
    assert not wav[:int(0.5 * 16000)].any()  # silence before the first clip


def test_gain_scales_every_clip_and_is_bounded(tmp_path):
    a = SAMPLE / "03-01-01-01-01-01-01.flac"
    clips = [Clip(a, "a01", "neutral", where="l.csv line 2")]
    plain = sf.read(str(build_clip_stream(clips, tmp_path / "0", gap_s=0.2).audio), dtype="float32")[0]
    quiet = sf.read(str(build_clip_stream(clips, tmp_path / "q", gap_s=0.2, gain_db=-20).audio), dtype="float32")[0]
    np.testing.assert_allclose(quiet, plain * 0.1, atol=1e-7)
    with pytest.raises(ValueError, match="within -60 and \\+60 dB, got 90"):
        build_clip_stream(clips, tmp_path / "x", gain_db=90)


def test_video_clips_give_frames_on_the_same_clock(tmp_path):
    av = pytest.importorskip("av")
    clips = [Clip(TALKING, "cremad_1001", "neutral", 0.0, 2.08), Clip(TALKING, "grid_s1", "neutral", 3.08, 6.04),
             Clip(SAMPLE / "03-01-01-01-01-01-01.flac", "a01", "neutral")]  # audio only: black frames
    s = build_clip_stream(clips, tmp_path, gap_s=1.0, video=True)
    with av.open(str(s.video)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(v)]
        assert not c.streams.audio
    assert (frames[0].shape[1], frames[0].shape[0]) == (480, 360)
    assert len(frames) == pytest.approx(s.seconds * FPS, abs=1)
    seg = s.segments[1]
    assert frames[int(seg.start * FPS) + 5].mean() > 20  # a face, not a black gap
    assert frames[int(seg.end * FPS) + 5].mean() < 2  # the gap after it
    assert frames[int(s.segments[2].start * FPS) + 5].mean() < 2  # the audio-only clip
    assert len(sf.read(str(s.audio))[0]) == pytest.approx(s.seconds * 16000, abs=1)


def test_unreadable_clip_names_its_row(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio at all" * 10)
    with pytest.raises(SourceError, match=r"l\.csv line 7: .*bad\.wav"):
        build_clip_stream([Clip(bad, "s", "neutral", where="l.csv line 7")], tmp_path / "out")
    with pytest.raises(SourceError, match="line 2: .*under 0.1 s of audio"):
        build_clip_stream([Clip(SAMPLE / "03-01-01-01-01-01-01.flac", "s", "joy", 30.0, 31.0, "line 2")],
                          tmp_path / "out")
    with pytest.raises(ValueError, match="gap"):
        build_clip_stream([Clip(bad, "s", "neutral")], tmp_path / "out", gap_s=-1)
