"""Latency benchmarks of the device pipeline (`mlsan-edge bench`; `python -m mlsan_edge.bench`).

    stats       timing loop (warm-up, runs) and statistics (min/median/mean/p90/p95/p99, throughput)
    data        real speech clips cut to their speech; test streams with known ends of speech
    steps       per-step micro-benchmarks: VAD, voice embedding, speaker cache, audio, face, text
    fusion      stages 1-3 per backend (onnxruntime INT8/FP32, PyTorch teacher/student, CUDA, TensorRT)
    naive       resemblyzer + sentence-transformers + the PyTorch teacher: what a user would assemble
    end_to_end  the runtime on a real-time stream; speech end -> event; the VAD hangover sweep; cold start
    bound       FLOPs and bytes per graph, the floors on an Orin Nano and this CPU
    budgets     budgets derived from a run; steps over budget
    report      JSON, markdown, plots
    run, cli    the whole run and the subcommand

Heavy libraries are imported inside functions: `import mlsan_edge.bench` costs nothing.
"""

__all__ = ["run_bench", "BenchOptions", "summarize", "time_calls"]


def __getattr__(name):
    if name in ("run_bench", "BenchOptions"):
        from mlsan_edge.bench import run

        return getattr(run, name)
    if name in ("summarize", "time_calls"):
        from mlsan_edge.bench import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'mlsan_edge.bench' has no attribute {name!r}")
