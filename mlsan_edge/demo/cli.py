"""The `demo` subcommand's parser (the handler is `app.run`; heavy imports stay inside it)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    """Add `demo` to an argparse subparsers object."""
    d = sub.add_parser("demo", help="the live demo: the runtime on the embedded talking-face sample, a file, "
                       "or a microphone and camera, with an overlay (window), a live table (--console) "
                       "or one line per event (--headless)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--audio", default=None, help="audio URI: mic://default, mic://USB, file://clip.mp4 "
                   "(default: the embedded sample)")
    d.add_argument("--video", default=None, help="video URI: camera://0, csi://0 (Jetson), file://clip.mp4 "
                   "(default: the embedded sample when --audio is not given either)")
    d.add_argument("--headless", action="store_true", help="no window: print each event (the default without a display)")
    d.add_argument("--console", action="store_true", help="a live table in the terminal (rich), e.g. over SSH")
    d.add_argument("--out", default=None, help="write the annotated video with its audio here (.mp4)")
    d.add_argument("--cache", default=None, help="speaker cache (SQLite) to use and keep; default: in memory")
    d.add_argument("--truth", default=None, help="a truth JSON as the sample's (segments with speech times, "
                   "speaker, emotion) to compare a recording's events with")
    d.add_argument("--json", default=None, help="also write the events, the agreement and the latencies here")
    d.add_argument("--bundle", default="default")
    d.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    d.add_argument("--speaker-scoring", default="auto", choices=["auto", "scorer", "cosine"])
    d.add_argument("--no-face", action="store_true", help="ignore the video's faces")
    d.set_defaults(func=demo_command)


def demo_command(a: argparse.Namespace) -> int:
    from mlsan_edge.demo.app import DemoError, run

    try:
        return run(a)
    except DemoError as e:
        if getattr(a, "verbose", False):
            raise
        print(f"mlsan-edge demo: error: {e}", file=sys.stderr)
        return 2
