"""Timing loops and latency statistics, in trtexec's vocabulary (min, median, mean, p90/p95/p99).

    ms = time_calls(lambda i: encoder.embed(clips[i % len(clips)]), runs=200, warmup=20)
    summarize(ms)  # {"min_ms": ..., "median_ms": ..., "p95_ms": ..., "throughput_per_s": ...}

Every benchmark in `mlsan_edge.bench` goes through `time_calls`, so each step gets the same
warm-up, the same clock (`time.perf_counter`) and the same statistics (STYLE.md habit 11: never
a single mean). On a GPU, `time_cuda_calls` adds device time from CUDA events beside host time.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import Callable

import numpy as np

PERCENTILES = (90, 95, 99)
STAT_KEYS = ("runs", "min_ms", "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "throughput_per_s")


def summarize(ms) -> dict:
    """Latency statistics of one step.

    Args:
        ms: (n,) milliseconds, one per measured run (n >= 1).

    Returns:
        `STAT_KEYS` -> value: percentiles by linear interpolation (numpy's default, as trtexec);
        throughput is runs per second at the mean latency of one call (batch 1, one stream).
    """
    a = np.asarray(ms, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("summarize needs at least one timing; did every run fail or get skipped?")
    out = {"runs": int(a.size), "min_ms": float(a.min()), "median_ms": float(np.median(a)), "mean_ms": float(a.mean())}
    for q in PERCENTILES:
        out[f"p{q}_ms"] = float(np.percentile(a, q))
    out["max_ms"] = float(a.max())
    out["throughput_per_s"] = 1000.0 / out["mean_ms"] if out["mean_ms"] > 0 else math.inf
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def time_calls(fn: Callable[[int], object], runs: int, warmup: int, progress=None) -> np.ndarray:
    """Call `fn(i)` `warmup` times untimed, then `runs` times timed.

    Args:
        fn: one call of the step; `i` lets it cycle through real inputs.
        progress: optional callable(n) advanced once per call (a tqdm bar's `update`).

    Returns:
        (runs,) float64 milliseconds.
    """
    for i in range(warmup):
        fn(i)
        if progress is not None:
            progress(1)
    ms = np.empty(runs, np.float64)
    clock = time.perf_counter
    for i in range(runs):
        t = clock()
        fn(i)
        ms[i] = (clock() - t) * 1000.0
        if progress is not None:
            progress(1)
    return ms


def time_cuda_calls(fn: Callable[[int], object], runs: int, warmup: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """As `time_calls`, on a CUDA device: host time (synchronised) and device time from CUDA events.

    Returns:
        (host_ms, device_ms), each (runs,) float64.
    """
    import torch

    for i in range(warmup):
        fn(i)
        if progress is not None:
            progress(1)
    torch.cuda.synchronize()
    host, dev = np.empty(runs), np.empty(runs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(runs):
        t = time.perf_counter()
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        host[i] = (time.perf_counter() - t) * 1000.0
        dev[i] = start.elapsed_time(end)
        if progress is not None:
            progress(1)
    return host, dev


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 1)


class Progress:
    """A tqdm bar when tqdm is installed and enabled; otherwise silent. `update(n)` either way."""

    def __init__(self, total: int, desc: str = "bench", enabled: bool = True) -> None:
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


__all__ = ["summarize", "time_calls", "time_cuda_calls", "peak_rss_mb", "Progress", "STAT_KEYS"]
