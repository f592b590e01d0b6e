"""Per-step latency budgets, rolling percentiles and the overrun policy."""

from __future__ import annotations

import logging
import threading
import warnings
from collections import deque
from dataclasses import dataclass, fields

import numpy as np

from mlsan_edge.runtime.events import STEPS

log = logging.getLogger(__name__)

POLICIES = ("warn", "degrade")
DEGRADABLE = ("face", "text")  # steps that can be skipped for the next utterance


@dataclass(frozen=True)
class Budgets:
    """Milliseconds each step may take for one utterance.

    Derived from measurements, not guessed: `mlsan-edge bench --quick` on this project's 2-core x86
    CPU (benchmarks/results/bench_cpu_quick.json, "budgets"): ceil(1.5 x p99) of each step, at
    least 2 ms, rounded up to a whole ms. `total_after_end` is the product's target instead (EDGE.md:
    the emotion ready <= 100 ms after the end of speech; 60 ms here leaves room for ASR), above the
    34 ms the same rule gives. On another device run `mlsan-edge bench` there and pass its
    `budgets.derived` as `RuntimeConfig(budgets=Budgets(**derived))`.
    """

    vad: float = 2.0  # slowest VAD chunk (each chunk is 32 ms of audio: above that VAD falls behind)
    embedding: float = 17.0  # voice-embedding work left after the end (partials are embedded while speaking)
    cache: float = 10.0  # speaker lookup + cached/recomputed FiLM-gate parameters
    audio_features: float = 13.0
    face: float = 20.0  # after the end: aggregation (live) or the whole face analysis (push API)
    text: float = 9.0
    stage1: float = 2.0
    stage2: float = 2.0
    stage3: float = 2.0
    total_after_end: float = 60.0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


assert tuple(f.name for f in fields(Budgets)) == STEPS


class BudgetTracker:
    """Rolling timings per step and the overrun policy (thread-safe).

    Args:
        budgets: per-step limits.
        policy: "warn" (warnings.warn once per run of overruns) or "degrade" (also skip the face /
            text step for the next utterance when it overran `patience` times in a row).
        patience: consecutive overruns that trigger the policy.
        window: utterances kept for the rolling percentiles.
    """

    def __init__(self, budgets: Budgets = Budgets(), policy: str = "warn", patience: int = 3, window: int = 500) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown budget policy {policy!r}; valid: {', '.join(POLICIES)}")
        self.budgets, self.policy, self.patience = budgets, policy, int(patience)
        self._hist = {s: deque(maxlen=window) for s in STEPS}
        self._streak = {s: 0 for s in STEPS}
        self._skip_next: set[str] = set()
        self._lock = threading.Lock()

    def should_skip(self, step: str) -> bool:
        """True once (for the next utterance) after `step` overran under the degrade policy."""
        with self._lock:
            if step in self._skip_next:
                self._skip_next.discard(step)
                return True
            return False

    def record(self, timings_ms: dict[str, float]) -> list[str]:
        """Add one utterance's timings; returns the steps over budget."""
        over = []
        with self._lock:
            for step, ms in timings_ms.items():
                if step not in self._hist:
                    continue
                self._hist[step].append(float(ms))
                if ms > getattr(self.budgets, step):
                    over.append(step)
                    self._streak[step] += 1
                    if self._streak[step] == self.patience:
                        self._trigger(step)
                else:
                    self._streak[step] = 0
        return over

    def _trigger(self, step: str) -> None:
        msg = (f"step {step!r} exceeded its {getattr(self.budgets, step):.0f} ms budget "
               f"{self.patience} utterances in a row")
        if self.policy == "degrade" and step in DEGRADABLE:
            self._skip_next.add(step)
            self._streak[step] = 0
            msg += f": skipping {step} for the next utterance"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def percentiles(self) -> dict[str, dict[str, float]]:
        """step -> {n, p50, p95, p99} over the rolling window (ms)."""
        with self._lock:
            out = {}
            for s, h in self._hist.items():
                if h:
                    a = np.asarray(h)
                    out[s] = {"n": len(a), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}}
            return out
