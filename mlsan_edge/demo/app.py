"""`mlsan-edge demo`: the whole runtime on the embedded sample, a file, or a microphone and camera.

    mlsan-edge demo                                   # the sample; a window with a display, else headless
    mlsan-edge demo --headless --out demo.mp4         # events on the console + the annotated video
    mlsan-edge demo --audio mic://default --video camera://0      # live (Jetson: csi://0)
    mlsan-edge demo --audio mic://default --console   # a live table over SSH

Everything runs through `load_runtime` -> `Runtime.stream` (the device path); the demo adds the
taps' `Timeline`, the overlay and the outputs. Three faces:

- window (`window.py`): the overlay live, keys q / e / f / p;
- console (`console.py`, `--console`): a live `rich` table;
- headless (no display, or `--headless`): one line per event as it happens.

Each ends with the latency percentiles and, on the sample (or with `--truth`), the agreement of
the events with the truth. `--out FILE.mp4` writes the annotated video with the audio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path

from mlsan_edge.demo.sample import SAMPLE_TRUTH, SAMPLE_VIDEO, agreement, format_agreement, load_truth
from mlsan_edge.demo.timeline import Timeline, format_ood

log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    """Something the user can fix (a missing device or library): one line, then exit 2."""


def format_event(ev) -> str:
    """One console line per event."""
    who = ev.speaker_name or f"#{ev.speaker_id}"
    if ev.new_speaker:
        who += " (new)"
    sim = "  -  " if ev.speaker_similarity is None else f"{ev.speaker_similarity:5.2f}"
    tr = ev.trust
    trust = "/".join(f"{tr.get(m, 0.0):.2f}" for m in ("text", "audio", "visual"))
    return (f"[{ev.start_s:6.2f}-{ev.end_s:6.2f} s] {who:>12s} sim {sim}  {ev.emotion:8s} "
            f"{ev.probs[ev.emotion]:.2f}  ood {format_ood(ev)}  trust t/a/v {trust}  "
            f"{'face' if ev.face_used else 'no face'}  {ev.timings_ms.get('total_after_end', 0.0):5.1f} ms")



# --- sources ------------------------------------------------------------------------------------
def _uri(s: str | None) -> str | None:
    if s is None:
        return None
    return s if "://" in s else f"file://{s}"


def resolve_sources(audio: str | None, video: str | None) -> tuple[str, str | None, bool]:
    """(audio URI, video URI or None, whether this is the embedded sample)."""
    audio, video = _uri(audio), _uri(video)
    if audio is None and video is None:
        if not SAMPLE_VIDEO.exists():
            raise DemoError(f"the embedded sample {SAMPLE_VIDEO} is missing; reinstall mlsan-edge")
        u = f"file://{SAMPLE_VIDEO}"
        return u, u, True
    if audio is None:
        if not video.startswith("file://"):
            raise DemoError(f"--video {video} alone: emotion is recognised per utterance, which needs speech; "
                            "add --audio mic://default (or --audio file://... for a recording)")
        audio = video  # a recording's own sound track
    return audio, video, False


def preflight(audio: str | None, video: str | None) -> None:
    """Open each live source once so a missing device fails now, in one line, before models load."""
    from mlsan_edge.runtime.config import LIVE_SCHEMES
    from mlsan_edge.runtime.sources import SourceError, open_audio, open_video

    for uri, opener, what in ((video, open_video, "video"), (audio, open_audio, "audio")):
        if uri is None or uri.split("://")[0] not in LIVE_SCHEMES:
            continue
        if what == "video":
            _quiet_opencv()
        try:
            opener(uri).close()
        except (SourceError, ImportError, OSError) as e:
            raise DemoError(f"{what} source {uri}: {e}") from e


def _quiet_opencv() -> None:
    """OpenCV's own warnings about a camera it cannot open would repeat our one-line error."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # builds without the logging module
        pass


def window_available() -> tuple[bool, str]:
    """Whether a window can open here, and why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:") and "NONE" in line:
            return False, ("this OpenCV has no GUI (opencv-python-headless); for a window: "
                           "pip uninstall opencv-python-headless && pip install 'opencv-python<5'")
    return True, ""


# --- the run ------------------------------------------------------------------------------------
def run(a: argparse.Namespace) -> int:
    """The `demo` subcommand."""
    from mlsan_edge.runtime.config import RuntimeConfig, is_live

    if not a.verbose:  # the events and the HUD say what the runtime's INFO lines would
        logging.getLogger("mlsan_edge").setLevel(logging.WARNING)
    if a.video and not a.audio:
        preflight(None, _uri(a.video))  # a missing camera is the first thing to say
    audio, video, is_sample = resolve_sources(a.audio, a.video)
    live = is_live(audio) or is_live(video)
    mode = "console" if a.console else "headless" if a.headless else "window"
    if mode == "window":
        ok, why = window_available()
        if not ok:
            if not a.headless and (os.environ.get("DISPLAY") or not sys.platform.startswith("linux")):
                warnings.warn(f"cannot open a window: {why}; running headless", RuntimeWarning, stacklevel=2)
            mode = "headless"
    preflight(audio, video)
    truth = load_truth(a.truth) if a.truth else (load_truth(SAMPLE_TRUTH) if is_sample else None)
    if not a.verbose:  # the HUD and the summary show overruns; per-utterance warnings would drown the events
        logging.getLogger("mlsan_edge.runtime.budgets").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message=r"step '.*' exceeded", category=RuntimeWarning)
    if mode == "window" and not live:  # a recording plays at its own pace in a window
        audio = audio + ("&" if "?" in audio else "?") + "realtime=1"
        video = None if video is None else video + ("&" if "?" in video else "?") + "realtime=1"
        live = True

    from mlsan_edge.runtime.load import load_runtime

    config = RuntimeConfig(face="none" if a.no_face else "auto", speaker_scoring=a.speaker_scoring)
    t_load = time.perf_counter()
    title = "sample" if is_sample else Path(video or audio).name[:24]
    with load_runtime(a.bundle, backend=a.backend, cache=a.cache, config=config) as rt:
        print(f"mlsan-edge demo: bundle {a.bundle} loaded in {time.perf_counter() - t_load:.1f} s; "
              f"{'the embedded sample (CREMA-D + GRID, see its NOTICE.md)' if is_sample else audio}"
              f"{'' if video in (None, audio) or is_sample else ' + ' + video}", file=sys.stderr)
        tl = Timeline(live=live, max_items=20000 if live else None, keep_frame=mode == "window",
                      budgets=rt.config.budgets.to_dict(), title=title)
        writer = None
        if a.out and live:
            from mlsan_edge.demo.writer import AnnotatedWriter

            writer = AnnotatedWriter(a.out)
        try:
            if mode == "window":
                from mlsan_edge.demo.window import run_window

                events = run_window(rt, audio, video, tl, writer)
            elif mode == "console":
                from mlsan_edge.demo.console import run_console

                events = run_console(rt, audio, video, tl, writer)
            else:
                events = run_headless(rt, audio, video, tl, writer)
        finally:
            if writer is not None:
                writer.close()
        _summary(rt, events, truth, a)
        if a.out and not live:
            from mlsan_edge.demo.writer import render_file

            t = time.perf_counter()
            n = render_file(audio, video, a.out, tl)
            print(f"wrote {a.out}: {n} annotated frames with audio ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        elif writer is not None:
            print(f"wrote {a.out}: {writer.frames} annotated frames with audio", file=sys.stderr)
    return 0


def tapped_stream(rt, audio: str, video: str | None, tl: Timeline, writer=None, stop=None):
    """`rt.stream` with the timeline's taps (and, live, the writer's)."""
    from mlsan_edge.demo.overlay import draw_overlay

    on_chunk, on_frame = tl.on_chunk, tl.on_frame
    if writer is not None:
        def on_chunk(chunk, in_speech):  # noqa: F811
            tl.on_chunk(chunk, in_speech)
            writer.audio(chunk.samples, chunk.t)

        def on_frame(frame, faces):  # noqa: F811
            tl.on_frame(frame, faces)
            writer.frame(draw_overlay(frame.image, tl.state_at(frame.t)), frame.t)
    tl.t0 = time.monotonic()
    return rt.stream(audio=audio, video=video, on_chunk=on_chunk, on_frame=on_frame, stop=stop)


def run_headless(rt, audio: str, video: str | None, tl: Timeline, writer=None) -> list:
    """One line per event as it happens; Ctrl-C stops cleanly (sources closed, threads joined)."""
    events = []
    stream = tapped_stream(rt, audio, video, tl, writer)
    try:
        for ev in stream:
            tl.add_event(ev)
            events.append(ev)
            print(format_event(ev), flush=True)
    except KeyboardInterrupt:
        print(f"interrupted after {len(events)} events", file=sys.stderr)
    finally:
        stream.close()
    return events


def _summary(rt, events: list, truth, a: argparse.Namespace) -> None:
    p = rt.stats()["percentiles"].get("total_after_end")
    if p:
        print(f"{len(events)} events; processing after the end of each utterance p50 {p['p50']:.1f} / "
              f"p95 {p['p95']:.1f} ms (budget {rt.config.budgets.total_after_end:.0f} ms)")
    res = None
    if truth is not None:
        res = agreement(events, truth)
        print(format_agreement(res))
        print("(an out-of-domain check on a handful of utterances, not a measurement: see README)")
    if a.json:
        Path(a.json).write_text(json.dumps({"events": [e.to_dict() for e in events], "agreement": res,
                                            "latency_ms": rt.stats()["percentiles"]}, indent=1, default=float))
