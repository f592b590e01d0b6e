"""What the runtime reported over time, so a frame at stream time t can be drawn as it was then.

`Timeline` receives the runtime's taps (`Runtime.stream(on_chunk=..., on_frame=...)`) and its
events, and answers `state_at(t)` with an `OverlayState`. An event is shown from the moment it
was ready: live, when it arrived; on a recording read faster than real time, at its end plus its
measured processing time (`timings_ms['total_after_end']`), i.e. when a live run would have had it.
Thread-safe: taps arrive on the runtime's threads, the display reads from another.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

import numpy as np

from mlsan_edge.demo.overlay import OverlayState, speaker_label

RECENT = 6  # utterances in the bottom strip
SPEAKER_HOLD_S = 4.0  # how long after an utterance its face stays highlighted


class Timeline:
    """Chunk levels, VAD state, face boxes and events of one stream, indexed by stream time.

    Args:
        live: events are stamped with their arrival time (live sources) instead of end + latency.
        max_items: bound on the stored levels / face frames (live sessions run for hours).
        keep_frame: keep the newest video frame (for a window).
        budgets: step -> ms, passed on to the overlay.
        title: shown in the overlay's status bar.
    """

    def __init__(self, live: bool = False, max_items: int | None = None, keep_frame: bool = False,
                 budgets: dict | None = None, title: str = "") -> None:
        self.live, self.keep_frame = live, keep_frame
        mk = (lambda: deque(maxlen=max_items)) if max_items else list
        self._lt, self._lv = mk(), mk()  # chunk time; (dB, in_speech)
        self._ft, self._fv = mk(), mk()  # analysed frame time; [(track, box)]
        self.events: list = []  # (ready_t, event), in arrival order
        self._ready: list[float] = []
        self.budgets, self.title = budgets or {}, title
        self.latest_frame = None  # (t, image) when keep_frame
        self.frames_seen = 0
        self.t0 = time.monotonic()  # live stream origin (set by the caller to the runtime's)
        self._lock = threading.Lock()

    # --- taps ---------------------------------------------------------------------------------
    def on_chunk(self, chunk, in_speech: bool) -> None:
        s = np.asarray(chunk.samples, np.float32)
        db = float(10 * np.log10(np.mean(s * s) + 1e-10))
        with self._lock:
            self._lt.append(float(chunk.t))
            self._lv.append((db, bool(in_speech)))

    def on_frame(self, frame, faces) -> None:
        with self._lock:
            self.frames_seen += 1
            if faces is not None:
                self._ft.append(float(faces.t))
                self._fv.append([(o.track, tuple(int(v) for v in o.box)) for o in faces.faces])
            if self.keep_frame:
                self.latest_frame = (float(frame.t), frame.image)

    def add_event(self, event) -> float:
        """Record an event; returns the stream time from which it is shown."""
        if self.live:
            ready = time.monotonic() - self.t0
        else:
            ready = float(event.end_s) + float(event.timings_ms.get("total_after_end", 0.0)) / 1000.0
        with self._lock:
            i = bisect.bisect_right(self._ready, ready)
            self._ready.insert(i, ready)
            self.events.insert(i, (ready, event))
        return ready

    # --- queries ------------------------------------------------------------------------------
    @staticmethod
    def _before(times, t: float) -> int:
        """Index of the last item at or before t (-1: none); times arrive in order (sorted)."""
        return bisect.bisect_right(times, t) - 1  # bisect works on deques too (O(n) indexing, short)

    def state_at(self, t: float, banner: str = "") -> OverlayState:
        """What the overlay shows at stream time t (s)."""
        with self._lock:
            i = self._before(self._lt, t)
            db, speech = self._lv[i] if i >= 0 else (-90.0, False)
            j = self._before(self._ft, t)
            faces = list(self._fv[j]) if j >= 0 else []
            k = bisect.bisect_right(self._ready, t)
            shown = [e for _, e in self.events[:k]]
        ev = shown[-1] if shown else None
        track = None
        if ev is not None and t - ev.end_s <= SPEAKER_HOLD_S:  # the panel keeps the result; the box fades
            track = (ev.face or {}).get("track")
        return OverlayState(t=t, faces=faces, speaker_track=track, event=ev,
                            recent=[(speaker_label(e), e.emotion) for e in shown[-RECENT:]],
                            vu_db=db, in_speech=speech, budgets=self.budgets, banner=banner, title=self.title)


def format_ood(ev) -> str:
    """"a/v" distances to the training data (1.0 = its 99th percentile; "-": not measured)."""
    ood = getattr(ev, "ood", None) or {}
    return "/".join("-" if ood.get(m) is None else f"{ood[m]:.1f}" for m in ("audio", "visual"))
