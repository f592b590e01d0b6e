"""Labelled clips joined into one recorded stream, so the device path runs them as it runs a file.

Each clip (or its start/end span) is read with the runtime's own file readers (`sources.open_audio`,
`open_video`: the decoders `mlsan-edge run file://...` uses), and the clips are written one after the
other with `gap_s` of silence before each: a 16 kHz mono WAV, and, when video is wanted, a video-only
mp4 on the same clock (25 fps, frames letterboxed to the first video clip's size, at most
`MAX_WIDTH` wide; black frames in the gaps and under audio-only clips). The audio stays a lossless
WAV beside the video, so no AAC round trip changes what the model hears.

A clip's `Segment` records where it lies in the stream (exact, in samples): events are matched to
clips by these times. Video frame k shows stream time k / 25 s, so the two clocks never drift apart.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import numpy as np

from mlsan_edge.config import SAMPLE_RATE
from mlsan_edge.runtime.clip_list import Clip
from mlsan_edge.runtime.source_base import SourceError
from mlsan_edge.runtime.sources import SOUNDFILE_SUFFIXES, open_audio, open_video

FPS = 25
MAX_WIDTH = 640  # frames wider than this are scaled down (face detection runs on <= 320 px anyway)


@dataclass(frozen=True)
class Segment:
    """Where a clip lies in the joined stream (seconds from its start)."""

    clip: Clip
    start: float
    end: float


@dataclass(frozen=True)
class ClipStream:
    """The joined stream: its WAV, its video-only mp4 (or None) and the clips' segments."""

    audio: Path
    video: Path | None
    segments: list[Segment]
    seconds: float

    @property
    def audio_uri(self) -> str:
        return _uri(self.audio)

    @property
    def video_uri(self) -> str | None:
        return _uri(self.video) if self.video is not None else None


def _uri(path: Path) -> str:
    return "file://" + quote(str(Path(path).resolve()))


def check_decoders(clips: list[Clip], video: bool) -> None:
    """ImportError saying what to install when a clip needs PyAV (containers, mp3...) or, for
    video, OpenCV, and it is missing."""
    needs_av = [c for c in clips if c.path.suffix.lower() not in SOUNDFILE_SUFFIXES or (video and c.is_video)]
    if needs_av and importlib.util.find_spec("av") is None:
        raise ImportError(f"{needs_av[0].where}: reading {needs_av[0].path.suffix or 'this'} clips needs PyAV "
                          "(it bundles FFmpeg): pip install av")
    if video and any(c.is_video for c in clips) and importlib.util.find_spec("cv2") is None:
        raise ImportError("joining video clips needs OpenCV: pip install opencv-python-headless "
                          "(or run audio only: --face none)")


def _clip_audio(clip: Clip) -> tuple[np.ndarray, float]:
    """The clip's 16 kHz samples from its span's start, and the span's start (s, file time)."""
    with open_audio(_uri(clip.path)) as src:
        chunks = list(src)
    if not chunks:
        raise SourceError(f"{clip.where}: {clip.path} holds no audio samples")
    a_t0, audio = chunks[0].t, np.concatenate([c.samples for c in chunks])
    t0 = clip.start if clip.start is not None else 0.0
    t1 = a_t0 + audio.size / SAMPLE_RATE
    if clip.end is not None:
        t1 = min(t1, clip.end)
    if t1 - t0 < 0.1:
        raise SourceError(f"{clip.where}: {clip.path} has under 0.1 s of audio in the span "
                          f"{t0:g}-{t1:g} s (its audio lasts {a_t0 + audio.size / SAMPLE_RATE:.2f} s)")
    lead = int(round((a_t0 - t0) * SAMPLE_RATE))  # > 0: the audio track starts after the span
    audio = np.pad(audio, (lead, 0)) if lead > 0 else audio[-lead:]
    return audio[:int(round((t1 - t0) * SAMPLE_RATE))].astype(np.float32), t0


def _letterbox(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = size
    ih, iw = img.shape[:2]
    if (iw, ih) == (w, h):
        return img
    s = min(w / iw, h / ih)
    nw, nh = max(1, int(round(iw * s))), max(1, int(round(ih * s)))
    out = np.zeros((h, w, 3), np.uint8)
    x0, y0 = (w - nw) // 2, (h - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def _clip_frames(clip: Clip, times: np.ndarray, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """One frame per file time in `times` (ascending): the latest source frame shown by then."""
    with open_video(_uri(clip.path)) as src:
        frames = iter(src)
        cur, nxt = None, next(frames, None)
        for t in times:
            while nxt is not None and nxt.t <= t:
                cur, nxt = nxt, next(frames, None)
            shown = cur if cur is not None else nxt
            yield _letterbox(shown.image, size) if shown is not None else np.zeros((size[1], size[0], 3), np.uint8)


def _frame_size(clips: list[Clip]) -> tuple[int, int]:
    """(width, height): the first video clip's frame, at most MAX_WIDTH wide, even."""
    first = next(c for c in clips if c.is_video)
    with open_video(_uri(first.path)) as src:
        h, w = src.read().image.shape[:2]
    s = min(1.0, MAX_WIDTH / w)
    return int(w * s) // 2 * 2, int(h * s) // 2 * 2


class _VideoWriter:
    """A video-only mp4 (H.264, or MPEG-4 part 2 where PyAV lacks libx264) written frame by frame."""

    def __init__(self, path: Path, size: tuple[int, int]) -> None:
        import av

        self.size, self.c = size, av.open(str(path), "w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.s = self.c.add_stream(codec, rate=FPS)
        self.s.width, self.s.height, self.s.pix_fmt = size[0], size[1], "yuv420p"
        if codec == "libx264":
            self.s.options = {"preset": "veryfast", "crf": "20"}
        self.black = np.zeros((size[1], size[0], 3), np.uint8)
        self.frames = 0  # written so far

    def write(self, img: np.ndarray, count: int = 1) -> None:
        import av

        for _ in range(max(count, 0)):
            self.frames += 1
            for p in self.s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                self.c.mux(p)

    def close(self) -> None:
        for p in self.s.encode():
            self.c.mux(p)
        self.c.close()


def build_clip_stream(clips: list[Clip], out_dir: str | Path, gap_s: float = 1.0, video: bool = False,
                      progress: Callable[[int, int], None] | None = None, gain_db: float = 0.0) -> ClipStream:
    """Join `clips` (in this order) into `out_dir`/stream.wav (+ stream.mp4 when `video` and a clip
    has frames), a gap of `gap_s` s of silence before each clip and after the last. `gain_db`
    scales every clip's audio (a louder or quieter microphone; the WAV is float, so nothing clips).

    Raises:
        SourceError: a clip cannot be read (the message names its row and file).
        ImportError: PyAV / OpenCV missing for these clips.
    """
    import soundfile as sf

    if not gap_s >= 0:
        raise ValueError(f"the gap must be >= 0 s, got {gap_s}")
    if not -60 <= gain_db <= 60:
        raise ValueError(f"the gain must be within -60 and +60 dB, got {gain_db}")
    scale = np.float32(10 ** (gain_db / 20))
    video = video and any(c.is_video for c in clips)
    check_decoders(clips, video)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), np.float32)
    size = _frame_size(clips) if video else None
    vw = _VideoWriter(out_dir / "stream.mp4", size) if video else None
    segments, n = [], 0  # samples written so far: the stream's clock
    try:
        with sf.SoundFile(str(out_dir / "stream.wav"), "w", SAMPLE_RATE, 1, subtype="FLOAT") as wav:
            for i, clip in enumerate(clips):
                if progress is not None:
                    progress(i, len(clips))
                try:
                    audio, t0 = _clip_audio(clip)
                    wav.write(gap)
                    n += gap.size
                    start, end = n / SAMPLE_RATE, (n + audio.size) / SAMPLE_RATE
                    if vw is not None:  # frame k shows stream time k / FPS: no drift between the clocks
                        vw.write(vw.black, _frame(start) - vw.frames)
                        k = np.arange(vw.frames, _frame(end))
                        times = t0 + k / FPS - start + 0.5 / FPS  # the source frame nearest each output time
                        for img in (_clip_frames(clip, times, size) if clip.is_video else [vw.black] * k.size):
                            vw.write(img)
                except SourceError as e:
                    msg = str(e) if str(e).startswith(clip.where) else f"{clip.where}: {e}"
                    raise SourceError(msg) from e
                wav.write(audio * scale)
                n += audio.size
                segments.append(Segment(clip, start, end))
            wav.write(gap)
            n += gap.size
            if vw is not None:
                vw.write(vw.black, _frame(n / SAMPLE_RATE) - vw.frames)
    finally:
        if vw is not None:
            vw.close()
    return ClipStream(out_dir / "stream.wav", out_dir / "stream.mp4" if video else None, segments, n / SAMPLE_RATE)


def _frame(t: float) -> int:
    """The first video frame at or after stream time `t` (s)."""
    return int(np.ceil(t * FPS - 1e-6))
