"""mlsan_edge.bench: statistics, budgets, report files, and the JSON's shape on a tiny run.

Numbers live in benchmarks (`mlsan-edge bench`), never in timed assertions here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.bench.stats import STAT_KEYS, summarize, time_calls

FIXTURE_DIR = str(Path(__file__).resolve().parent / "fixtures")


def test_summarize_matches_numpy_percentiles():
    x = np.random.default_rng(0).gamma(2.0, 3.0, size=257)
    s = summarize(x)
    assert tuple(s) == STAT_KEYS
    assert s["runs"] == 257
    assert s["min_ms"] == pytest.approx(x.min(), abs=1e-4) and s["max_ms"] == pytest.approx(x.max(), abs=1e-4)
    assert s["median_ms"] == pytest.approx(np.median(x), abs=1e-4)
    assert s["mean_ms"] == pytest.approx(x.mean(), abs=1e-4)
    for q in (90, 95, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(x, q), abs=1e-4)
    assert s["throughput_per_s"] == pytest.approx(1000 / x.mean(), rel=1e-3)
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_time_calls_warms_up_then_measures():
    calls = []
    ms = time_calls(calls.append, runs=5, warmup=2)
    assert calls == [0, 1, 0, 1, 2, 3, 4] and ms.shape == (5,) and np.all(ms >= 0)


def _stats(p95: float) -> dict:
    return summarize(np.full(10, p95))


def test_budgets_flag_steps_over_p95_and_derive_from_p99():
    from mlsan_edge.bench.budgets import derive_budgets, over_budget

    result = {"stages": {"vad": _stats(0.5), "stage2": _stats(7.0), "audio_features": _stats(50.0)},
              "end_to_end_steps": {"audio_features": _stats(20.0)}, "end_to_end": _stats(80.0)}
    flags = {f["step"]: f for f in over_budget(result, {"vad": 10, "stage2": 5, "audio_features": 30,
                                                        "total_after_end": 60})}
    assert set(flags) == {"stage2", "total_after_end"}  # audio_features: the stream's own timing wins
    assert flags["stage2"]["measured_in"] == "stages.stage2"
    derived = derive_budgets(result)
    assert derived["total_after_end"] == 120.0 and derived["audio_features"] == 30.0 and derived["vad"] == 1.0


def test_budget_sources_name_runtime_steps():
    from mlsan_edge.bench.budgets import SOURCES, current_budgets

    assert set(SOURCES) <= set(current_budgets())


def test_report_writes_markdown_and_plots(tmp_path):
    from mlsan_edge.bench.report import write_outputs

    s = _stats(1.0)
    backend = {k: s for k in ("stage1", "stage2", "stage3", "fusion", "speaker")}
    result = {"machine": {"cpu": "test", "cores": 2}, "libraries": {"python": "3"}, "bundle": "b", "bundle_sha256": "0" * 64,
              "threads": {}, "command": "mlsan-edge bench", "settings": {"quick": True}, "stages": {"vad": s},
              "end_to_end": s, "speech_end_to_event": s, "backends": {"a": backend, "b": backend},
              "ratios": {"pipeline_vs_naive": 5.0}, "over_budget": []}
    rng = np.random.default_rng(0)
    out = write_outputs(result, {"steps": {"vad": rng.random(20)}, "backends": {"a": rng.random(20)}}, tmp_path)
    assert len(out["plots"]) == 3
    for p in out["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "bench.md").read_text()
    assert "| vad |" in md and "pipeline_vs_naive" in md


def test_trimmed_stream_spans_follow_construction():
    from mlsan_edge.bench.data import GAP_S, Clip, build_stream

    clips = [Clip("a", np.ones(16000, np.float32), "x", None), Clip("b", np.ones(8000, np.float32), "y", None)]
    wav, spans = build_stream(clips)
    assert spans == [(GAP_S, GAP_S + 1.0), (2 * GAP_S + 1.0, 2 * GAP_S + 1.5)]
    assert wav.shape[0] == int((3 * GAP_S + 1.5) * 16000)


def test_bench_options_reject_unknown_parts():
    from mlsan_edge.bench.run import BenchOptions

    with pytest.raises(ValueError, match="unknown --skip"):
        BenchOptions(skip=("nope",))
    assert BenchOptions(quick=True).runs < BenchOptions().runs


@pytest.mark.slow
@pytest.mark.requires_torch
def test_tiny_run_json_shape(tmp_path, monkeypatch):
    """A tiny run on the test fixture's speech: every section the issue names is there, stats complete."""
    from mlsan_edge.bench.cli import main

    out = tmp_path / "b.json"
    skip = "naive,hangover,cold,pipeline,face"
    rc = main(["--runs", "3", "--warmup", "1", "--e2e-clips", "3", "--cache-sizes", "10", "--skip", skip,
               "--data", FIXTURE_DIR, "--json", str(out), "--no-progress"])
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("stages", "end_to_end", "speech_end_to_event", "ratios", "machine", "libraries", "bundle_sha256",
                "threads", "precision", "bound", "budgets", "over_budget", "backends", "peak_rss_mb"):
        assert key in r, key
    assert len(r["bundle_sha256"]) == 64
    for step in ("vad", "embedding_1s", "embedding_3s", "embedding_6s", "cache_lookup_10", "cache_update_10",
                 "audio_features", "text", "stage1", "stage2", "stage3", "fusion"):
        assert set(r["stages"][step]) == set(STAT_KEYS), step
    assert set(r["end_to_end"]) == set(STAT_KEYS) and r["end_to_end"]["p95_ms"] > 0
    assert set(r["speech_end_to_event"]) == set(STAT_KEYS)
    assert r["ratios"]["fusion_int8_vs_teacher_torch"] > 0  # the value is a benchmark's business
    assert "pipeline_vs_naive" in r["ratios"]
    assert set(r["end_to_end_no_speculation"]) == set(STAT_KEYS) and "pipeline_vs_naive_no_speculation" in r["ratios"]
    assert {"cpu", "cores"} <= set(r["machine"]) and "onnxruntime" in r["libraries"]
    assert len(r["outputs"]["plots"]) == 3 and all(p.endswith(".png") for p in r["outputs"]["plots"])
    assert (tmp_path / "b.md").exists()


def test_import_is_light():
    import subprocess

    code = "import sys, mlsan_edge.bench, mlsan_edge.bench.cli; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_add_parser_registers_bench_subcommand():
    import argparse

    from mlsan_edge.bench.cli import add_parser, run

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["bench", "--quick", "--json", "b.json", "--threads", "2", "--skip", "naive,e2e"])
    assert a.func is run and a.quick and a.threads == 2 and a.skip == "naive,e2e"
