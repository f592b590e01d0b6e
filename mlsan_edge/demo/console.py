"""`mlsan-edge demo --console`: a live table for a headless device over SSH (`rich`).

The table holds the last utterances (time, speaker, emotion, confidence, distance to the
training data (`ood`), stage-2 trust,
latency against its budget) under a status line with the VAD state and the audio level; it
refreshes a few times a second from the `Timeline` while the events come from `Runtime.stream`.
"""

from __future__ import annotations

import sys
import time

from mlsan_edge.demo.timeline import Timeline, format_ood

ROWS = 12  # utterances kept on screen
STYLE = {"neutral": "white", "joy": "yellow", "surprise": "orange1", "fear": "magenta", "sadness": "blue",
         "disgust": "green", "anger": "red"}


def _import_rich():
    try:
        import rich  # noqa: F401
    except ImportError as e:
        raise ImportError("the console table needs rich: pip install rich (or run --headless)") from e


class _View:
    """A rich renderable rebuilt at each refresh."""

    def __init__(self, tl: Timeline, budget_ms: float) -> None:
        self.tl, self.budget_ms, self.events, self.t_start = tl, budget_ms, [], time.monotonic()

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = time.monotonic() - self.tl.t0 if self.tl.live else (self.events[-1].end_s if self.events else 0.0)
        st = self.tl.state_at(t if self.tl.live else float("inf"))
        level = max(st.vu_db, -60.0)
        bar = "#" * int((level + 60) / 3)
        status = Text.assemble(("● SPEECH " if st.in_speech else "○ listening", "bold red" if st.in_speech else "green"),
                               f"  VU {bar:<20s} {level:4.0f} dB   {len(self.events)} utterances   "
                               f"{time.monotonic() - self.t_start:5.0f} s")
        table = Table(expand=False, header_style="bold")
        for col, just in (("time s", "right"), ("speaker", "left"), ("sim", "right"), ("emotion", "left"),
                          ("conf", "right"), ("ood a/v", "right"), ("trust t/a/v", "left"), ("face", "center"), ("latency ms", "right")):
            table.add_column(col, justify=just)
        for ev in self.events[-ROWS:]:
            who = ev.speaker_name or f"#{ev.speaker_id}"
            ms = ev.timings_ms.get("total_after_end", 0.0)
            tr = ev.trust
            table.add_row(f"{ev.start_s:.1f}-{ev.end_s:.1f}", who + (" (new)" if ev.new_speaker else ""),
                          "-" if ev.speaker_similarity is None else f"{ev.speaker_similarity:.2f}",
                          Text(ev.emotion, style=STYLE.get(ev.emotion, "")), f"{ev.probs[ev.emotion]:.2f}", format_ood(ev),
                          "/".join(f"{tr.get(m, 0.0):.2f}" for m in ("text", "audio", "visual")),
                          "yes" if ev.face_used else "-",
                          Text(f"{ms:.0f}", style="green" if ms <= self.budget_ms else "red"))
        return Group(status, table)


def run_console(rt, audio: str, video: str | None, tl: Timeline, writer=None) -> list:
    """Events of `rt.stream` in a live table until the stream ends or Ctrl-C; returns them."""
    _import_rich()
    from rich.console import Console
    from rich.live import Live

    from mlsan_edge.demo.app import tapped_stream

    view = _View(tl, rt.config.budgets.total_after_end)
    stream = tapped_stream(rt, audio, video, tl, writer)
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 110)  # a pipe: no truncated columns
    try:
        with Live(view, console=console, refresh_per_second=4, transient=False):
            for ev in stream:
                tl.add_event(ev)
                view.events.append(ev)
    except KeyboardInterrupt:
        console.print(f"interrupted after {len(view.events)} events")
    finally:
        stream.close()
        console.print()
    return view.events
