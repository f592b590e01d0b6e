"""Live capture behind the source interface: microphone (sounddevice), USB and CSI cameras (OpenCV).

Open these through `sources.open_audio("mic://...")` / `sources.open_video("camera://0")`.

The microphone callback runs on PortAudio's real-time thread, so it only copies into a
preallocated ring buffer and counts overflows: no allocation, I/O or lock that could block
(a blocked callback drops audio). The reader polls the ring from the caller's thread.

Cameras are read by a background thread that keeps only the newest frame, so a slow consumer
sees fresh frames instead of a growing backlog (EDGE.md: "latency grows to seconds").
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from mlsan_edge.config import SAMPLE_RATE
from mlsan_edge.runtime.source_base import CHUNK_SAMPLES, AudioChunk, Frame, Source, SourceError

log = logging.getLogger(__name__)

RING_SECONDS = 4.0  # microphone ring buffer; a consumer that falls further behind loses audio
LOST_AFTER_S = 2.0  # a camera whose grabs fail this long is lost (read() raises; the stream reconnects)


def _import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # the Python package is there, the PortAudio library is not
        raise SourceError(
            f"cannot load the PortAudio library ({e}); install it with "
            "`sudo apt-get install libportaudio2` (Debian/Ubuntu/JetPack)") from e
    except ImportError as e:
        raise SourceError("live microphone capture needs sounddevice: pip install 'mlsan-edge[live]' "
                          "(or pip install sounddevice)") from e
    return sd


def list_input_devices() -> list[tuple[int, str]]:
    """(index, name) of every PortAudio device with input channels; [] when none or no PortAudio."""
    sd = _import_sounddevice()
    try:
        return [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    except sd.PortAudioError:
        return []


def _describe_inputs() -> str:
    devices = list_input_devices()
    if not devices:
        return "no audio input device was found (is a microphone plugged in, and is this user in the 'audio' group?)"
    return "input devices: " + "; ".join(f"mic://{i} = {name!r}" for i, name in devices)


def _resolve_device(spec: str) -> int | None:
    """'default' -> None; '2' -> 2; a name -> the index of the one input device whose name contains it."""
    if spec in ("", "default"):
        return None
    if spec.isdigit():
        return int(spec)
    matches = [i for i, name in list_input_devices() if spec.lower() in name.lower()]
    if len(matches) != 1:
        what = "no" if not matches else f"{len(matches)}"
        raise SourceError(f"{what} input device names contain {spec!r}; {_describe_inputs()}. "
                          "Pick one by index (mic://N) or by a unique part of its name.")
    return matches[0]


class MicSource(Source):
    """16 kHz mono microphone capture in 512-sample chunks.

    Args:
        uri: the URI it was opened with (for messages).
        device: "default", an index ("2") or part of a device name ("USB").
        query: URI parameters: `buffer_s` (ring length, s).
        t0: `time.monotonic()` origin of chunk times (None: now).

    Attributes:
        overflows: callbacks that reported an input overflow (PortAudio lost samples).
        dropped_samples: samples overwritten in the ring before `read` took them (consumer too slow).
    """

    def __init__(self, uri: str, device: str = "default", query: dict | None = None, t0: float | None = None) -> None:
        sd = _import_sounddevice()
        self.uri, self.eos = uri, False
        query = query or {}
        cap = int(float(query.get("buffer_s", RING_SECONDS)) * SAMPLE_RATE) // CHUNK_SAMPLES * CHUNK_SAMPLES
        self._ring = np.zeros(max(cap, 8 * CHUNK_SAMPLES), np.float32)  # preallocated, never resized
        self._written = 0  # total samples written by the callback (only the callback writes it)
        self._read = 0  # total samples consumed by read()
        self.overflows = 0
        self.dropped_samples = 0
        self._error: BaseException | None = None
        index = _resolve_device(device)
        try:
            self._stream = sd.InputStream(samplerate=SAMPLE_RATE, blocksize=CHUNK_SAMPLES, device=index,
                                          channels=1, dtype="float32", callback=self._callback)
            self._stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise SourceError(f"cannot open microphone {device!r} at {SAMPLE_RATE} Hz mono ({e}); "
                              f"{_describe_inputs()}. If the device lacks 16 kHz, use mic://default "
                              "(ALSA's plug layer resamples).") from e
        now = time.monotonic()
        self._t_offset = now - (t0 if t0 is not None else now)
        log.info("microphone %s open (ring %.1f s)", device, self._ring.shape[0] / SAMPLE_RATE)

    def _callback(self, indata, frames, time_info, status) -> None:
        # PortAudio's real-time thread: copy and count, nothing else.
        try:
            if status.input_overflow:
                self.overflows += 1
            n, cap = frames, self._ring.shape[0]
            i = self._written % cap
            k = min(n, cap - i)
            self._ring[i:i + k] = indata[:k, 0]
            if k < n:
                self._ring[:n - k] = indata[k:n, 0]
            self._written += n
        except BaseException as e:  # exceptions here never reach the main thread: keep for read()
            self._error = e
            raise

    def read(self, timeout: float | None = 1.0) -> AudioChunk | None:
        """The next (512,) chunk, or None when none arrived within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._error is not None:
                raise SourceError(f"microphone capture failed in the audio callback: {self._error!r}") from self._error
            if self.eos:
                return None
            written, cap = self._written, self._ring.shape[0]
            if written - self._read > cap - CHUNK_SAMPLES:  # the callback lapped us: skip ahead
                skip = written - self._read - (cap - CHUNK_SAMPLES)
                self.dropped_samples += skip
                self._read += skip
                log.warning("microphone consumer too slow: dropped %d samples", skip)
            if written - self._read >= CHUNK_SAMPLES:
                i = self._read % cap
                chunk = np.take(self._ring, np.arange(i, i + CHUNK_SAMPLES) % cap)
                t = self._t_offset + self._read / SAMPLE_RATE
                self._read += CHUNK_SAMPLES
                return AudioChunk(t, chunk)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.004)  # poll: an Event would put a lock in the real-time callback

    def close(self) -> None:
        if not self.eos:
            self.eos = True
            try:
                self._stream.stop()
            finally:
                self._stream.close()


def csi_pipeline(sensor_id: int, query: dict | None = None) -> str:
    """GStreamer pipeline for a Jetson CSI camera (Argus) ending in a latest-frame-only appsink."""
    q = query or {}
    w, h, fps = int(q.get("width", 1280)), int(q.get("height", 720)), int(q.get("fps", 30))
    flip = int(q.get("flip", 0))
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={w}, height={h}, framerate={fps}/1, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! "
            f"videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def _opencv_has_gstreamer(cv2) -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _existing_cameras() -> str:
    devs = sorted(str(p) for p in Path("/dev").glob("video*"))
    return ("video devices: " + ", ".join(devs)) if devs else "no /dev/video* device exists"


class CameraSource(Source):
    """A camera read by a background thread that keeps only the newest frame.

    Args:
        uri: the URI it was opened with.
        index: camera number (camera://N -> /dev/videoN; csi://N -> sensor-id N).
        pipeline: a GStreamer pipeline (CSI) or None for a plain V4L2 device.
        t0: `time.monotonic()` origin of frame times (None: now).
        query: URI parameters; `width`, `height`, `fps` request a capture mode from V4L2 cameras.
    """

    def __init__(self, uri: str, index: int, pipeline: str | None = None, t0: float | None = None,
                 query: dict | None = None) -> None:
        import cv2

        self.uri, self.eos = uri, False
        self._t0 = t0 if t0 is not None else time.monotonic()
        if pipeline is not None:
            if not _opencv_has_gstreamer(cv2):
                raise SourceError(
                    f"{uri} needs OpenCV built with GStreamer, and this OpenCV ({cv2.__version__}, "
                    f"{cv2.__file__}) has none — pip's opencv wheels never do. On a Jetson use JetPack's: "
                    "`pip uninstall opencv-python opencv-python-headless` and `sudo apt-get install "
                    "python3-opencv` (or nvidia-opencv), then check cv2.getBuildInformation() shows GStreamer: YES.")
            self._cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
            hint = ("check the ribbon cable and sensor-id, and restart Argus after a crash: "
                    "`sudo systemctl restart nvargus-daemon`")
        else:
            self._cap = cv2.VideoCapture(index)
            q = query or {}
            for key, prop in (("width", cv2.CAP_PROP_FRAME_WIDTH), ("height", cv2.CAP_PROP_FRAME_HEIGHT),
                              ("fps", cv2.CAP_PROP_FPS)):
                if key in q and self._cap.isOpened():
                    self._cap.set(prop, float(q[key]))
            hint = f"{_existing_cameras()}; pick one with camera://N (N from /dev/videoN)"
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"cannot open camera {uri!r}; {hint}")
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._seq = 0  # frames captured
        self._seen = 0  # seq of the last frame returned by read()
        self.failed_grabs = 0
        self._lost: str | None = None  # why the camera stopped delivering (unplugged...), once it has
        self._thread = threading.Thread(target=self._loop, name=f"capture:{uri}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failing_since = None  # monotonic time of the first failed grab in a row
        try:
            while not self.eos:
                ok, image = self._cap.read()
                now = time.monotonic()
                t = now - self._t0
                if not ok:
                    self.failed_grabs += 1
                    if self.failed_grabs % 30 == 1:
                        log.warning("%s: frame grab failed (%d so far)", self.uri, self.failed_grabs)
                    failing_since = failing_since or now
                    if now - failing_since >= LOST_AFTER_S:  # unplugged, or the driver gave up
                        with self._cond:
                            self._lost = f"no frame for {now - failing_since:.1f} s (unplugged?)"
                            self._cond.notify_all()
                        return
                    time.sleep(0.01)
                    continue
                failing_since = None
                with self._cond:
                    self._latest, self._seq = Frame(t, image), self._seq + 1
                    self._cond.notify_all()
        finally:
            self._cap.release()

    def read(self, timeout: float | None = 1.0) -> Frame | None:
        """The newest frame not returned before, or None when none arrives within `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > self._seen or self.eos or self._lost, timeout):
                return None
            if self._lost and not self.eos:
                raise SourceError(f"camera {self.uri!r} lost: {self._lost}")
            if self.eos or self._seq == self._seen:
                return None
            self._seen = self._seq
            return self._latest

    def close(self) -> None:
        self.eos = True
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
