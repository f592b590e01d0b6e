"""`--out FILE.mp4`: the annotated video with the audio muxed in (PyAV; its wheels carry FFmpeg).

Video is H.264 (libx264, yuv420p) when PyAV's FFmpeg has it, else MPEG-4 part 2; audio is AAC,
mono at the runtime's 16 kHz (what the model heard). Frames carry their own times (ms time
base), so a live camera's irregular rate is kept. A recording is rendered after the run
(`render_file`): its frames are decoded again and drawn with the state the runtime reported at
each frame's time (`Timeline.state_at`).
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from mlsan_edge.config import SAMPLE_RATE
from mlsan_edge.demo.overlay import draw_overlay

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)


def video_codec() -> str:
    """'libx264' when this FFmpeg can encode H.264, else 'mpeg4'."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class AnnotatedWriter:
    """An mp4 fed with BGR frames and 16 kHz audio blocks, in any interleaving.

    Args:
        path: the .mp4 to write.
        fps: nominal frame rate (the encoder's rate control; frame times come from `frame`).
        size: (width, height) of the frames, when known; else taken from the first frame, and
            audio arriving before it is held back (a stream cannot be added once muxing began).
    """

    def __init__(self, path: str | Path, fps: float = 25.0, size: tuple[int, int] | None = None) -> None:
        import av

        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self._av = av
        self._out = av.open(str(self.path), "w")
        self.fps = fps
        self._v = None  # created on the first frame (its size)
        self._a = self._out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self._a.bit_rate = 48000
        self._a_pts = None
        self._last_pts = -1
        self._pending: list = []  # audio frames waiting for the video stream
        self.frames = 0
        if size is not None:
            self._v = self._video(*size)
        self._lock = threading.Lock()  # live: frames and audio arrive on different threads

    def _video(self, w: int, h: int):
        codec = video_codec()
        v = self._out.add_stream(codec, rate=int(round(self.fps)))
        v.width, v.height, v.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        v.codec_context.time_base = MS
        v.time_base = MS
        if codec == "libx264":
            v.options = {"crf": "23", "preset": "veryfast"}
        else:
            v.bit_rate = 2_000_000
        return v

    def frame(self, image: np.ndarray, t: float) -> None:
        """Add a BGR frame shown from stream time t (s)."""
        with self._lock:
            if self._out is not None:
                self._frame(image, t)

    def _frame(self, image: np.ndarray, t: float) -> None:
        if self._v is None:
            self._v = self._video(image.shape[1], image.shape[0])
        for f in self._pending:
            self._encode_audio(f)
        self._pending = []
        image = image[:self._v.height, :self._v.width]
        pts = max(int(round(t * 1000)), self._last_pts + 1)
        self._last_pts = pts
        f = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        f.pts, f.time_base = pts, MS
        for p in self._v.encode(f):
            self._out.mux(p)
        self.frames += 1

    def audio(self, samples: np.ndarray, t: float) -> None:
        """Add mono float32 samples at 16 kHz starting at stream time t (s)."""
        av = self._av
        with self._lock:
            if self._out is None:
                return
            if self._a_pts is None:
                self._a_pts = max(0, int(round(t * SAMPLE_RATE)))
            f = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32).reshape(1, -1), format="flt",
                                           layout="mono")
            f.sample_rate, f.time_base, f.pts = SAMPLE_RATE, Fraction(1, SAMPLE_RATE), self._a_pts
            self._a_pts += f.samples
            if self._v is None:
                self._pending.append(f)
            else:
                self._encode_audio(f)

    def _encode_audio(self, f) -> None:
        for p in self._a.encode(f):
            self._out.mux(p)

    def close(self) -> None:
        with self._lock:
            if self._out is None:
                return
            try:
                if self._v is None and self._pending:  # audio only: one black frame carries the video track
                    self._frame(np.zeros((480, 640, 3), np.uint8), 0.0)
                for s in (self._v, self._a):
                    if s is not None:
                        for p in s.encode():
                            self._out.mux(p)
            finally:
                self._out.close()
                self._out = None

    def __enter__(self) -> "AnnotatedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_file(audio: str, video: str | None, out: str | Path, timeline, blank_fps: float = 10.0) -> int:
    """Draw `timeline`'s state on every frame of a recording and mux its audio into `out`.

    Args:
        audio, video: the source URIs the run used (file://...); with no video, the overlay is
            drawn on a blank 640x480 canvas at `blank_fps`.
        out: the .mp4 to write.
        timeline: the run's `Timeline`.

    Returns:
        The number of frames written.
    """
    from mlsan_edge.runtime.sources import open_audio, open_video

    size = None
    if video is None:
        size = (640, 480)
    else:
        probe = open_video(video)
        try:
            first = probe.read()
            size = draw_overlay(first.image, timeline.state_at(first.t)).shape[1::-1]
        finally:
            probe.close()
    with AnnotatedWriter(out, size=size) as w:
        end = 0.0
        asrc = open_audio(audio)
        try:
            for ch in asrc:
                w.audio(ch.samples, ch.t)
                end = ch.t + ch.samples.shape[0] / SAMPLE_RATE
        finally:
            asrc.close()
        if video is not None:
            vsrc = open_video(video)
            try:
                for fr in vsrc:
                    w.frame(draw_overlay(fr.image, timeline.state_at(fr.t)), fr.t)
            finally:
                vsrc.close()
        else:
            blank = np.zeros((480, 640, 3), np.uint8)
            for k in range(int(end * blank_fps) + 1):
                w.frame(draw_overlay(blank, timeline.state_at(k / blank_fps)), k / blank_fps)
        n = w.frames
    log.info("wrote %s (%d frames)", out, n)
    return n
