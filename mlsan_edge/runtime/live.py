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

from mlsan_edge.runtime.config import is_live
from mlsan_edge.runtime.events import Event
from mlsan_edge.runtime.face_tracking import FaceFeed
from mlsan_edge.runtime.pipeline import FaceFrames, Job, Pipeline, notify
from mlsan_edge.runtime.queues import DropOldestQueue
from mlsan_edge.runtime.step import UtteranceSegmenter
from mlsan_edge.runtime.text_source import TextSource

log = logging.getLogger(__name__)


class LiveStream:
    """capture -> [audio queue] -> VAD + voice partials -> [utterance queue] -> model -> [event queue] -> caller,
    and frames -> face analysis -> face buffer (read by the model thread).

    Args:
        pipeline: the runtime's `Pipeline` (`Runtime.stream` passes it).
        audio, video: source URIs (`sources.open_audio`, `open_video`); video may be None.
        text: what was said in each utterance.
        on_event: called with each event from the model thread.
    """

    def __init__(self, pipeline: Pipeline, audio: str, video: str | None, text: TextSource, on_event) -> None:
        self.pipeline, self.audio_uri, self.video_uri, self.text = pipeline, audio, video, text
        self.on_event = on_event
        c = self.config = pipeline.config
        self.audio_q = DropOldestQueue(c.audio_queue)
        self.utt_q = DropOldestQueue(c.utterance_queue)
        self.event_q = DropOldestQueue(c.event_queue)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.conv = pipeline.conversation()
        self.faces: FaceFeed | None = None
        self.video_done = threading.Event()
        self.vad_t = 0.0  # stream time the VAD has reached
        # live sources drop the oldest pending work under overload; recorded ones wait instead
        self.live_audio = is_live(audio)

    def dropped(self) -> dict[str, int]:
        return {"audio_chunks": self.audio_q.dropped, "utterances": self.utt_q.dropped, "events": self.event_q.dropped}

    def run(self) -> Iterator[Event]:
        from mlsan_edge.runtime.sources import open_audio, open_video

        t0 = time.monotonic()
        src = open_audio(self.audio_uri, t0=t0)
        vsrc = None
        if self.video_uri:
            try:
                vsrc = open_video(self.video_uri, t0=t0)
            except Exception as e:
                try:
                    self._camera_failed(e)  # raises under "stop"
                except RuntimeError:
                    src.close()
                    raise
        threads = [threading.Thread(target=self._guard(self._capture, src), name="mlsan-capture", daemon=True),
                   threading.Thread(target=self._guard(self._vad), name="mlsan-vad", daemon=True),
                   threading.Thread(target=self._guard(self._model), name="mlsan-model", daemon=True)]
        if vsrc is not None and self.pipeline.face_analyzer() is not None:
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

    def _guard(self, fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as e:  # surfaced in the caller's thread by run()
                log.exception("%s failed", threading.current_thread().name)
                self.errors.append(e)
                self.stop.set()
                self.event_q.close()
        return run

    def _camera_failed(self, e: BaseException) -> None:
        if self.config.on_camera_failure == "stop":
            raise RuntimeError(f"camera {self.video_uri!r} failed ({e}); stopping (on_camera_failure='stop')") from e
        msg = f"camera {self.video_uri!r} failed ({e}): running audio-only"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.conv.degraded.add("camera failed: audio-only")

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
            while not self.stop.is_set():
                try:
                    frame = vsrc.read(timeout=0.5)
                except Exception as e:
                    self._camera_failed(e)
                    return
                if frame is None:
                    if vsrc.eos:
                        return
                    continue
                if not self.faces.wants(frame.t):
                    continue
                while not live and frame.t > self.vad_t + lead and not self.stop.is_set() and not self.audio_q.closed:
                    time.sleep(0.01)
                self.faces.add(frame.t, frame.image)
        finally:
            self.video_done.set()
            vsrc.close()

    def _vad(self) -> None:
        utterances = UtteranceSegmenter.of(self.pipeline)
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
