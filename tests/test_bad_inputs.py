"""Issue #13's bad-input matrix: every bad input answered with one clear line or a graceful,
reported degradation, and nothing lost.

Files: `mlsan-edge run` and `speakers enroll` on random bytes named .wav, an empty .flac, a text
file named .mp4, an mp4 without an audio track, a truncated FLAC, a missing file, a folder and an
unknown URI scheme exit 2 with one `error:` line naming the file, no traceback (the default
bundle, in process; one case through a real subprocess). Signals through the real runtime:
silence, clipping, NaN/inf, another sample rate, stereo, 50 ms blips, a long utterance split at
the VAD's maximum. Text: empty, 10,000 characters, not UTF-8. Bundles: a flipped byte, an unknown
schema. Threads: a capture error reaches the caller as the same SourceError after the events
before it; a camera unplugged mid-stream is reopened with backoff while the audio goes on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlsan_edge import cli
from mlsan_edge.features.vad import VADConfig
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.source_base import Frame, Source, SourceError
from mlsan_edge.runtime.text_source import TextSource

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"  # speech at 0.96-2.47 s
REPO = Path(__file__).resolve().parents[1]


# --- generated bad files ---------------------------------------------------------------------------
def _mute_mp4(path: Path) -> None:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(5):
        w.write(np.full((48, 64, 3), i * 40, np.uint8))
    w.release()


def _make(kind: str, d: Path) -> tuple[Path, str]:
    """A bad file of `kind` in `d`, and a word the error must contain."""
    rng = np.random.default_rng(0)
    if kind == "random_bytes.wav":
        p = d / "random_bytes.wav"
        p.write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
        return p, "not a readable audio file"
    if kind == "empty.flac":
        p = d / "empty.flac"
        p.write_bytes(b"")
        return p, "empty"
    if kind == "text.mp4":
        p = d / "text.mp4"
        p.write_text("this is not a video\n" * 20)
        return p, "not a readable audio file"
    if kind == "mute.mp4":
        p = d / "mute.mp4"
        _mute_mp4(p)
        return p, "no audio track"
    if kind == "truncated.flac":
        p = d / "truncated.flac"
        p.write_bytes(FIXTURE.read_bytes()[:3000])
        return p, "truncated or corrupt"
    if kind == "missing.wav":
        return d / "missing.wav", "not found"
    if kind == "folder.wav":
        p = d / "folder.wav"
        p.mkdir()
        return p, "not a file"
    raise AssertionError(kind)


BAD_FILES = ["random_bytes.wav", "empty.flac", "text.mp4", "mute.mp4", "truncated.flac", "missing.wav", "folder.wav"]


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith(f"mlsan-edge {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_run_on_a_bad_file_is_one_line_naming_it(kind, tmp_path, capsys):
    path, word = _make(kind, tmp_path)
    events = tmp_path / "events.jsonl"
    rc = cli.main(["run", "--audio", f"file://{path}", "--events", str(events)])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 2 and path.name in line and word in line, line


@pytest.mark.parametrize("kind", ["random_bytes.wav", "empty.flac", "text.mp4", "mute.mp4", "missing.wav"])
def test_speakers_enroll_on_a_bad_file_is_one_line_naming_it(kind, tmp_path, capsys):
    path, _ = _make(kind, tmp_path)
    rc = cli.main(["speakers", "enroll", "--cache", str(tmp_path / "c.db"), "--name", "x", "--audio", str(path)])
    line = _one_error_line(capsys.readouterr().err, "speakers")
    assert rc == 2 and path.name in line, line
    assert not (tmp_path / "c.db").exists()  # the speech is checked before the cache is touched


@pytest.mark.parametrize("kind", ["text.mp4", "random_bytes.wav"])
def test_run_on_a_bad_video_file_is_one_line_naming_it(kind, tmp_path, capsys):
    path, _ = _make(kind, tmp_path)
    rc = cli.main(["run", "--audio", f"file://{FIXTURE}", "--video", f"file://{path}",
                   "--events", str(tmp_path / "e.jsonl")])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 2 and path.name in line and "video" in line, line


def test_eval_on_a_corrupt_clip_is_one_line_naming_it(tmp_path, capsys):
    rav = tmp_path / "rav"
    shutil.copytree(cli.SAMPLE_DIR, rav)
    clip = sorted((rav / "audio16k").rglob("*.flac"))[2]
    clip.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    rc = cli.main(["eval", "--dataset", "ravdess", "--data", str(rav), "--backend", "onnxruntime"])
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert rc == 2 and clip.name in line, line


def test_unknown_scheme_lists_the_valid_ones(tmp_path, capsys):
    rc = cli.main(["run", "--audio", "rtsp://camera.local/stream", "--events", str(tmp_path / "e.jsonl")])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 2 and all(s in line for s in ("mic://", "file://", "synth://")), line


def test_the_real_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, as a new user runs it: random bytes named .wav."""
    path, _ = _make("random_bytes.wav", tmp_path)
    script = shutil.which("mlsan-edge", path=str(Path(sys.executable).parent)) or "mlsan-edge"
    r = subprocess.run([script, "run", "--audio", f"file://{path}", "--events", str(tmp_path / "e.jsonl")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert path.name in _one_error_line(r.stderr, "run")
    r = subprocess.run([script, "-v", "run", "--audio", f"file://{path}", "--events", str(tmp_path / "e.jsonl")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr  # -v shows it


def test_truncated_file_keeps_the_events_before_the_damage(tmp_path, capsys):
    """Two utterances, then garbage: both events are written, then one error line."""
    speech, _ = sf.read(FIXTURE, dtype="float32")
    path = tmp_path / "two_then_cut.flac"
    sf.write(path, np.concatenate([speech, speech, speech]), 16000)
    raw = path.read_bytes()
    cut = int(len(raw) * 0.8)  # inside the third copy
    path.write_bytes(raw[:cut] + bytes(np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8)))
    events = tmp_path / "events.jsonl"
    rc = cli.main(["run", "--audio", f"file://{path}", "--events", str(events)])
    err = capsys.readouterr().err
    line = _one_error_line(err, "run")
    assert rc == 2 and path.name in line
    assert len(events.read_text().splitlines()) >= 2


# --- signals through the real runtime --------------------------------------------------------------
@pytest.fixture(scope="module")
def rt():
    from mlsan_edge.runtime.load import load_runtime

    with load_runtime("default") as r:
        yield r


@pytest.fixture(scope="module")
def speech():
    wav, _ = sf.read(FIXTURE, dtype="float32")
    return wav


def _events(rt, wav: np.ndarray) -> list:
    step = rt.step()
    out = [e for i in range(0, len(wav) - 511, 512) if (e := step.step(wav[i:i + 512])) is not None]
    last = step.flush()
    return out + ([last] if last is not None else [])


def test_silence_gives_no_event(rt):
    assert _events(rt, np.zeros(5 * 16000, np.float32)) == []


def test_50_ms_blips_give_no_event(rt):
    wav = np.zeros(4 * 16000, np.float32)
    rng = np.random.default_rng(0)
    for k in range(6):
        i = 8000 + k * 8000
        wav[i:i + 800] = 0.5 * rng.standard_normal(800)
    assert _events(rt, wav) == []


def test_clipped_speech_still_gives_its_event(rt, speech):
    ev = _events(rt, np.clip(speech * 30, -1, 1))
    assert len(ev) == 1 and ev[0].degraded == []


def test_samples_beyond_full_scale_are_clipped_and_reported(rt, speech):
    ev = _events(rt, speech * 30)
    assert len(ev) == 1 and any("clipped" in d for d in ev[0].degraded)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_samples_are_zeroed_and_reported(rt, speech, bad):
    wav = np.concatenate([speech, speech]).copy()
    wav[20000:20100] = bad  # inside the first utterance
    ev = _events(rt, wav)
    assert len(ev) == 2, "the VAD state survived the bad samples: the second utterance is found too"
    assert any("NaN/inf" in d for d in ev[0].degraded) and ev[1].degraded == []
    assert all(np.isfinite(list(e.probs.values())).all() for e in ev)


def test_stereo_44k_file_streams_like_the_mono_16k_one(rt, speech, tmp_path):
    from mlsan_edge.features.audio import resample

    x = resample(speech, 16000, 44100)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100)
    ev = list(rt.stream(audio=f"file://{path}"))
    ref = list(rt.stream(audio=f"file://{FIXTURE}"))
    assert len(ev) == len(ref) == 1
    assert ev[0].start_s == pytest.approx(ref[0].start_s, abs=0.1) and ev[0].end_s == pytest.approx(ref[0].end_s, abs=0.1)


def test_long_utterance_is_split_at_the_vads_maximum(rt, speech):
    """Speech with no pause for 40 s (the fixture's speech back to back): cut every
    max_utterance_s, each cut reported. A 10-minute utterance is the same loop, longer
    (benchmarks/soak.py streams 30 minutes)."""
    from mlsan_edge.runtime.session import Runtime

    voiced = speech[int(0.96 * 16000):int(2.47 * 16000)]
    wav = np.tile(voiced, int(np.ceil(40 * 16000 / len(voiced))))[:40 * 16000]
    cfg = RuntimeConfig(face="none", vad=VADConfig(max_utterance_s=8.0))
    short = Runtime(rt.stages, rt.cache, cfg, voice=rt.voice, vad_model=rt.pipeline.vad_model)
    ev = _events(short, wav)
    assert len(ev) >= 5 and max(e.end_s - e.start_s for e in ev) <= 8.0 + 0.5
    assert sum(any("maximum length" in d for d in e.degraded) for e in ev) >= 4


# --- text -----------------------------------------------------------------------------------------
def test_text_empty_long_and_not_utf8(rt, tmp_path):
    assert TextSource([""])(None, 0, 1) is None  # empty: no text modality
    vec = rt.text_encoder.embed("word " * 2000)  # 10,000 characters: truncated to the encoder's length
    assert vec.shape == (384,) and np.isfinite(vec).all()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        TextSource.from_file(bad)
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"start": 0, "text": "no end"}\n')
    with pytest.raises(ValueError, match="t.jsonl"):
        TextSource.from_file(jl)


def test_run_with_non_utf8_text_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    rc = cli.main(["run", "--audio", f"file://{FIXTURE}", "--text-from", str(bad), "--events", str(tmp_path / "e")])
    assert rc == 2 and "latin1.txt" in _one_error_line(capsys.readouterr().err, "run")


# --- bundles ---------------------------------------------------------------------------------------
@pytest.fixture
def bundle_copy(tmp_path):
    from mlsan_edge.bundle import load_bundle

    src = load_bundle("default").root
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.engine", "teacher"))
    m = json.loads((dst / "manifest.json").read_text())
    m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("teacher/")}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_run_with_a_flipped_byte_in_the_bundle_is_one_line(bundle_copy, tmp_path, capsys):
    from mlsan_edge.bundle import load_bundle

    load_bundle(bundle_copy)  # intact before the flip
    target = bundle_copy / "student" / "student.stage3.fp32.onnx"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    rc = cli.main(["run", "--bundle", str(bundle_copy), "--audio", f"file://{FIXTURE}", "--events", str(tmp_path / "e")])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 2 and "student.stage3.fp32.onnx" in line, line


def test_run_with_an_unknown_manifest_schema_is_one_line(bundle_copy, tmp_path, capsys):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["schema_version"] = 999
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    rc = cli.main(["run", "--bundle", str(bundle_copy), "--audio", f"file://{FIXTURE}", "--events", str(tmp_path / "e")])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 2 and "schema" in line, line


def test_onnx_model_with_the_wrong_input_shape_is_a_readable_error():
    """The shipped stage-3 graph fed a fused vector one too narrow: a readable InputError naming the input,
    before onnxruntime runs (tests/test_backends.py covers dtype, rank, batch and missing inputs)."""
    from mlsan_edge.backends.base import InputError
    from mlsan_edge.backends.onnxruntime import OrtBackend
    from mlsan_edge.bundle import load_bundle

    with OrtBackend(load_bundle("default").path("student.stage3.fp32"), threads=1) as m:
        feeds = {s.name: np.zeros([1 if d == "batch" else d for d in s.shape], np.float32) for s in m.inputs}
        width = next(s.shape[1] for s in m.inputs if s.name == "fused")  # the student's hidden size
        feeds["fused"] = np.zeros((1, width - 1), np.float32)
        with pytest.raises(InputError, match=f"'fused'.*{width}"):
            m.run(feeds)


# --- threads ---------------------------------------------------------------------------------------
class _FlakyCamera(Source):
    """Frames until `fail_after` reads, then the error an unplugged camera gives."""

    def __init__(self, fail_after: int | None) -> None:
        self.uri, self.n, self.fail_after, self.eos = "camera://0", 0, fail_after, False

    def read(self, timeout=1.0):
        import time

        time.sleep(0.05)
        self.n += 1
        if self.fail_after is not None and self.n > self.fail_after:
            raise SourceError("camera 'camera://0' lost: no frame for 2.0 s (unplugged?)")
        return Frame(self.n * 0.05, np.zeros((48, 64, 3), np.uint8))


def test_camera_unplugged_mid_stream_audio_goes_on_and_it_reconnects(tmp_path, monkeypatch):
    """The camera dies after a few frames and stays away for one retry; the audio keeps giving
    events marked `camera failed: audio-only`; the reopened camera clears the mark."""
    from fake_stages import FakeStages
    from mlsan_edge.runtime import sources
    from mlsan_edge.runtime.live import CAMERA_LOST
    from test_session import make_runtime, speech_stream

    opens = []

    def fake_open_video(uri, t0=None):
        opens.append(uri)
        if len(opens) == 1:
            return _FlakyCamera(fail_after=3)
        if len(opens) <= 10:  # away for ~4.5 s (retries every 0.5 s): past the first utterance
            raise SourceError("cannot open camera 'camera://0'")
        return _FlakyCamera(fail_after=None)

    monkeypatch.setattr(sources, "open_video", fake_open_video)
    uri, truth = speech_stream(tmp_path, 4)
    cfg = RuntimeConfig(camera_retry_max_s=0.5)
    with make_runtime(FakeStages(), cfg) as rt:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            events = list(rt.stream(audio=uri + "?realtime=1", video="camera://0"))
    assert len(events) == len(truth)
    assert len(opens) == 11
    assert sum("running audio-only, reconnecting" in str(x.message) for x in w) == 1  # said once
    assert CAMERA_LOST in events[0].degraded and CAMERA_LOST not in events[-1].degraded


def test_an_error_in_the_capture_thread_reaches_the_caller_as_itself(tmp_path, monkeypatch):
    from mlsan_edge.runtime import sources
    from test_session import make_runtime, speech_stream

    uri, truth = speech_stream(tmp_path, 2)
    real = sources.open_audio

    class Dying(Source):
        def __init__(self):
            self.inner, self.eos, self.uri = real(uri), False, uri

        def read(self, timeout=1.0):
            c = self.inner.read(timeout)
            if c is None:
                raise SourceError(f"{uri}: the device went away")
            return c

    monkeypatch.setattr(sources, "open_audio", lambda u, t0=None: Dying())
    got = []
    with make_runtime() as rt:
        with pytest.raises(SourceError, match="the device went away"):
            for e in rt.stream(audio=uri):
                got.append(e)
    assert len(got) == len(truth)  # the utterances before the error were not lost


def test_microphone_overflows_are_counted_in_the_events(tmp_path, monkeypatch):
    from mlsan_edge.runtime import sources
    from test_session import make_runtime, speech_stream

    uri, _ = speech_stream(tmp_path, 1)
    real = sources.open_audio

    def overflowing(u, t0=None):
        src = real(uri)
        src.overflows, src.dropped_samples = 3, 1536  # what MicSource counts in its callback
        return src

    monkeypatch.setattr(sources, "open_audio", overflowing)
    with make_runtime() as rt:
        ev = list(rt.stream(audio="mic://default"))
    assert ev and ev[-1].dropped["mic_overflows"] == 3 and ev[-1].dropped["mic_samples"] == 1536
