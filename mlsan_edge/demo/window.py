"""The demo's window (OpenCV highgui): the overlay live, with keys.

    q / Esc   quit                       e   enrol the current speaker: type a name, Enter (Esc cancels)
    p         pause / resume the view    f   forget the current speaker

The runtime's stream runs on a worker thread (`Runtime.stream(stop=...)`); this thread only
draws the newest frame with the `Timeline`'s state and reads keys, as highgui wants. Ctrl-C or q
sets the stop event: capture ends, the stream's threads are joined, and the caller closes the
runtime (the speaker cache is committed).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np

from mlsan_edge.demo.overlay import draw_overlay
from mlsan_edge.demo.timeline import Timeline

log = logging.getLogger(__name__)

WINDOW = "mlsan-edge demo"


class Keys:
    """Key handling, apart from highgui so it can be tested: `press(code)` -> 'quit' or None."""

    def __init__(self, cache, tl: Timeline) -> None:
        self.cache, self.tl = cache, tl
        self.paused, self.typing, self.name, self.message = False, False, "", ""

    def current_speaker(self) -> int | None:
        return self.tl.events[-1][1].speaker_id if self.tl.events else None

    def press(self, code: int) -> str | None:
        if code < 0:
            return None
        if self.typing:
            if code in (13, 10):  # Enter
                self._enrol(self.name.strip())
                self.typing, self.name = False, ""
            elif code == 27:  # Esc
                self.typing, self.name, self.message = False, "", "enrolment cancelled"
            elif code in (8, 127):
                self.name = self.name[:-1]
            elif 32 <= code < 127:
                self.name += chr(code)
            return None
        ch = chr(code & 0xFF).lower() if code & 0xFF < 128 else ""
        if ch == "q" or code == 27:
            return "quit"
        if ch == "p":
            self.paused = not self.paused
        elif ch == "e":
            if self.current_speaker() is None:
                self.message = "nobody has spoken yet"
            else:
                self.typing, self.name = True, ""
        elif ch == "f":
            sid = self.current_speaker()
            if sid is None:
                self.message = "nobody has spoken yet"
            else:
                try:
                    self.cache.forget(sid)
                    self.message = f"forgot speaker #{sid}"
                except (KeyError, ValueError) as e:
                    self.message = f"cannot forget #{sid}: {e}"
        return None

    def _enrol(self, name: str) -> None:
        sid = self.current_speaker()
        if not name or sid is None:
            self.message = "no name given"
            return
        try:
            self.cache.rename(sid, name)
            self.message = f"speaker #{sid} is now {name!r}"
        except (KeyError, ValueError) as e:
            self.message = f"cannot name #{sid}: {e}"

    def banner(self) -> str:
        if self.typing:
            return f"name for speaker #{self.current_speaker()}: {self.name}_"
        if self.paused:
            return "paused (p to resume)"
        return self.message


def run_window(rt, audio: str, video: str | None, tl: Timeline, writer=None) -> list:
    """Show the overlay until the stream ends, q, or Ctrl-C; returns the events."""
    import cv2

    from mlsan_edge.demo.app import format_event, tapped_stream

    stop = threading.Event()
    events: list = []
    errors: list[BaseException] = []

    def worker() -> None:
        stream = tapped_stream(rt, audio, video, tl, writer, stop=stop)
        try:
            for ev in stream:
                tl.add_event(ev)
                events.append(ev)
                print(format_event(ev), flush=True)
        except BaseException as e:  # shown by the main thread
            errors.append(e)
        finally:
            stream.close()

    th = threading.Thread(target=worker, name="mlsan-demo-stream", daemon=True)
    th.start()
    keys = Keys(rt.cache, tl)
    blank = np.zeros((480, 640, 3), np.uint8)
    frozen = None  # (image, t) while paused
    cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    try:
        while th.is_alive():
            if keys.paused:
                if frozen is None:
                    frozen = (tl.latest_frame[1] if tl.latest_frame else blank, time.monotonic() - tl.t0)
                image, t = frozen
            else:
                frozen = None
                image, t = (tl.latest_frame[1] if tl.latest_frame else blank), time.monotonic() - tl.t0
            cv2.imshow(WINDOW, draw_overlay(image, tl.state_at(t, banner=keys.banner())))
            if keys.press(cv2.waitKey(30)) == "quit":
                break
            if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:  # closed with the mouse
                break
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        stop.set()
        th.join(timeout=10.0)
        cv2.destroyAllWindows()
    if errors:
        raise errors[0]
    return events
