"""Soak and overload: the whole runtime on a long live-paced stream, watched for leaks and drift.

The embedded RAVDESS sample clips (`mlsan_edge/assets/sample/`) are looped with 0.6-1.2 s
pauses into one recording, streamed through `Runtime.stream` as a live source
(`file://...?realtime=1&speed=S`: the oldest pending work is dropped under overload, as from a
microphone) with a persistent speaker cache. Every `--sample-s` seconds the process's RSS and the
three queues' lengths are recorded; every event's processing time after the end of its
utterance (`total_after_end`) and the drop counters too.

    python benchmarks/soak.py --minutes 30 --json benchmarks/results/soak_30min.json           # real time
    python benchmarks/soak.py --minutes 5 --speed 3 --json benchmarks/results/overload_3x.json  # 3x real time

Verdicts (after a warm-up of max(30 s, 10 %) of the run): RSS growth from the warm-up's end to
the end < 5 %; no queue growth (the last third's largest backlog no larger than the first
third's plus 2); no latency drift (the last third's median within 1.5x of the first third's, or
within 10 ms). A PNG of RSS, latency and queue lengths over time sits beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "mlsan_edge" / "assets" / "sample" / "ravdess_mini" / "audio16k"


def rss_mb() -> float:
    """Resident set size of this process (MB), from /proc (Linux, Jetson)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_recording(path: Path, seconds: float, seed: int = 0) -> int:
    """Sample clips looped with pauses into a 16-bit 16 kHz WAV of `seconds`; returns the clip count."""
    import soundfile as sf

    from mlsan_edge.features.audio import load_audio
    from mlsan_edge.features.vad import speech_span

    clips = []
    for p in sorted(SAMPLE.rglob("*.flac")):
        clips.append(speech_span(load_audio(p)))  # the sentence without the clip's ~1 s of silence around it
    rng = np.random.default_rng(seed)
    n, total = 0, int(seconds * 16000)
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        written = 0
        while written < total:
            gap = np.zeros(int(rng.uniform(0.6, 1.2) * 16000), np.float32)
            clip = clips[n % len(clips)] * float(rng.uniform(0.5, 1.0))
            block = np.concatenate([gap, clip])[: total - written]
            f.write(block)
            written += len(block)
            n += 1
    return n


def _pct(x, q) -> float | None:
    return round(float(np.percentile(x, q)), 2) if len(x) else None


def soak(minutes: float, speed: float = 1.0, sample_s: float = 2.0, bundle: str = "default", workdir=None,
         log=print) -> dict:
    """Run the stream for `minutes` of wall-clock time at `speed` x real time; the measurements."""
    from mlsan_edge.runtime.live import LiveStream
    from mlsan_edge.runtime.load import load_runtime
    from mlsan_edge.runtime.text_source import TextSource

    wall_s = minutes * 60.0
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        wav = Path(d) / "soak.wav"
        clips = make_recording(wav, wall_s * speed + 2.0)
        samples, events = [], []
        with load_runtime(bundle, cache=Path(d) / "speakers.db") as rt:
            ls = LiveStream(rt.pipeline, f"file://{wav}?realtime=1&speed={speed:g}", None, TextSource(None), None)
            done = threading.Event()
            t0 = time.perf_counter()

            def sampler():
                while not done.wait(sample_s):
                    samples.append({"t": round(time.perf_counter() - t0, 2), "rss_mb": round(rss_mb(), 2),
                                    "audio_q": len(ls.audio_q), "utt_q": len(ls.utt_q), "event_q": len(ls.event_q)})

            th = threading.Thread(target=sampler, daemon=True)
            samples.append({"t": 0.0, "rss_mb": round(rss_mb(), 2), "audio_q": 0, "utt_q": 0, "event_q": 0})
            th.start()
            last_log = 0.0
            try:
                for ev in ls.run():
                    t = time.perf_counter() - t0
                    events.append({"t": round(t, 3), "end_s": round(ev.end_s, 3),
                                   "latency_ms": round(ev.timings_ms["total_after_end"], 2),
                                   "speaker": ev.speaker_id, "dropped": dict(ev.dropped)})
                    if t - last_log > 60:
                        last_log = t
                        log(f"{t / 60:5.1f} min: {len(events)} events, RSS {rss_mb():.1f} MB, "
                            f"latency p50 {np.median([e['latency_ms'] for e in events[-50:]]):.1f} ms, "
                            f"dropped {ev.dropped}")
                    if t >= wall_s:
                        break
            finally:
                done.set()
                th.join()
            speakers = len(rt.cache)
    return analyse(samples, events, minutes, speed, clips, speakers)


def analyse(samples: list[dict], events: list[dict], minutes: float, speed: float, clips: int, speakers: int) -> dict:
    dur = samples[-1]["t"] if samples else 0.0
    warm = max(30.0, 0.1 * dur)
    after = [s for s in samples if s["t"] >= warm]
    third = max(1, len(after) // 3)
    first, last = after[:third], after[-third:]
    rss_start = float(np.median([s["rss_mb"] for s in first])) if first else None
    rss_end = float(np.median([s["rss_mb"] for s in last])) if last else None
    growth = None if not rss_start else 100.0 * (rss_end - rss_start) / rss_start
    ev_after = [e for e in events if e["t"] >= warm]
    k = max(1, len(ev_after) // 3)
    lat_first = [e["latency_ms"] for e in ev_after[:k]]
    lat_last = [e["latency_ms"] for e in ev_after[-k:]]
    lat_all = [e["latency_ms"] for e in ev_after]
    q = ("audio_q", "utt_q", "event_q")
    q_first = {n: max((s[n] for s in first), default=0) for n in q}
    q_last = {n: max((s[n] for s in last), default=0) for n in q}
    drops = events[-1]["dropped"] if events else {}
    m1, m2 = (float(np.median(lat_first)) if lat_first else 0.0), (float(np.median(lat_last)) if lat_last else 0.0)
    verdict = {
        "rss_growth_pct": None if growth is None else round(growth, 2),
        "rss_growth_ok": growth is not None and growth < 5.0,
        "queue_growth_ok": all(q_last[n] <= q_first[n] + 2 for n in q),
        "latency_drift_ok": m2 <= max(1.5 * m1, m1 + 10.0),
    }
    return {
        "minutes": minutes, "speed": speed, "wall_s": dur, "warmup_s": warm, "clips_in_recording": clips,
        "events": len(events), "speakers_in_cache": speakers,
        "rss_mb": {"start": samples[0]["rss_mb"] if samples else None, "after_warmup": rss_start, "end": rss_end,
                   "max": max((s["rss_mb"] for s in samples), default=None)},
        "latency_ms": {"p50": _pct(lat_all, 50), "p95": _pct(lat_all, 95), "p99": _pct(lat_all, 99),
                       "max": _pct(lat_all, 100), "first_third_p50": round(m1, 2), "last_third_p50": round(m2, 2)},
        "queues_max": {"first_third": q_first, "last_third": q_last},
        "dropped": drops, **verdict,
        "samples": samples, "event_log": events,
    }


def plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, e = res["samples"], res["event_log"]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot([x["t"] / 60 for x in s], [x["rss_mb"] for x in s])
    ax[0].axvline(res["warmup_s"] / 60, color="grey", ls=":", label="end of warm-up")
    ax[0].set_ylabel("RSS (MB)")
    ax[0].legend(loc="lower right")
    ax[0].set_title(f"soak: {res['minutes']:g} min at {res['speed']:g}x real time, {res['events']} events, "
                    f"RSS growth {res['rss_growth_pct']} %, dropped {res['dropped']}", fontsize=9)
    ax[1].plot([x["t"] / 60 for x in e], [x["latency_ms"] for x in e], ".", ms=3)
    ax[1].set_ylabel("after-end latency (ms)")
    for n in ("audio_q", "utt_q", "event_q"):
        ax[2].plot([x["t"] / 60 for x in s], [x[n] for x in s], label=n)
    ax[2].set_ylabel("queue length")
    ax[2].set_xlabel("wall-clock time (min)")
    ax[2].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock length of the run")
    ap.add_argument("--speed", type=float, default=1.0, help="audio delivered at this multiple of real time")
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS / queue sampling period")
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--json", default=None, help="results (the PNG is written beside it)")
    a = ap.parse_args(argv)
    import logging
    import warnings

    import onnxruntime

    # budget overruns are expected on a loaded machine; they are in every event's over_budget
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    logging.basicConfig(level=logging.ERROR)

    from mlsan_edge.runtime.config import RuntimeConfig  # noqa: F401  (defaults recorded below)

    res = soak(a.minutes, a.speed, a.sample_s, a.bundle, log=lambda m: print(m, file=sys.stderr, flush=True))
    res = {"benchmark": "soak / overload of Runtime.stream", "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
           **res, "machine": {"platform": platform.platform(), "python": platform.python_version(),
                              "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}}
    short = {k: v for k, v in res.items() if k not in ("samples", "event_log")}
    print(json.dumps(short, indent=2))
    if a.json:
        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res) + "\n")
        plot(res, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    ok = res["rss_growth_ok"] and res["queue_growth_ok"] and res["latency_drift_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
