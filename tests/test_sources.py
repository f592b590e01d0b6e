"""Sources by URI: files, synthetic signals, and the live sources' behaviour behind fakes."""

from __future__ import annotations

import builtins
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.features.audio import load_audio
from mlsan_edge.runtime import capture
from mlsan_edge.runtime.sources import (CHUNK_SAMPLES, SourceError, open_audio, open_video, synth_tones)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"


def _collect(src):
    with src:
        return list(src)


def test_file_flac_chunks_match_the_file():
    chunks = _collect(open_audio(f"file://{FIXTURE}"))
    wav = load_audio(FIXTURE)
    assert all(c.samples.shape == (CHUNK_SAMPLES,) and c.samples.dtype == np.float32 for c in chunks)
    assert [c.t for c in chunks[:3]] == pytest.approx([0.0, 0.032, 0.064])
    joined = np.concatenate([c.samples for c in chunks])
    assert len(chunks) == -(-len(wav) // CHUNK_SAMPLES)  # ceil: the last chunk is zero-padded
    np.testing.assert_allclose(joined[: len(wav)], wav, atol=1e-6)
    assert not joined[len(wav):].any()


def test_relative_and_bare_paths(monkeypatch):
    monkeypatch.chdir(FIXTURE.parent)
    assert len(_collect(open_audio(f"file://{FIXTURE.name}"))) > 0
    assert len(_collect(open_audio(FIXTURE.name))) > 0  # a bare existing path is a file


def test_wav_at_44k_is_resampled(tmp_path):
    import soundfile as sf

    t = np.arange(44_100) / 44_100
    sf.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 300 * t), 44_100)
    chunks = _collect(open_audio(f"file://{tmp_path / 'a.wav'}"))
    assert len(chunks) == -(-16_000 // CHUNK_SAMPLES)
    spec = np.abs(np.fft.rfft(np.concatenate([c.samples for c in chunks])[:16_000]))
    assert abs(np.argmax(spec) - 300) <= 1  # 1 s of audio: bin = Hz


def _write_sync_mp4(path: Path) -> None:
    """2 s: black frames then white from 1.0 s; silence then a 440 Hz tone from 1.0 s."""
    import av

    sr = 16_000
    wav = np.zeros(2 * sr, np.float32)
    wav[sr:] = 0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = c.add_stream("aac", rate=sr)
        aus.layout = "mono"
        for i in range(50):
            img = np.full((48, 64, 3), 255 if i >= 25 else 0, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        for i in range(0, len(wav), 1024):
            f = av.AudioFrame.from_ndarray(wav[None, i:i + 1024], format="flt", layout="mono")
            f.sample_rate, f.pts = sr, i
            for p in aus.encode(f):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)


def test_mp4_audio_and_frames_in_sync(tmp_path):
    path = tmp_path / "sync.mp4"
    _write_sync_mp4(path)
    audio = _collect(open_audio(f"file://{path}"))
    frames = _collect(open_video(f"file://{path}"))
    assert len(frames) == 50 and frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert np.all(np.diff([f.t for f in frames]) > 0)
    t_audio = next(c.t for c in audio if np.abs(c.samples).max() > 0.1)
    t_video = next(f.t for f in frames if f.image.mean() > 128)
    assert t_video == pytest.approx(1.0, abs=0.05)
    assert t_audio == pytest.approx(t_video, abs=0.05)  # one chunk (32 ms) + codec priming


def test_video_without_audio_track(tmp_path):
    import cv2

    path = tmp_path / "mute.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(5):
        w.write(np.full((48, 64, 3), i * 40, np.uint8))
    w.release()
    assert len(_collect(open_video(f"file://{path}"))) == 5
    with pytest.raises(SourceError, match="no audio track"):
        open_audio(f"file://{path}")


def test_real_talking_clip_in_sync(shared_data):
    clip = shared_data / "talking" / "cremad_1001_6emotions_13s.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} absent")
    audio = _collect(open_audio(f"file://{clip}"))
    frames = _collect(open_video(f"file://{clip}"))
    assert abs(audio[-1].t - frames[-1].t) < 0.1
    assert abs(len(frames) / (frames[-1].t - frames[0].t) - 30) < 1  # ~30 fps


def test_synth_sources_are_deterministic():
    a = _collect(open_audio("synth://tones?seconds=5&seed=3"))
    b = _collect(open_audio("synth://tones?seconds=5&seed=3"))
    assert len(a) == -(-5 * 16_000 // CHUNK_SAMPLES)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in a]), np.concatenate([c.samples for c in b]))
    wav, truth = synth_tones(5, 3)
    assert truth and all(0 <= s < e <= 5 for s, e in truth)
    silence = _collect(open_audio("synth://silence?seconds=2"))
    assert len(silence) == 63 and not any(c.samples.any() for c in silence)
    frames = _collect(open_video("synth://frames?seconds=1&fps=10&width=32&height=24"))
    assert len(frames) == 10 and frames[3].t == pytest.approx(0.3) and frames[0].image.shape == (24, 32, 3)


def test_realtime_pacing():
    t = time.monotonic()
    _collect(open_audio("synth://silence?seconds=0.3&realtime=1"))
    assert time.monotonic() - t >= 0.25


def test_read_after_end_and_close():
    src = open_audio("synth://silence?seconds=0.1")
    assert src.read() is not None
    src.close()
    assert src.eos and src.read() is None


@pytest.mark.parametrize("uri, match", [
    ("ftp://x", "valid schemes: mic://, file://, synth://"),
    ("no-such-file.wav", "is not a URI"),
    ("synth://chirp", "valid: synth://tones"),
    ("camera://left", "device number"),
])
def test_bad_uris_raise_value_error(uri, match):
    opener = open_video if uri.startswith("camera") else open_audio
    with pytest.raises(ValueError, match=match):
        opener(uri)


def test_missing_file():
    with pytest.raises(SourceError, match="file not found"):
        open_audio("file://does/not/exist.flac")


# --- live sources behind fakes ----------------------------------------------------------------
class _Flags:
    def __init__(self, overflow=False):
        self.input_overflow = overflow


def _fake_sounddevice(monkeypatch, fail: str | None = None):
    sd = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    class InputStream:
        def __init__(self, callback=None, **kw):
            if fail is not None:
                raise PortAudioError(fail)
            self.callback, self.kw = callback, kw
            sd.last = self

        def start(self):
            pass

        def stop(self):
            pass

        def close(self):
            pass

    sd.PortAudioError, sd.InputStream = PortAudioError, InputStream
    sd.query_devices = lambda: [{"name": "HDA Intel: ALC (hw:0,0)", "max_input_channels": 2},
                                {"name": "HDMI out", "max_input_channels": 0},
                                {"name": "USB Audio Device", "max_input_channels": 1}]
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    return sd


def test_mic_ring_buffer_order_overflow_and_lapping(monkeypatch):
    sd = _fake_sounddevice(monkeypatch)
    with open_audio("mic://USB?buffer_s=0.256") as mic:  # ring of 4096 samples
        assert sd.last.kw["device"] == 2 and sd.last.kw["blocksize"] == CHUNK_SAMPLES
        assert mic.read(timeout=0.01) is None  # nothing captured yet: None, not an exception
        signal = np.arange(3000, dtype=np.float32)
        for i in range(0, 3000, 300):  # odd block sizes wrap around the ring
            sd.last.callback(signal[i:i + 300, None], 300, None, _Flags(overflow=(i == 600)))
        got = [mic.read(timeout=0.01) for _ in range(6)]
        assert got[5] is None  # 3000 samples = 5 full chunks + 440 left over
        np.testing.assert_array_equal(np.concatenate([c.samples for c in got[:5]]), signal[:5 * CHUNK_SAMPLES])
        assert [c.t for c in got[:2]] == pytest.approx([got[0].t, got[0].t + 0.032])
        assert mic.overflows == 1
        for _ in range(20):  # 20 * 512 samples without reading: the callback laps the reader
            sd.last.callback(np.ones((CHUNK_SAMPLES, 1), np.float32), CHUNK_SAMPLES, None, _Flags())
        chunk = mic.read(timeout=0.01)
        assert mic.dropped_samples > 0 and chunk.samples.shape == (CHUNK_SAMPLES,)
    assert mic.eos


def test_mic_errors_list_devices(monkeypatch):
    _fake_sounddevice(monkeypatch)
    with pytest.raises(SourceError, match="mic://0 = 'HDA Intel"):
        open_audio("mic://Nope")
    _fake_sounddevice(monkeypatch, fail="Error querying device -1")
    with pytest.raises(SourceError, match=r"Error querying device -1.*mic://2 = 'USB Audio Device'"):
        open_audio("mic://default")


def test_mic_callback_exception_surfaces(monkeypatch):
    sd = _fake_sounddevice(monkeypatch)
    with open_audio("mic://0") as mic:
        with pytest.raises(Exception):
            sd.last.callback(np.zeros((10, 2, 2)), 10, None, _Flags())  # wrong shape -> fails
        with pytest.raises(SourceError, match="audio callback"):
            mic.read(timeout=0.01)


def test_missing_portaudio_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *a, **kw)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SourceError, match="apt-get install libportaudio2"):
        open_audio("mic://default")


def test_real_portaudio_without_devices_gives_clear_error():
    pytest.importorskip("sounddevice", exc_type=OSError)
    import sounddevice as sd

    try:
        if any(d["max_input_channels"] > 0 for d in sd.query_devices()):
            pytest.skip("this machine has an audio input")
    except sd.PortAudioError:
        pass
    with pytest.raises(SourceError, match="microphone"):
        open_audio("mic://default")


def test_camera_not_opened_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot open camera 'camera://97'"):
        open_video("camera://97")


def test_csi_pipeline_and_missing_gstreamer():
    import cv2

    p = capture.csi_pipeline(1, {"width": "640", "height": "480", "fps": "15"})
    assert p.startswith("nvarguscamerasrc sensor-id=1 !") and "width=640, height=480, framerate=15/1" in p
    assert p.rstrip().endswith("appsink drop=true max-buffers=1 sync=false")
    if capture._opencv_has_gstreamer(cv2):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="GStreamer.*JetPack"):
        open_video("csi://0")


def test_camera_reader_keeps_only_the_latest_frame(monkeypatch):
    import cv2

    class FakeCapture:
        def __init__(self, *a):
            self.i = 0

        def isOpened(self):
            return True

        def set(self, *a):
            return True

        def read(self):
            time.sleep(0.002)
            self.i += 1
            return True, np.full((4, 4, 3), self.i % 256, np.uint8)

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    with open_video("camera://0") as cam:
        first = cam.read(timeout=1.0)
        time.sleep(0.05)  # ~25 frames captured meanwhile; read returns only the newest
        second = cam.read(timeout=1.0)
        assert second.t > first.t and int(second.image[0, 0, 0]) - int(first.image[0, 0, 0]) > 3
    assert cam.read(timeout=0.05) is None
