"""Per-step budgets from a bench run, and the steps whose p95 exceeds the runtime's budgets.

The runtime's defaults live in `mlsan_edge.runtime.budgets.Budgets` (reached through
`RuntimeConfig().budgets`); `derive_budgets` proposes new ones from measurements: p99 x
`HEADROOM`, rounded up to a whole ms (so one budget overrun in ~100 utterances is a signal, not
noise), taken on a quiet machine from `benchmarks/results/`.
"""

from __future__ import annotations

import math

HEADROOM = 1.5
BUDGETS_LIVE_IN = "mlsan_edge/runtime/budgets.py: Budgets (RuntimeConfig.budgets)"

# runtime budget -> where a bench result measures it, first found wins: the real-time stream's
# own step timings (what the budget tracker sees), then the step's micro-benchmark. For the voice
# tail, audio features and text the stream without speculation comes first: with it they are
# mostly done before the end, but an utterance the hangover work missed (speech resumed, a split,
# the end of a stream) pays them in full, and a budget must hold for it
NOSPEC = "end_to_end_no_speculation_steps"
SOURCES = {
    "vad": (("stages", "vad"),),
    "embedding": ((NOSPEC, "embedding"), ("end_to_end_steps", "embedding"), ("stages", "embedding_3s")),
    "cache": (("end_to_end_steps", "cache"), ("stages", "cache_lookup_1000")),
    "audio_features": ((NOSPEC, "audio_features"), ("end_to_end_steps", "audio_features"), ("stages", "audio_features")),
    "face": (("stages", "face"),),
    "text": ((NOSPEC, "text"), ("end_to_end_steps", "text"), ("stages", "text")),
    "stage1": (("stages", "stage1"),),
    "stage2": (("stages", "stage2"),),
    "stage3": (("stages", "stage3"),),
    "total_after_end": (("end_to_end", None),),
}


def current_budgets() -> dict[str, float]:
    """The runtime's default per-step budgets (ms)."""
    from mlsan_edge.runtime import RuntimeConfig

    return dict(RuntimeConfig().budgets.to_dict())


def measured(result: dict, step: str) -> tuple[dict | None, str | None]:
    """(stats, "section.name") measuring a runtime step in a bench result, or (None, None)."""
    for section, name in SOURCES.get(step, ()):
        block = result.get(section)
        stats = block if name is None else (block or {}).get(name)
        if stats:
            return stats, section if name is None else f"{section}.{name}"
    return None, None


def derive_budgets(result: dict, headroom: float = HEADROOM) -> dict[str, float]:
    """Budgets (ms) the measurements support: ceil(p99 x headroom) for every step measured."""
    out = {}
    for step in SOURCES:
        stats, _ = measured(result, step)
        if stats is not None:
            out[step] = float(math.ceil(stats["p99_ms"] * headroom))
    return out


def over_budget(result: dict, budgets: dict[str, float] | None = None) -> list[dict]:
    """Every step whose measured p95 exceeds its budget (default: the runtime's)."""
    budgets = budgets if budgets is not None else current_budgets()
    flags = []
    for step, limit in budgets.items():
        stats, where = measured(result, step)
        if stats is not None and stats["p95_ms"] > limit:
            flags.append({"step": step, "p95_ms": stats["p95_ms"], "budget_ms": limit, "measured_in": where})
    return flags
