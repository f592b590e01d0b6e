"""`run_bench`: every measurement of `mlsan-edge bench` in one process, into one result dict.

Order: fusion backends and step micro-benchmarks (quick, CPU-bound), the naive pipeline, the
device pipeline on whole utterances, the real-time stream (wall-clock bound), the hangover
sweep, the bound, cold start in a fresh interpreter. Raw samples stay in memory for the plots;
the JSON holds statistics only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsan_edge.bench.stats import Progress, peak_rss_mb, summarize

log = logging.getLogger(__name__)

PARTS = ("vad", "embedding", "cache", "audio", "face", "text", "fusion", "naive", "pipeline", "e2e", "nospec",
         "hangover", "bound", "cold")


@dataclass
class BenchOptions:
    """What `run_bench` measures and how much (see `mlsan-edge bench --help`)."""

    bundle: str = "default"
    quick: bool = False
    runs: int | None = None  # measured runs per step (default: 200, --quick 50)
    warmup: int | None = None  # untimed runs first (default: 20, --quick 5)
    threads: int = 1  # intra-op threads of every onnxruntime session and of torch
    e2e_clips: int | None = None  # clips in the real-time stream (default: runs + 2; --quick 12)
    hangover_clips: int | None = None  # clips for the hangover sweep (default 48; --quick 16)
    cache_sizes: tuple[int, ...] = (10, 1000, 10_000)
    skip: tuple[str, ...] = ()
    backends: tuple[str, ...] | None = None  # fusion backends to try (None: all)
    data: str | None = None  # RAVDESS audio16k folder
    seed: int = 0
    progress: bool = True
    command: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.skip if s not in PARTS]
        if unknown:
            raise ValueError(f"unknown --skip {unknown}; valid: {', '.join(PARTS)}")
        if self.runs is None:
            self.runs = 50 if self.quick else 200
        if self.warmup is None:
            self.warmup = 5 if self.quick else 20
        if self.e2e_clips is None:
            self.e2e_clips = 12 if self.quick else self.runs + 2
        if self.hangover_clips is None:
            self.hangover_clips = 16 if self.quick else 48
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError(f"need runs >= 1, warmup >= 0, threads >= 1; got {self.runs}, {self.warmup}, {self.threads}")

    def wants(self, part: str) -> bool:
        return part not in self.skip


def _ratio(num: dict | None, den: dict | None) -> float | None:
    if not num or not den or not den.get("median_ms"):
        return None
    return round(num["median_ms"] / den["median_ms"], 2)


def run_bench(o: BenchOptions) -> tuple[dict, dict]:
    """Measure -> (result for JSON, raw samples {"steps": {name: ms}, "backends": {name: ms}})."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download
    from mlsan_edge.bench import steps as st
    from mlsan_edge.bench.data import load_clips
    from mlsan_edge.bundle import load_bundle

    t_start = time.perf_counter()
    bundle = load_bundle(o.bundle)
    clips, source = load_clips(o.data, max(o.e2e_clips, 8), o.seed)
    R, W, T = o.runs, o.warmup, o.threads
    n_plan = (R + W) * (3 + 2 * len(o.cache_sizes) + 6 + 4) + o.e2e_clips * (1 + o.wants("nospec"))
    bar = Progress(n_plan, "bench", o.progress)
    up = bar.update
    samples: dict[str, dict] = {"steps": {}, "backends": {}}
    stages: dict[str, dict] = {}

    def step(name: str, ms: np.ndarray) -> None:
        samples["steps"][name] = ms
        stages[name] = summarize(ms)

    result = {"schema": "mlsan-edge-bench/1", "command": o.command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": {"quick": o.quick, "runs": R, "warmup": W, "e2e_clips": o.e2e_clips,
                           "clips_source": source, "seed": o.seed, "skip": list(o.skip)},
              "threads": {"onnxruntime_intra_op": T, "torch": T, "runtime_feature_threads": 2,
                          "note": "--threads sets every onnxruntime session of the micro-benchmarks and torch; "
                                  "the runtime (end to end) uses its own defaults: 1 thread per encoder, 2 feature threads"},
              "bundle": str(bundle.root), "bundle_sha256": bundle_sha256(bundle)}

    # --- fusion stages on every backend, same inputs --------------------------------------------
    from mlsan_edge.bench.fusion import bench_fusion, stage_inputs
    from mlsan_edge.features.text import TextEncoder
    from mlsan_edge.features.voice import VoiceEncoder

    voice, text = VoiceEncoder(num_threads=T), TextEncoder(num_threads=T)
    inputs = stage_inputs(clips[:8], bundle, text, voice)
    if o.wants("fusion"):
        backends, skipped = bench_fusion(bundle, inputs, R, W, T, o.backends, bar)
        for name, b in backends.items():
            samples["backends"][name] = b.pop("_fusion_ms")
        result["backends"], result["skipped_backends"] = backends, skipped
        main = backends.get("onnxruntime-int8")
        if main:
            for s in ("stage1", "stage2", "stage3", "fusion", "speaker"):
                stages[s] = main[s]
            samples["steps"]["fusion (ort int8)"] = samples["backends"]["onnxruntime-int8"]
            result["precision"] = main["precisions"]

    # --- per-step micro-benchmarks ------------------------------------------------------------------
    if o.wants("vad"):
        bar.describe("vad")
        step("vad", st.bench_vad(clips, R, W, T, up))
    if o.wants("embedding"):
        for s in st.EMBED_SECONDS:
            bar.describe(f"embedding {s}s")
            step(f"embedding_{s}s", st.bench_embedding(clips, s, R, W, T, voice, up))
    if o.wants("cache"):
        voices = np.stack([x.voice for x in inputs[:4]])
        feats = {"audio": inputs[0].audio, "text": inputs[0].text, "visual": None}
        for n in o.cache_sizes:
            bar.describe(f"cache {n}")
            r = st.bench_cache(n, bundle, voices, feats, R, W, up)
            step(f"cache_lookup_{n}", r["lookup"])
            step(f"cache_update_{n}", r["update"])
    if o.wants("audio"):
        bar.describe("audio features")
        step("audio_features", st.bench_audio_features(clips, R, W, up))
    if o.wants("face"):
        bar.describe("face")
        try:
            ms, what = st.bench_face(R, W, up)
            step("face", ms)
            result["face_input"] = what
        except (ImportError, FileNotFoundError) as e:  # no OpenCV here: say so, measure the rest
            result.setdefault("skipped_steps", {})["face"] = f"{type(e).__name__}: {e}"
    if o.wants("text"):
        bar.describe("text")
        step("text", st.bench_text(clips, R, W, T, up))
    result["stages"] = stages

    # --- the naive pipeline and ours on whole utterances -------------------------------------------
    if o.wants("naive"):
        bar.describe("naive pipeline")
        from mlsan_edge.bench.naive import bench_naive

        try:
            result["naive"] = bench_naive(clips, bundle, R, W, T, up)
        except ImportError as e:
            result["naive"] = {"error": str(e)}
    if o.wants("pipeline"):
        bar.describe("device pipeline, whole utterances")
        from mlsan_edge.bench.end_to_end import bench_session

        result["pipeline_whole_utterance"] = bench_session(clips, bundle, R, W, up)

    # --- real time ----------------------------------------------------------------------------------
    result["end_to_end"] = result["speech_end_to_event"] = None
    if o.wants("e2e"):
        bar.describe(f"real-time stream ({o.e2e_clips} clips)")
        from mlsan_edge.bench.end_to_end import bench_end_to_end

        e2e = bench_end_to_end(clips[: o.e2e_clips], bundle, warmup=min(2, max(0, o.e2e_clips - 1)))
        up(o.e2e_clips)
        result["end_to_end"], result["speech_end_to_event"] = e2e.pop("end_to_end"), e2e.pop("speech_end_to_event")
        result["end_to_end_steps"] = e2e.pop("steps")
        result["end_to_end_detail"] = e2e
    result["end_to_end_no_speculation"] = None
    if o.wants("nospec"):  # the same stream with nothing started during the VAD hangover
        bar.describe(f"real-time stream, no speculation ({o.e2e_clips} clips)")
        from mlsan_edge.bench.end_to_end import bench_end_to_end

        e2e = bench_end_to_end(clips[: o.e2e_clips], bundle, warmup=min(2, max(0, o.e2e_clips - 1)), speculate=False)
        up(o.e2e_clips)
        result["end_to_end_no_speculation"] = e2e["end_to_end"]
        result["end_to_end_no_speculation_steps"] = e2e["steps"]
    if o.wants("hangover"):
        bar.describe("hangover sweep")
        from mlsan_edge.bench.end_to_end import hangover_sweep

        hc, _ = load_clips(o.data, o.hangover_clips, o.seed + 1)
        med = result["end_to_end"]["median_ms"] if result["end_to_end"] else None
        result["hangover"] = hangover_sweep(hc, bundle, end_to_end_median_ms=med)
    bar.close()

    result["ratios"] = ratios(result)
    if o.wants("bound"):
        from mlsan_edge.bench.bound import bound_report

        measured = dict(stages)
        result["bound"] = bound_report(bundle, measured, result.get("precision", {}), threads=T)
    if o.wants("cold"):
        from mlsan_edge.bench.end_to_end import cold_start

        result["cold_start"] = cold_start(o.bundle)
    from mlsan_edge.bench.budgets import BUDGETS_LIVE_IN, current_budgets, derive_budgets, over_budget

    result["budgets"] = {"where": BUDGETS_LIVE_IN, "current": current_budgets(), "derived": derive_budgets(result),
                         "rule": "derived = ceil(p99 x 1.5) of this run; flags compare p95 with the current budgets"}
    result["over_budget"] = over_budget(result, result["budgets"]["current"])
    from mlsan_edge.bench.report import library_versions, machine_info

    result["machine"], result["libraries"] = machine_info(), library_versions()
    result["peak_rss_mb"] = peak_rss_mb()
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result, samples


def ratios(result: dict) -> dict:
    """The headline ratios (None where a part was skipped), with what each compares."""
    b = result.get("backends", {})
    naive = (result.get("naive") or {}).get("total")
    whole = (result.get("pipeline_whole_utterance") or {}).get("total")
    out = {
        "fusion_int8_vs_teacher_torch": _ratio((b.get("torch-teacher") or {}).get("fusion"),
                                               (b.get("onnxruntime-int8") or {}).get("fusion")),
        "fusion_int8_vs_student_torch": _ratio((b.get("torch-student") or {}).get("fusion"),
                                               (b.get("onnxruntime-int8") or {}).get("fusion")),
        "pipeline_vs_naive": _ratio(naive, result.get("end_to_end")),
        "pipeline_vs_naive_no_speculation": _ratio(naive, result.get("end_to_end_no_speculation")),
        "pipeline_vs_naive_whole_utterance": _ratio(naive, whole),
    }
    out["definitions"] = {
        "fusion_int8_vs_teacher_torch": "median ms of stages 1-3 for one utterance: PyTorch eager teacher (every "
            "ensemble member) / onnxruntime student at INT8 (stage 1 FP32), same inputs, same run; speaker "
            "parameters cached in both (the device computes them after the event)",
        "fusion_int8_vs_student_torch": "as above against the PyTorch eager student (same network, so the backend alone)",
        "pipeline_vs_naive": "median ms a person waits after the end of an utterance beyond the VAD: the naive "
            "pipeline (resemblyzer + sentence-transformers + PyTorch teacher incl. speaker graph + audio features, "
            "all after the end) / the device pipeline's total_after_end on the real-time stream (voice embedded "
            "while speaking; voice tail, audio features and text started during the VAD hangover), same kind of "
            "clips and sentences",
        "pipeline_vs_naive_no_speculation": "as pipeline_vs_naive, on the same stream with RuntimeConfig(speculate="
            "False): nothing starts before the VAD closes the utterance",
        "pipeline_vs_naive_whole_utterance": "the same naive median / the device pipeline on whole utterances "
            "through Session.process (voice embedded after the end too: no streaming credit)",
    }
    return out


def bundle_sha256(bundle) -> str:
    """sha256 of the bundle's manifest.json, which records the sha256 of every file in it."""
    from mlsan_edge.bundle import sha256_file

    return sha256_file(Path(bundle.root) / "manifest.json")
