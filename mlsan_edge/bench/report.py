"""A bench result as JSON, a markdown table and PNG plots (latency CDF per step; backends side by side)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

COLUMNS = ("runs", "min_ms", "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms")


def machine_info() -> dict:
    """CPU model, cores, memory, GPU (when torch sees one), OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform()}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info["gpu"] = None
    import sys

    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def library_versions() -> dict:
    """Versions of what the numbers depend on (None: not installed)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("mlsan-edge", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "tensorrt",
                 "sentence-transformers", "transformers", "resemblyzer", "librosa", "opencv-python-headless",
                 "opencv-python"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return str(v)


def _row(name: str, stats: dict, budget=None, over=False) -> str:
    cells = [name] + [_fmt(stats.get(c)) for c in COLUMNS] + [_fmt(budget), "**over**" if over else ""]
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict) -> str:
    """The result as a markdown report: machine, steps, backends, end to end, ratios, bound, budgets."""
    m, lib = result["machine"], result["libraries"]
    budgets = result.get("budgets", {}).get("current", {})
    over = {f["measured_in"]: f for f in result.get("over_budget", [])}
    head = "| step | " + " | ".join(COLUMNS) + " | budget ms | |\n|" + "---|" * (len(COLUMNS) + 3)
    lines = [f"# mlsan-edge bench ({'quick' if result['settings']['quick'] else 'full'})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, GPU: {m.get('gpu') or 'none'}, load average "
             f"{m.get('load_average')}",
             f"- libraries: " + ", ".join(f"{k} {v}" for k, v in lib.items()),
             f"- bundle: `{result['bundle']}` sha256 {result['bundle_sha256'][:16]}…, stage precisions "
             f"{result.get('precision')}", f"- threads: {result['threads']}", f"- command: `{result['command']}`",
             f"- speech: {result['settings'].get('clips_source')}", "", "## Steps (per call, ms)", "", head]
    for step, stats in result.get("stages", {}).items():
        key = f"stages.{step}"
        rt_step = next((f["step"] for k, f in over.items() if k == key), None)
        lines.append(_row(step, stats, budgets.get(rt_step or step), key in over))
    if result.get("end_to_end"):
        lines += ["", "## End to end (real-time stream, no ASR)", "", head,
                  _row("end_to_end (total_after_end)", result["end_to_end"], budgets.get("total_after_end"),
                       "end_to_end" in over)]
        if result.get("speech_end_to_event"):
            lines.append(_row("speech_end_to_event", result["speech_end_to_event"]))
        if result.get("end_to_end_no_speculation"):
            lines.append(_row("end_to_end, no speculation", result["end_to_end_no_speculation"]))
        for step, stats in result.get("end_to_end_steps", {}).items():
            key = f"end_to_end_steps.{step}"
            lines.append(_row(f"  {step}", stats, budgets.get(step), key in over))
    if result.get("hangover"):
        lines += ["", "## VAD hangover: wait vs accuracy", "",
                  "| min_silence_ms | events | clips | split | missed | accuracy | accuracy cost | expected wait ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for h in result["hangover"]:
            lines.append(f"| {h['min_silence_ms']} | {h['events']} | {h['clips']} | {h['clips_split']} | "
                         f"{h['clips_missed']} | {_fmt(h['accuracy'])} | {_fmt(h['accuracy_cost'])} | "
                         f"{_fmt(h.get('expected_wait_ms'))} |")
    if result.get("backends"):
        lines += ["", "## Fusion backends (one utterance, ms)", "",
                  "| backend | stage1 median | stage2 median | stage3 median | fusion median | fusion p95 | speaker median |",
                  "|---|---|---|---|---|---|---|"]
        for name, b in result["backends"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(b[s]["median_ms"]) for s in ("stage1", "stage2", "stage3", "fusion"))
                         + f" | {_fmt(b['fusion']['p95_ms'])} | {_fmt(b['speaker']['median_ms'])} |")
        for name, why in result.get("skipped_backends", {}).items():
            lines.append(f"| {name} | skipped: {why} | | | | | |")
    r = result.get("ratios", {})
    if r:
        lines += ["", "## Ratios", ""]
        for k, v in r.items():
            if k != "definitions":
                lines.append(f"- **{k}** = {_fmt(v)} — {r.get('definitions', {}).get(k, '')}")
    bound = result.get("bound")
    if bound:
        lines += ["", "## The bound (per utterance)", "",
                  "| graph | MFLOP | KB moved | Orin Nano floor ms (dominant) | CPU floor ms (dominant) | measured median ms | measured / CPU floor |",
                  "|---|---|---|---|---|---|---|"]
        for g, row in bound["graphs"].items():
            lines.append(f"| {g} | {row['flops'] / 1e6:.3f} | {row['bytes'] / 1e3:.1f} | {row['orin_nano']['floor_ms']:.4f} "
                         f"({row['orin_nano']['dominant']}) | {row['cpu']['floor_ms']:.4f} ({row['cpu']['dominant']}) | "
                         f"{_fmt(row.get('measured_median_ms'))} | {_fmt(row.get('measured_over_cpu_floor'))} |")
        cpu = bound["machines"]["cpu"]
        lines.append(f"\nCPU peak measured: {cpu['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, {cpu['bytes_per_s'] / 1e9:.1f} GB/s. "
                     f"Orin Nano: {bound['machines']['orin_nano']['note']}.")
    b = result.get("budgets")
    if b:
        lines += ["", f"## Budgets ({b['where']})", "", "| step | current ms | derived from this run ms |", "|---|---|---|"]
        for step in b["current"]:
            lines.append(f"| {step} | {_fmt(b['current'][step])} | {_fmt(b['derived'].get(step))} |")
        flags = result.get("over_budget", [])
        lines.append("\nOver budget (p95 > budget): " + (", ".join(f"{f['step']} ({f['p95_ms']:.1f} > {f['budget_ms']:.0f} ms)"
                                                                   for f in flags) or "none"))
    extra = {k: result[k] for k in ("cold_start", "peak_rss_mb") if k in result}
    if extra:
        lines += ["", "## Cold start and memory", "", "```", json.dumps(extra, indent=2), "```"]
    return "\n".join(lines) + "\n"


def plot_cdfs(samples: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """One latency CDF per step (log-x), all on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))  # more steps than the default 10-colour cycle
    for k, (name, ms) in enumerate(samples.items()):
        x = np.sort(np.asarray(ms, np.float64))
        if x.size:
            ax.step(np.maximum(x, 1e-4), np.arange(1, x.size + 1) / x.size, where="post", label=name,
                    color=colors[k % 20], linestyle=("-", "--")[k // 20 % 2])
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of runs ≤ x")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_backends(backends: dict[str, dict], path: Path) -> Path:
    """Median (bar) and p95 (whisker) of each fusion stage, one group per stage, a bar per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = ("stage1", "stage2", "stage3", "fusion", "speaker")
    names = list(backends)
    fig, ax = plt.subplots(figsize=(9, 5))
    w = 0.8 / max(1, len(names))
    x = np.arange(len(steps))
    for i, n in enumerate(names):
        med = [backends[n][s]["median_ms"] for s in steps]
        p95 = [backends[n][s]["p95_ms"] for s in steps]
        ax.bar(x + i * w, med, w, label=n, yerr=[np.zeros(len(steps)), np.maximum(0, np.subtract(p95, med))], capsize=2)
    ax.set_xticks(x + w * (len(names) - 1) / 2, steps)
    ax.set_yscale("log")
    ax.set_ylabel("ms per utterance (median; whisker p95)")
    ax.set_title("fusion stages by backend, same inputs")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict, samples: dict[str, dict[str, np.ndarray]], out_dir: Path, stem: str = "bench") -> dict:
    """Markdown and PNGs into `out_dir` -> {"markdown": path, "plots": [paths]} (paths as strings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    plots = []
    try:
        import matplotlib  # noqa: F401

        can_plot = True
    except ImportError:
        import warnings

        warnings.warn("matplotlib is not installed: no plots (pip install matplotlib)", stacklevel=2)
        can_plot = False
    if can_plot and samples.get("steps"):
        plots.append(str(plot_cdfs(samples["steps"], out_dir / f"{stem}_cdf_steps.png", "latency CDF per step")))
    if can_plot and samples.get("backends"):
        plots.append(str(plot_cdfs(samples["backends"], out_dir / f"{stem}_cdf_fusion.png",
                                   "fusion (stages 1-3) latency CDF per backend")))
    if can_plot and result.get("backends"):
        plots.append(str(plot_backends(result["backends"], out_dir / f"{stem}_backends.png")))
    outputs = {"markdown": str(md), "plots": plots}
    result["outputs"] = outputs
    md.write_text(markdown(result))
    return outputs
