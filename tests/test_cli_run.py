"""`mlsan-edge run` (with a fake model) and `mlsan-edge speakers`."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import soundfile as sf

from fake_stages import FakeStages
from mlsan_edge import cli
from mlsan_edge.runtime import load as L
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.session import Runtime
from test_session import DIMS, FIELDS, check_event, speech, speech_stream


@pytest.fixture
def fake_runtime(monkeypatch):
    from mlsan_edge.runtime.speakers import SpeakerCache

    def load(bundle="default", backend="auto", cache=None, config=RuntimeConfig(), precision="auto"):
        return Runtime(FakeStages(), SpeakerCache(cache or ":memory:", dims=DIMS), config)
    monkeypatch.setattr(L, "load_runtime", load)


def test_run_writes_one_json_line_per_utterance(tmp_path, fake_runtime, capsys):
    uri, truth = speech_stream(tmp_path, 2)
    out = tmp_path / "events.jsonl"
    text = tmp_path / "text.txt"
    text.write_text("kids are talking by the door\n\n")
    rc = cli.main(["run", "--audio", uri, "--events", str(out), "--cache", str(tmp_path / "c.db"),
                   "--text-from", str(text)])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(truth)
    for r in rows:
        check_event(r)
        assert set(FIELDS) <= set(r)
    assert rows[0]["modalities"] == ["text", "audio"] and rows[1]["modalities"] == ["audio"]
    assert "p95" in capsys.readouterr().err
    assert stat.S_IMODE(os.stat(tmp_path / "c.db").st_mode) == 0o600


def test_run_bad_uri_is_a_clean_error(tmp_path, fake_runtime, capsys):
    rc = cli.main(["run", "--audio", "bogus://x", "--events", str(tmp_path / "e.jsonl")])
    assert rc == 2 and "valid schemes" in capsys.readouterr().err


def test_speakers_enroll_list_rename_merge_forget(tmp_path, capsys):
    wav = tmp_path / "me.wav"
    sf.write(wav, np.concatenate([speech(), np.zeros(8000, np.float32), speech()]), 16000)
    db = str(tmp_path / "spk.db")

    def run(*args):
        assert cli.main(["speakers", *args, "--cache", db, "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    a = run("enroll", "--name", "ada", "--audio", str(wav))
    b = run("enroll", "--name", "bob", "--audio", str(wav))
    assert {s["name"] for s in run("list")} == {"ada", "bob"}
    run("rename", "bob", "robert")
    assert {s["name"] for s in run("list")} == {"ada", "robert"}
    assert run("merge", "ada", "robert")["id"] == a["id"]
    assert [s["name"] for s in run("list")] == ["ada"]
    run("forget", "ada")
    assert run("list") == []
    assert cli.main(["speakers", "rename", "--cache", db]) == 2
    assert b["id"] != a["id"]
