"""Audio and video sources addressed by URI: the same loop runs on a microphone or a file.

    mic://default  mic://2  mic://USB          live microphone (sounddevice; see capture.py)
    camera://0                                 V4L2/USB camera (OpenCV)
    csi://0                                    Jetson CSI camera (GStreamer nvarguscamerasrc)
    file://speech.flac  file://clip.mp4        recorded audio / the audio track and frames of a video
    synth://tones?seconds=5&seed=0             deterministic test signals (also synth://silence,
    synth://noise, synth://frames)

Audio sources yield `AudioChunk(t, samples)`: (512,) float32 mono at 16 kHz (one silero VAD
window, 32 ms) and the stream time t in seconds of its first sample. Video sources yield
`Frame(t, image)`: an (H, W, 3) uint8 BGR image and its time in seconds. Both clocks start at
the same origin (`t0`, a `time.monotonic()` value, for live sources; the container's start for
files), so an utterance's [start_s, end_s) selects the frames that belong to it.

`read(timeout)` returns None on timeout (live sources) or at the end of a stream; `eos` tells
which. Iterating a source yields items until the end of the stream. Sources are context managers.

Query parameters: `file://x.wav?realtime=1` paces a file like a live source (`&speed=3`: three times
faster than real time, for overload tests).

The shared types live in `source_base.py`; live capture in `capture.py`, imported only when a
mic:// or camera URI is opened (one direction: this module -> capture -> source_base).

Length: ~430 lines, a little over the ~400 guide, because every file source checks its input up
front (exists, not empty, a readable header, an audio track) so that a bad file is one clear
error before any thread starts; that validation belongs with the readers it guards.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from mlsan_edge.config import SAMPLE_RATE
from mlsan_edge.runtime.source_base import CHUNK_SAMPLES, AudioChunk, Frame, Source, SourceError

log = logging.getLogger(__name__)

AUDIO_SCHEMES = ("mic", "file", "synth")
VIDEO_SCHEMES = ("camera", "csi", "file", "synth")
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"}


class _Paced:
    """Sleeps so that items are released no faster than their stream time (realtime=1), or
    `speed` times faster (realtime=1&speed=3: a live source three times faster than speech, an
    overload test)."""

    def __init__(self, on: bool, speed: float = 1.0) -> None:
        self.on, self.t_wall0, self.speed = on, None, float(speed)

    def wait(self, t: float) -> None:
        if not self.on:
            return
        t = t / self.speed
        now = time.monotonic()
        if self.t_wall0 is None:
            self.t_wall0 = now - t
        delay = self.t_wall0 + t - now
        if delay > 0:
            time.sleep(delay)


class ArrayAudioSource(Source):
    """Audio from an iterator of float32 16 kHz blocks of any length, re-chunked to 512 samples.

    The last partial chunk is zero-padded. Used for files and synthetic signals; also a handy
    fake at the source interface in tests.
    """

    def __init__(self, blocks: Iterator[np.ndarray] | np.ndarray, uri: str = "array://",
                 t_start: float = 0.0, realtime: bool | float = False, on_close=None) -> None:
        self.uri, self._on_close = uri, on_close
        self._blocks = iter([blocks]) if isinstance(blocks, np.ndarray) else iter(blocks)
        self._buf = np.zeros(0, np.float32)
        self._n = 0  # samples emitted
        self._t_start = t_start
        self._pace = _Paced(bool(realtime), float(realtime) or 1.0)
        self.eos = False

    def read(self, timeout: float | None = 1.0) -> AudioChunk | None:
        while self._buf.shape[0] < CHUNK_SAMPLES and not self.eos:
            try:
                block = next(self._blocks, None)
            except SourceError:
                raise
            except Exception as e:  # a decoder error mid-file: truncated or corrupt after its header
                t = self._t_start + self._n / SAMPLE_RATE
                raise SourceError(f"{_name(self.uri)}: cannot decode audio after {t:.2f} s ({e}); the file "
                                  "is truncated or corrupt; expected a complete audio file "
                                  "(the audio before it was processed)") from e
            if block is None:
                if self._buf.shape[0] == 0:
                    self.close()
                    return None
                pad = np.zeros(CHUNK_SAMPLES - self._buf.shape[0], np.float32)
                self._buf = np.concatenate([self._buf, pad])
                break
            self._buf = np.concatenate([self._buf, np.asarray(block, np.float32).reshape(-1)])
        if self.eos:
            return None
        chunk, self._buf = self._buf[:CHUNK_SAMPLES].copy(), self._buf[CHUNK_SAMPLES:]
        t = self._t_start + self._n / SAMPLE_RATE
        self._n += CHUNK_SAMPLES
        self._pace.wait(t - self._t_start)
        return AudioChunk(t, chunk)

    def close(self) -> None:
        self.eos = True
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()  # runs the generator's finally: the file is released
        if self._on_close is not None:
            self._on_close()


class FrameIterSource(Source):
    """Video from an iterator of Frame (files, synth)."""

    def __init__(self, frames: Iterator[Frame], uri: str, realtime: bool = False) -> None:
        self.uri, self._frames, self._pace, self.eos = uri, frames, _Paced(bool(realtime), float(realtime) or 1.0), False

    def read(self, timeout: float | None = 1.0) -> Frame | None:
        if self.eos:
            return None
        frame = next(self._frames, None)
        if frame is None:
            self.close()
            return None
        self._pace.wait(frame.t)
        return frame

    def close(self) -> None:
        self.eos = True
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


def _realtime(q: dict, uri: str) -> float:
    """0.0 (as fast as read), or the pace of `?realtime=1` in multiples of real time (`&speed=3`)."""
    if q.get("realtime", "0") in ("0", "false", ""):
        return 0.0
    return _number(q, "speed", 1.0, 0.01, 100.0, uri)


# --- files ------------------------------------------------------------------------------------
def _soundfile_blocks(path: Path) -> Iterator[np.ndarray]:
    """16 kHz mono blocks of a WAV/FLAC file; streamed when already 16 kHz, else resampled whole."""
    import soundfile as sf

    from mlsan_edge.features.audio import load_audio

    if sf.info(str(path)).samplerate != SAMPLE_RATE:
        yield load_audio(path, SAMPLE_RATE)
        return
    with sf.SoundFile(str(path)) as f:
        while True:
            block = f.read(16 * CHUNK_SAMPLES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                return
            yield block.mean(axis=1)


def _container_origin(container) -> float:
    import av

    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _av_audio(path: Path) -> tuple[Iterator[np.ndarray], float, object]:
    """Blocks of a media file's first audio track (16 kHz mono float32), its start time (s)
    and the function that closes the file."""
    import av

    container = _open_av(path, "audio")
    if not container.streams.audio:
        container.close()
        raise SourceError(f"{path} has no audio track; expected a media file with sound "
                          "(open it with open_video for its frames only)")
    stream = container.streams.audio[0]
    origin = _container_origin(container)
    t_audio = float(stream.start_time * stream.time_base) if stream.start_time is not None else origin

    def blocks() -> Iterator[np.ndarray]:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        finally:
            container.close()

    return blocks(), max(0.0, t_audio - origin), container.close


def _av_frames(path: Path) -> Iterator[Frame]:
    """BGR frames of a media file's first video track with their presentation times (s)."""
    container = _open_av(path, "video")
    try:
        if not container.streams.video:
            raise SourceError(f"{path} has no video track; expected a video file (mp4, flv, avi...)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        origin = _container_origin(container)
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else i / float(stream.average_rate or 25)
            yield Frame(float(t) - origin, frame.to_ndarray(format="bgr24"))
    finally:
        container.close()


def _name(uri: str) -> str:
    """The file a file:// URI names (for messages), else the URI."""
    split = urlsplit(uri)
    return unquote(split.netloc + split.path) if split.scheme == "file" else uri


def _file_path(split) -> Path:
    raw = unquote(split.netloc + split.path)
    path = Path(raw).expanduser()  # file://rel/x.wav and file:///abs/x.wav both work
    if not path.exists():
        raise SourceError(f"file not found: {path} (from {split.geturl()!r}); give file://relative/path "
                          "or file:///absolute/path")
    if not path.is_file():
        raise SourceError(f"{path} is not a file; expected an audio or video file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes); expected an audio or video file")
    return path


def _probe_soundfile(path: Path) -> str | None:
    """None when soundfile can read `path`'s header and it holds samples, else why not."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # LibsndfileError (a RuntimeError), or a format soundfile does not know
        return str(e)
    return None if info.frames > 0 else "no samples"


def _open_av(path: Path, what: str):
    """`av.open(path)`, or SourceError naming the file and what was expected."""
    import av

    try:
        return av.open(str(path))
    except Exception as e:  # av.error.InvalidDataError (an OSError), ValueError...
        raise SourceError(f"{path}: not a readable {what} file ({e}); expected "
                          + ("WAV/FLAC/OGG audio or a media file (mp4, mkv, flv...) with an audio track"
                             if what == "audio" else "a video file (mp4, mkv, avi, flv...)")) from e


def _open_file_audio(uri: str, split, q: dict) -> Source:
    path = _file_path(split)
    realtime = _realtime(q, uri)
    # the header is checked here, before any thread starts, so a bad file is one clear error; a
    # file whose suffix lies (an mp4 named .wav) still plays through PyAV below
    if path.suffix.lower() in SOUNDFILE_SUFFIXES and _probe_soundfile(path) is None:
        return ArrayAudioSource(_soundfile_blocks(path), uri, realtime=realtime)
    blocks, t_start, closer = _av_audio(path)
    return ArrayAudioSource(blocks, uri, t_start=t_start, realtime=realtime, on_close=closer)


def _open_file_video(uri: str, split, q: dict) -> Source:
    path = _file_path(split)
    frames = _av_frames(path)
    try:
        first = next(frames, None)  # raises here (not at the first read) when there is no video
    except SourceError:
        raise
    except Exception as e:  # the container opened but its first frame does not decode
        raise SourceError(f"{path}: cannot decode its first video frame ({e}); expected a video file "
                          "(mp4, mkv, avi, flv...)") from e
    if first is None:
        raise SourceError(f"{path} holds no video frames; expected a video file (mp4, mkv, avi, flv...)")

    def chain() -> Iterator[Frame]:
        try:
            yield first
            yield from frames
        finally:
            frames.close()

    return FrameIterSource(chain(), uri, realtime=_realtime(q, uri))


# --- synthetic ----------------------------------------------------------------------------------
def synth_tones(seconds: float = 5.0, seed: int = 0, level: float = 0.1) -> tuple[np.ndarray, list]:
    """Voiced bursts separated by silence: (n,) float32 16 kHz and the bursts' [(start_s, end_s)].

    Each burst is a harmonic complex (f0 100–250 Hz with gliding pitch, 1/k harmonic amplitudes
    and a syllable-rate amplitude modulation), 0.6–1.5 s long; gaps of 0.6–1.2 s hold faint noise.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    wav = (rng.standard_normal(n) * 1e-4).astype(np.float32)
    truth, t = [], rng.uniform(0.3, 0.8)
    while True:
        dur = rng.uniform(0.6, 1.5)
        if t + dur > seconds - 0.2:
            break
        i0, m = int(t * SAMPLE_RATE), int(dur * SAMPLE_RATE)
        tt = np.arange(m) / SAMPLE_RATE
        f0 = rng.uniform(100, 250) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        burst = sum(np.sin(k * phase) / k for k in range(1, 16))
        burst *= 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * tt) ** 2  # ~4 Hz syllables
        burst *= np.hanning(m) ** 0.3
        wav[i0:i0 + m] += (level * burst / np.abs(burst).max()).astype(np.float32)
        truth.append((round(t, 4), round(t + dur, 4)))
        t += dur + rng.uniform(0.6, 1.2)
    return wav, truth


def synth_frames(seconds: float = 2.0, fps: float = 10.0, width: int = 320, height: int = 240) -> Iterator[Frame]:
    """A moving gradient, deterministic: frame i at t = i / fps."""
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    for i in range(int(round(seconds * fps))):
        v = ((x + y + 8 * i) % 256).astype(np.uint8)
        yield Frame(i / fps, np.stack([v, np.flipud(v), np.full_like(v, i % 256)], axis=-1))


MAX_SYNTH_S = 3600.0  # synth:// signals are made whole in memory: an hour is 230 MB of float32


def _number(q: dict, key: str, default: float, lo: float, hi: float, uri: str, kind=float):
    """Query parameter `key` as a finite number in [lo, hi], or ValueError naming it."""
    try:
        v = kind(q.get(key, default))
    except (TypeError, ValueError, OverflowError):
        v = None
    if v is None or not np.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{key}={q.get(key)!r} in {uri!r} must be a number in [{lo:g}, {hi:g}]")
    return v


def _open_synth_audio(uri: str, split, q: dict) -> Source:
    kind = split.netloc or split.path.strip("/")
    seconds = _number(q, "seconds", 5.0, 0.0, MAX_SYNTH_S, uri)
    seed, level = _number(q, "seed", 0, 0, 2 ** 32 - 1, uri, int), _number(q, "level", 0.1, 0.0, 1.0, uri)
    if kind == "tones":
        wav, truth = synth_tones(seconds, seed, level)
    elif kind == "silence":
        wav, truth = np.zeros(int(seconds * SAMPLE_RATE), np.float32), []
    elif kind == "noise":
        rng = np.random.default_rng(seed)
        wav, truth = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * float(q.get("level", 0.01))).astype(np.float32), []
    else:
        raise ValueError(f"unknown synthetic audio {kind!r} in {uri!r}; valid: synth://tones, synth://silence, "
                         "synth://noise (parameters ?seconds=&seed=&level=)")
    src = ArrayAudioSource(wav, uri, realtime=_realtime(q, uri))
    src.truth = truth  # [(start_s, end_s)] of the voiced bursts, for tests
    return src


def _open_synth_video(uri: str, split, q: dict) -> Source:
    kind = split.netloc or split.path.strip("/")
    if kind != "frames":
        raise ValueError(f"unknown synthetic video {kind!r} in {uri!r}; valid: "
                         "synth://frames?seconds=2&fps=10&width=320&height=240")
    frames = synth_frames(_number(q, "seconds", 2.0, 0.0, MAX_SYNTH_S, uri), _number(q, "fps", 10.0, 0.1, 120.0, uri),
                          _number(q, "width", 320, 8, 4096, uri, int), _number(q, "height", 240, 8, 4096, uri, int))
    return FrameIterSource(frames, uri, realtime=_realtime(q, uri))


# --- entry points -------------------------------------------------------------------------------
def _parse(uri: str, valid: tuple[str, ...], kind: str):
    if "://" not in uri and Path(uri).exists():  # a bare path is a file, as in jetson-inference
        uri = "file://" + uri
    if "://" not in uri:
        raise ValueError(f"{kind} source {uri!r} is not a URI; expected one of "
                         f"{', '.join(s + '://' for s in valid)} (e.g. file://speech.flac)")
    split = urlsplit(str(uri))
    if split.scheme not in valid:
        raise ValueError(f"unknown {kind} source scheme {split.scheme!r} in {uri!r}; valid schemes: "
                         f"{', '.join(s + '://' for s in valid)}")
    return split, dict(parse_qsl(split.query))


def open_audio(uri: str, t0: float | None = None) -> Source:
    """Open an audio source by URI (mic://, file://, synth://).

    Args:
        uri: e.g. "mic://default", "mic://1", "mic://USB", "file://clip.mp4", "synth://tones?seconds=5".
        t0: `time.monotonic()` origin of live stream times; pass the same value to `open_video`
            so both clocks agree. Defaults to now. Ignored by files (their own timeline).

    Returns:
        A source whose `read()` gives `AudioChunk(t, (512,) float32 @ 16 kHz)` or None.
    """
    split, q = _parse(uri, AUDIO_SCHEMES, "audio")
    if split.scheme == "mic":
        from mlsan_edge.runtime.capture import MicSource

        return MicSource(uri, split.netloc or split.path.strip("/") or "default", q, t0)
    if split.scheme == "file":
        return _open_file_audio(uri, split, q)
    return _open_synth_audio(uri, split, q)


def open_video(uri: str, t0: float | None = None) -> Source:
    """Open a video source by URI (camera://N, csi://N, file://, synth://frames).

    Args:
        uri: e.g. "camera://0", "csi://0?width=1280&height=720&fps=30", "file://clip.mp4".
        t0: `time.monotonic()` origin of live frame times (see `open_audio`).

    Returns:
        A source whose `read()` gives `Frame(t, (H, W, 3) uint8 BGR)` or None.
    """
    split, q = _parse(uri, VIDEO_SCHEMES, "video")
    if split.scheme in ("camera", "csi"):
        from mlsan_edge.runtime.capture import CameraSource, csi_pipeline

        index = split.netloc or split.path.strip("/") or "0"
        if not index.isdigit():
            raise ValueError(f"{split.scheme}:// takes a device number, got {index!r} in {uri!r} (e.g. {split.scheme}://0)")
        if split.scheme == "camera":
            return CameraSource(uri, int(index), None, t0, q)
        return CameraSource(uri, int(index), csi_pipeline(int(index), q), t0, q)
    if split.scheme == "file":
        return _open_file_video(uri, split, q)
    return _open_synth_video(uri, split, q)


__all__ = [  # the shared types are re-exported: `from mlsan_edge.runtime.sources import Frame` keeps working
    "CHUNK_SAMPLES", "AudioChunk", "Frame", "Source", "SourceError", "ArrayAudioSource", "FrameIterSource",
    "open_audio", "open_video", "synth_tones", "synth_frames",
]  # fmt: skip
