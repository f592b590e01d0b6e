"""`Runtime.stream`: capture, VAD, processing and output on threads joined by bounded queues.

capture -> [audio queue] -> VAD + voice partials -> [utterance queue] -> model -> [event queue]
-> caller, and frames -> face analysis -> face buffer (read by the model thread). When a queue
fills, its oldest item is dropped and counted (`Event.dropped`), so memory never grows.

The threads drive the same pieces as the synchronous `Step` (`step.py`): an `UtteranceSegmenter`
(VAD + streaming voice embedding), a `FaceFeed`, and `Pipeline.process`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from typing import Iterator
from urllib.parse import urlsplit

from mlsan_edge.runtime.config import is_live
from mlsan_edge.runtime.events import Event
from mlsan_edge.runtime.face_tracking import FaceFeed
from mlsan_edge.runtime.pipeline import FaceFrames, Job, Pipeline, notify
from mlsan_edge.runtime.queues import DropOldestQueue
from mlsan_edge.runtime.source_base import SourceError
from mlsan_edge.runtime.step import UtteranceSegmenter
from mlsan_edge.runtime.text_source import TextSource

log = logging.getLogger(__name__)

DEVICE_VIDEO_SCHEMES = ("camera", "csi")
CAMERA_LOST = "camera failed: audio-only"  # in Event.degraded while the camera is away


class LiveStream:
    """capture -> [audio queue] -> VAD + voice partials -> [utterance queue] -> model -> [event queue] -> caller,
    and frames -> face analysis -> face buffer (read by the model thread).

    Args:
        pipeline: the runtime's `Pipeline` (`Runtime.stream` passes it).
        audio, video: source URIs (`sources.open_audio`, `open_video`); video may be None.
        text: what was said in each utterance.
        on_event: called with each event from the model thread.
        on_chunk: `fn(chunk, in_speech)` after the VAD took each audio chunk (VAD thread), for meters.
        on_frame: `fn(frame, faces)` for each video frame read (video thread); `faces` is the frame's
            `FrameFaces` when it was analysed, else None. For displays; keep it quick.
        stop: an event the caller may set to end the stream (capture stops, pending work is dropped).
    """

    def __init__(self, pipeline: Pipeline, audio: str, video: str | None, text: TextSource, on_event,
                 on_chunk=None, on_frame=None, stop: threading.Event | None = None) -> None:
        self.pipeline, self.audio_uri, self.video_uri, self.text = pipeline, audio, video, text
        self.on_event, self.on_chunk, self.on_frame = on_event, on_chunk, on_frame
        c = self.config = pipeline.config
        self.audio_q = DropOldestQueue(c.audio_queue)
        self.utt_q = DropOldestQueue(c.utterance_queue)
        self.event_q = DropOldestQueue(c.event_queue)
        self.stop = stop if stop is not None else threading.Event()
        self.errors: list[BaseException] = []
        self.conv = pipeline.conversation()
        self.faces: FaceFeed | None = None
        self.video_done = threading.Event()
        self.vad_t = 0.0  # stream time the VAD has reached
        # live sources drop the oldest pending work under overload; recorded ones wait instead
        self.live_audio = is_live(audio)
        self.src = None  # the audio source, once open
        self.t0 = 0.0  # time.monotonic() origin of both sources' clocks
        # a camera (not a file) that fails is reopened with backoff while the audio goes on
        self.video_device = bool(video) and urlsplit(video).scheme in DEVICE_VIDEO_SCHEMES

    def dropped(self) -> dict[str, int]:
        d = {"audio_chunks": self.audio_q.dropped, "utterances": self.utt_q.dropped, "events": self.event_q.dropped}
        src = self.src  # a microphone counts PortAudio overflows and the samples its reader lost
        for key, attr in (("mic_overflows", "overflows"), ("mic_samples", "dropped_samples")):
            if getattr(src, attr, None) is not None:
                d[key] = int(getattr(src, attr))
        return d

    def run(self) -> Iterator[Event]:
        from mlsan_edge.runtime.sources import open_audio, open_video

        t0 = self.t0 = time.monotonic()
        src = self.src = open_audio(self.audio_uri, t0=t0)
        vsrc = None
        if self.video_uri:
            try:
                vsrc = open_video(self.video_uri, t0=t0)
            except Exception as e:
                # a bad video *file* is the caller's mistake: one clear error; a camera that
                # cannot open is hardware: audio-only, and the video thread keeps trying
                if not self.video_device:
                    src.close()
                    raise
                try:
                    self._camera_failed(e)  # raises under "stop"
                except SourceError:
                    src.close()
                    raise
        threads = [threading.Thread(target=self._guard(self._capture, src, drain=True), name="mlsan-capture",
                                    daemon=True),
                   threading.Thread(target=self._guard(self._vad), name="mlsan-vad", daemon=True),
                   threading.Thread(target=self._guard(self._model), name="mlsan-model", daemon=True)]
        if (vsrc is not None or self.video_device) and self.pipeline.face_analyzer() is not None:
            self.faces = FaceFeed(self.pipeline.face_analyzer(), self.config.face_fps)
            threads.append(threading.Thread(target=self._guard(self._video, vsrc), name="mlsan-video", daemon=True))
        else:
            self.video_done.set()
            if vsrc is not None:
                vsrc.close()
        for th in threads:
            th.start()
        try:
            while True:
                try:
                    ev = self.event_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                except EOFError:
                    break
                yield ev
            if self.errors:
                raise self.errors[0]
        finally:
            self.stop.set()
            for q in (self.audio_q, self.utt_q, self.event_q):
                q.close()
            for th in threads:
                th.join(timeout=5.0)
            for s in (src, vsrc):  # normally closed by their threads already
                if s is not None and not s.eos:
                    try:
                        s.close()
                    except ValueError:  # a reader thread is still inside it (join timed out)
                        log.warning("could not close %r: its reader thread is stuck", s)

    def _guard(self, fn, *args, drain: bool = False):
        """Run `fn` on a thread; its exception is re-raised, as is, in the caller's thread by run().

        drain: the stages after this thread finish what they already hold before the error is
        raised (a capture error: the utterances heard before a file's corrupt tail still give
        their events); otherwise the stream stops at once.
        """
        def run():
            try:
                fn(*args)
            except BaseException as e:
                # traceback at debug level only: the caller reports it (the CLI in one line)
                log.debug("%s failed: %s", threading.current_thread().name, e, exc_info=True)
                self.errors.append(e)
                if not drain:
                    self.stop.set()
                    self.event_q.close()
        return run

    def _camera_failed(self, e: BaseException) -> None:
        if self.config.on_camera_failure == "stop":
            raise SourceError(f"camera {self.video_uri!r} failed ({e}); stopping (on_camera_failure='stop')") from e
        msg = f"camera {self.video_uri!r} failed ({e}): running audio-only" + (
            f", reconnecting (backoff up to {self.config.camera_retry_max_s:g} s)" if self.video_device else "")
        log.warning(msg)
        if CAMERA_LOST not in self.conv.degraded:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.conv.degraded.add(CAMERA_LOST)

    def _reconnect(self):
        """Reopen the camera with exponential backoff (0.5 s doubling up to
        `config.camera_retry_max_s`) until it opens, the stream stops or the audio ends; None then."""
        from mlsan_edge.runtime.sources import open_video

        delay = 0.5
        while not self.stop.is_set() and not self.audio_q.closed:
            if self.stop.wait(delay):
                return None
            try:
                vsrc = open_video(self.video_uri, t0=self.t0)
            except Exception as e:
                log.info("camera %r still unavailable (%s); next try in %.1f s", self.video_uri, e,
                         min(2 * delay, self.config.camera_retry_max_s))
                delay = min(2 * delay, self.config.camera_retry_max_s)
                continue
            log.warning("camera %r is back: audio + video again", self.video_uri)
            self.conv.degraded.discard(CAMERA_LOST)
            return vsrc
        return None

    # threads ----------------------------------------------------------------------------------
    def _capture(self, src) -> None:
        try:
            while not self.stop.is_set():
                chunk = src.read(timeout=0.5)
                if chunk is None:
                    if src.eos:
                        break
                    continue
                self.audio_q.put(chunk, block=not self.live_audio)
        finally:
            self.audio_q.close()
            src.close()  # in this thread: a file source's generator must not be closed from another

    def _video(self, vsrc) -> None:
        lead = 5.0  # recorded video may run at most this far ahead of the audio path
        live = is_live(self.video_uri)
        try:
            if vsrc is None:  # the camera did not open: try again while the audio runs
                vsrc = self._reconnect()
                if vsrc is None:
                    return
            while not self.stop.is_set():
                try:
                    frame = vsrc.read(timeout=0.5)
                except Exception as e:  # unplugged, driver error, a file's corrupt tail
                    vsrc.close()
                    vsrc = None
                    self._camera_failed(e)  # raises under "stop"
                    if not self.video_device:
                        return
                    vsrc = self._reconnect()
                    if vsrc is None:
                        return
                    continue
                if frame is None:
                    if vsrc.eos:
                        return
                    continue
                if not self.faces.wants(frame.t):
                    if self.on_frame is not None:
                        self.on_frame(frame, None)
                    continue
                while not live and frame.t > self.vad_t + lead and not self.stop.is_set() and not self.audio_q.closed:
                    time.sleep(0.01)
                self.faces.add(frame.t, frame.image)
                if self.on_frame is not None:
                    self.on_frame(frame, self.faces.buffer.last)
        finally:
            self.video_done.set()
            if vsrc is not None:
                vsrc.close()

    def _vad(self) -> None:
        utterances = UtteranceSegmenter.of(self.pipeline, self.text)
        try:
            while not self.stop.is_set():
                try:
                    chunk = self.audio_q.get(timeout=0.5)
                except queue.Empty:
                    continue
                except EOFError:
                    break
                job = utterances.push(chunk.samples, chunk.t)
                self.vad_t = chunk.t
                if self.on_chunk is not None:
                    self.on_chunk(chunk, utterances.segmenter.in_speech)
                if job is not None:
                    self.utt_q.put(job, block=not self.live_audio)
            if not self.stop.is_set():
                job = utterances.flush()
                if job is not None:
                    self.utt_q.put(job, block=not self.live_audio)
        finally:
            self.vad_t = float("inf")
            self.utt_q.close()

    def _frames_for(self, job: Job) -> FaceFrames | None:
        if self.faces is None:
            return None
        buf = self.faces.buffer

        def get():
            t = time.perf_counter()
            limit = self.config.video_wait_live_s if is_live(self.video_uri) else self.config.video_wait_file_s
            while buf.latest_t < job.end_s and not self.video_done.is_set() and not self.stop.is_set():
                if time.perf_counter() - t > limit:
                    break
                time.sleep(0.005)
            return buf.window(job.start_s, job.end_s), (time.perf_counter() - t) * 1000
        return get

    def _model(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    job = self.utt_q.get(timeout=0.5)
                except queue.Empty:
                    continue
                except EOFError:
                    break
                if not self.live_audio:
                    # read faster than real time, a recording has no wall-clock "end of speech":
                    # measure from when the model thread takes the utterance
                    job.t_end = time.perf_counter() - job.embed_ms / 1000  # + the voice tail done before
                    job.exclude_wait = True
                with self.conv.lock:
                    ev = self.pipeline.process(self.conv, job, self._frames_for(job), self.text, self.dropped())
                if self.on_event is not None:
                    notify([self.on_event], ev)
                self.event_q.put(ev, block=not self.live_audio)
        finally:
            self.event_q.close()
