"""`mlsan-edge bench`: the argument parser and handler (`add_parser(subparsers)`, `run(args)`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HELP = "latency of every step and backend, end to end, against a naive pipeline, and the bound"
EPILOG = """examples:
  mlsan-edge bench --quick --json b.json              # < 5 min on a 2-core CPU
  mlsan-edge bench --json benchmarks/results/bench_cpu.json --out-dir benchmarks/results
  mlsan-edge bench --skip naive,e2e,hangover --runs 500   # micro-benchmarks only
parts for --skip: vad, embedding, cache, audio, face, text, fusion, naive, pipeline, e2e, nospec, hangover,
  bound, cold"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the main CLI's subparsers."""
    p = subparsers.add_parser("bench", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    p.set_defaults(func=run)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="default", help="bundle folder or 'default'")
    p.add_argument("--quick", action="store_true", help="fewer runs and a shorter stream (under 5 minutes)")
    p.add_argument("--runs", type=int, help="measured runs per step (default 200; --quick 50)")
    p.add_argument("--warmup", type=int, help="untimed runs before measuring (default 20; --quick 5)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of onnxruntime and torch (default 1)")
    p.add_argument("--e2e-clips", type=int, help="clips in the real-time stream (default runs + 2; --quick 12)")
    p.add_argument("--hangover-clips", type=int, help="clips for the VAD hangover sweep (default 48; --quick 16)")
    p.add_argument("--cache-sizes", default="10,1000,10000", help="speaker counts for the cache benchmark")
    p.add_argument("--backends", help="fusion backends to try, comma-separated (default: all present)")
    p.add_argument("--skip", default="", help="parts to leave out, comma-separated (see below)")
    p.add_argument("--data", help="RAVDESS audio16k folder (default ../shared/data/ravdess/audio16k, else the packaged sample)")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--out-dir", help="markdown and PNG plots here (default: beside --json, else bench_out/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0)


def _csv(s: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (s or "").split(",") if x.strip())


def run(a: argparse.Namespace) -> int:
    from mlsan_edge.bench.report import write_outputs
    from mlsan_edge.bench.run import BenchOptions, run_bench

    o = BenchOptions(bundle=a.bundle, quick=a.quick, runs=a.runs, warmup=a.warmup, threads=a.threads,
                     e2e_clips=a.e2e_clips, hangover_clips=a.hangover_clips,
                     cache_sizes=tuple(int(x) for x in _csv(a.cache_sizes)), skip=_csv(a.skip),
                     backends=_csv(a.backends) or None, data=a.data, seed=a.seed, progress=not a.no_progress,
                     command="mlsan-edge bench " + " ".join(shlex.quote(x) for x in sys.argv[1:] if x != "bench"))
    result, samples = run_bench(o)
    out_dir = Path(a.out_dir) if a.out_dir else (Path(a.json).parent if a.json else Path("bench_out"))
    stem = Path(a.json).stem if a.json else "bench"
    write_outputs(result, samples, out_dir, stem)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(Path(result["outputs"]["markdown"]).read_text())
    print(f"wrote {a.json or '(no --json)'}, {result['outputs']['markdown']} and {len(result['outputs']['plots'])} plots",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlsan_edge.bench", description=HELP, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return run(p.parse_args(argv))
