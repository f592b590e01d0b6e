"""onnxruntime CPU latency of each stage graph, FP32 vs INT8, batch 1 (one utterance).

    python benchmarks/stage_latency.py --bundle runs/bundle --threads 1

Inputs are real (the calibration set, `calibration_data/`), cycled; each graph gets a warm-up
and then many timed runs; reports min/median/p95/p99 in ms with the device, precision and
library versions, and writes benchmarks/results/stage_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the checkout: default data and results paths only


def percentiles(ms: np.ndarray) -> dict:
    return {"min": round(float(ms.min()), 4), "median": round(float(np.median(ms)), 4),
            "p95": round(float(np.percentile(ms, 95)), 4), "p99": round(float(np.percentile(ms, 99)), 4),
            "mean": round(float(ms.mean()), 4), "runs": int(len(ms))}


def main(argv=None) -> int:
    import onnxruntime as ort

    from mlsan_edge.backends.onnxruntime import OrtBackend
    from mlsan_edge.bundle import load_bundle
    from mlsan_edge.backends.stages import GRAPHS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--model", default="student")
    p.add_argument("--calibration", default=str(ROOT / "calibration_data"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage_latency.json"))
    a = p.parse_args(argv)
    b = load_bundle(a.bundle)
    res = {"bundle": str(b.root), "model": a.model, "batch": 1, "threads": a.threads,
           "device": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count(), "note": "shared 2-core dev VM: compare ratios within one run"},
           "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version()},
           "warmup": a.warmup, "graphs": {}}
    for g in GRAPHS:
        with np.load(Path(a.calibration) / f"{g}.npz") as z:
            data = {k: z[k].astype(np.float32) for k in z.files if k != "stream"}
        for precision, role in sorted(b.variants(f"{a.model}.{g}").items()):
            be = OrtBackend(b.path(role), providers=["CPUExecutionProvider"], threads=a.threads, precision=precision)
            n = len(next(iter(data.values())))
            feeds = [{k: data[k][i:i + 1] for k in be.input_names} for i in range(n)]
            for i in range(a.warmup):
                be.run(feeds[i % n])
            ms = np.empty(a.runs)
            for i in range(a.runs):
                t0 = time.perf_counter()
                be.run(feeds[i % n])
                ms[i] = (time.perf_counter() - t0) * 1e3
            res["graphs"].setdefault(g, {})[precision] = percentiles(ms)
            print(g, precision, res["graphs"][g][precision], flush=True)
    tot = {}
    for precision in ("fp32", "int8"):  # a full utterance at that precision (graphs without it run fp32)
        tot[precision] = round(sum(v.get(precision, v["fp32"])["median"] for v in res["graphs"].values()), 4)
    res["utterance_median_ms"] = tot
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(tot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
