"""Soak (issue #13), the 2-minute version of `benchmarks/soak.py --minutes 30`: the whole runtime
on a live-paced stream with a persistent speaker cache; RSS growth after warm-up < 5 %, no queue
growth (latency drift is the benchmark's: timings are not asserted in tests); and the same at 3x
real time, where drops are counted in the events."""

from __future__ import annotations

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def soak():
    return load_script("soak")


@pytest.mark.slow
def test_two_minute_soak_at_real_time(soak, tmp_path):
    res = soak.soak(minutes=2.0, speed=1.0, sample_s=1.0, workdir=tmp_path, log=lambda *_: None)
    assert res["events"] >= 30
    assert res["rss_growth_ok"], res["rss_mb"]
    assert res["queue_growth_ok"], res["queues_max"]
    # latency drift is a timing figure: measured by benchmarks/soak.py on a quiet machine, not
    # asserted here (CI machines are shared; a neighbour's load reads as drift)
    assert res["dropped"]["utterances"] == 0 and res["dropped"]["audio_chunks"] == 0


@pytest.mark.slow
def test_one_minute_overload_at_three_times_real_time(soak, tmp_path):
    res = soak.soak(minutes=1.0, speed=3.0, sample_s=1.0, workdir=tmp_path, log=lambda *_: None)
    assert res["events"] >= 40
    assert set(res["dropped"]) >= {"audio_chunks", "utterances", "events"}  # drops are counted in every event
    assert res["queue_growth_ok"] and res["rss_mb"]["max"] < 1.1 * res["rss_mb"]["after_warmup"] + 20
    assert res["latency_ms"]["p99"] < 2000  # bounded: the queues are, so waiting is
