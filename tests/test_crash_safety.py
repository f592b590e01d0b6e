"""Crash safety of the speaker cache (issue #13), fast version of `benchmarks/crash_safety.py`:
20 SIGKILLs of a writing process at random moments, the cache opened and checked after each;
then one process enrolling while another matches voices on the same file."""

from __future__ import annotations

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def crash_safety():
    return load_script("crash_safety")


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_completed_enrolment(crash_safety, tmp_path):
    res = crash_safety.crash_rounds(tmp_path / "crash.db", rounds=20, seed=1, max_delay_s=1.0, log=lambda *_: None)
    assert res["failures"] == [], res["failures"]
    assert res["enrolments_lost"] == 0 and res["enrolments_missing_voices"] == 0
    assert res["acknowledged_enrolments"] > 20  # the kills landed while it was writing


def test_two_processes_share_one_cache_without_losing_writes(crash_safety, tmp_path):
    res = crash_safety.shared_file(tmp_path / "shared.db", n_enrol=15, n_match=30)
    assert res["exit_codes"] == [0, 0], res["errors"]
    assert res["enrolments"] == 15 and res["matched_speakers"] == 30
    assert res["enrolments_lost"] == 0 and res["speakers_lost"] == 0 and res["integrity"] == "ok"
