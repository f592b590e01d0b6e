"""The runtime session: event fields, one history per conversation, cached speaker parameters,
bounded queues, budgets, camera failure, thread safety, torch-free import; end to end on a real
clip when the bundle has stage graphs."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from fake_stages import FakeStages
from mlsan_edge.config import EMOTIONS, TEXT_DIM, VISUAL_DIM
from mlsan_edge.features.audio import AUDIO_DIM
from mlsan_edge.runtime.budgets import BudgetTracker, Budgets
from mlsan_edge.runtime.events import STEPS
from mlsan_edge.runtime.load import load_runtime
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.queues import DropOldestQueue
from mlsan_edge.runtime.session import Runtime
from mlsan_edge.runtime.text_source import TextSource
import soundfile as sf
from mlsan_edge.runtime.speakers import SpeakerCache

FIELDS = ("start_s", "end_s", "speaker_id", "speaker_name", "speaker_similarity", "emotion", "probs", "trust",
          "modalities", "timings_ms", "over_budget", "face_used", "degraded")
DIMS = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
CLIP = SHARED_DATA / "talking" / "cremad_1001_6emotions_13s.mp4"
SPEECH = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"  # speech at 0.96-2.47 s


def speech() -> np.ndarray:
    return sf.read(SPEECH, dtype="float32")[0][int(0.9 * 16000):int(2.55 * 16000)]


def speech_stream(tmp_path, n: int, gain=(1.0,)) -> tuple[str, list]:
    """n copies of the fixture's speech separated by 1 s of silence: (file URI, [(start_s, end_s)])."""
    s, gap = speech(), np.zeros(16000, np.float32)
    parts, truth, t = [gap], [], 1.0
    for i in range(n):
        parts += [s * gain[i % len(gain)], gap]
        truth.append((t, t + len(s) / 16000))
        t += len(s) / 16000 + 1.0
    path = tmp_path / f"stream{n}.wav"
    sf.write(path, np.concatenate(parts), 16000)
    return f"file://{path}", truth


def make_runtime(stages=None, config=RuntimeConfig(face="none"), path=":memory:") -> Runtime:
    return Runtime(stages or FakeStages(), SpeakerCache(path, dims=DIMS), config)


def check_event(d: dict) -> None:
    for f in FIELDS:
        assert f in d, f
    assert set(d["probs"]) == set(EMOTIONS) and abs(sum(d["probs"].values()) - 1) < 1e-3
    assert d["emotion"] == max(d["probs"], key=d["probs"].get)
    assert set(STEPS) <= set(d["timings_ms"])
    assert "audio" in d["modalities"]
    assert d["end_s"] > d["start_s"]


def test_stream_events_and_history(tmp_path):
    stages = FakeStages()
    uri, truth = speech_stream(tmp_path, 3, gain=(1.0, 0.5, 2.0))
    with make_runtime(stages) as rt:
        events = list(rt.stream(audio=uri))
        assert len(events) == len(truth)
        for ev, (a, b) in zip(events, truth):
            check_event(json.loads(ev.to_json()))
            assert ev.start_s <= a + 0.3 and ev.end_s >= b - 0.3
        assert stages.seen_same_prev[0] is False  # a new conversation starts without context
        n = len(stages.seen_same_prev)
        list(rt.stream(audio=uri))
        assert stages.seen_same_prev[n] is False
        assert all(stages.seen_same_prev[1:n])  # one voice throughout
        p = rt.stats()["percentiles"]["total_after_end"]
        assert p["n"] == 2 * len(truth) and p["p50"] <= p["p95"] <= p["p99"]


def test_push_session_params_cached_and_profile_updated():
    utt = speech()
    stages = FakeStages()
    with make_runtime(stages) as rt, rt.session() as s:
        ev = s.process(utt, 16000, text="hello there")
        assert ev.modalities == ["text", "audio"] and ev.text == "hello there"
        # a new speaker: computed for this utterance, then again from the updated profile for the next
        assert stages.calls["speaker_params"] == 2 and not ev.params_cached
        sid = ev.speaker_id
        prof = rt.cache.get_profile(sid)
        assert prof.stats["audio"].count == 1 and prof.stats["text"].count == 1 and prof.latent_count == 1
        assert rt.cache.get_params(sid) is not None  # cached for the profile version after the update
        version = rt.cache.profile_version(sid)
        ev2 = s.process((utt * 32767).astype(np.int16), 16000)  # int16 is scaled, same voice
        assert ev2.speaker_id == sid and ev2.start_s == pytest.approx(ev.end_s)
        assert stages.seen_same_prev == [False, True]
        # the known speaker's utterance used the cached parameters: one computation, after it
        assert ev2.params_cached and stages.calls["speaker_params"] == 3
        assert rt.cache.profile_version(sid) == version + 1 and rt.cache.get_params(sid) is not None
        # a profile changed behind the session's back makes the cached parameters stale
        rt.cache.put_profile(sid, rt.cache.get_profile(sid))
        assert rt.cache.get_params(sid) is None
        ev3 = s.process(utt, 16000)
        assert ev3.speaker_id == sid and not ev3.params_cached


def test_push_session_resamples_and_reports_missing_face():
    utt = speech()
    utt48 = np.repeat(utt, 3)  # crude 48 kHz
    frames = [np.full((120, 160, 3), 128, np.uint8)] * 6
    with make_runtime(config=RuntimeConfig(face="none")) as rt:
        ev = rt.session().process(utt48, 48000, frames=frames)
        assert ev.end_s == pytest.approx(len(utt) / 16000, abs=0.01) and not ev.face_used
    with make_runtime(config=RuntimeConfig()) as rt:
        ev = rt.session().process(utt, 16000, frames=frames)
        assert not ev.face_used and "visual" not in ev.modalities
        assert any("no face" in d for d in ev.degraded)


def test_session_thread_safe_and_callbacks():
    utts = [speech() * g for g in (1.0, 0.7, 1.3, 0.5)]
    got = []
    with make_runtime() as rt:
        rt.add_callback(got.append)
        s = rt.session(on_event=lambda e: None)
        errors = []

        def work(u):
            try:
                s.process(u, 16000)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(u,)) for u in utts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(got) == len(utts)
        starts = sorted(e.start_s for e in got)
        assert all(b > a for a, b in zip(starts, starts[1:]))
    with pytest.raises(RuntimeError):
        rt.session()


def test_drop_oldest_queue_counts():
    q = DropOldestQueue(3)
    for i in range(5):
        q.put(i)
    assert q.dropped == 2 and [q.get(0) for _ in range(3)] == [2, 3, 4]
    q.close()
    with pytest.raises(EOFError):
        q.get(0)


def test_budget_degrade_policy_skips_face_next_time():
    bt = BudgetTracker(Budgets(face=1.0), policy="degrade", patience=2)
    assert bt.record({"face": 5.0}) == ["face"]
    assert not bt.should_skip("face")
    with pytest.warns(RuntimeWarning, match="skipping face"):
        bt.record({"face": 5.0})
    assert bt.should_skip("face") and not bt.should_skip("face")
    assert bt.percentiles()["face"]["n"] == 2
    with pytest.raises(ValueError, match="valid: warn, degrade"):
        BudgetTracker(policy="panic")


def test_overload_live_drops_recorded_waits(tmp_path):
    """A model slower than speech: a paced (live-like) stream drops the oldest pending utterances
    and counts them; a recorded one read as fast as possible waits and loses nothing."""
    uri, truth = speech_stream(tmp_path, 5)
    cfg = RuntimeConfig(face="none", utterance_queue=1)
    with make_runtime(FakeStages(delay_s=0.5), cfg) as rt:
        events = list(rt.stream(audio=uri))
        assert len(events) == len(truth) and events[-1].dropped["utterances"] == 0
    with make_runtime(FakeStages(delay_s=4.0), cfg) as rt:
        events = list(rt.stream(audio=uri + "?realtime=1"))
        assert len(events) < len(truth) and events[-1].dropped["utterances"] >= 1


def test_camera_failure_audio_only_or_stop(tmp_path):
    uri, _ = speech_stream(tmp_path, 1)
    with make_runtime(config=RuntimeConfig()) as rt:
        with pytest.warns(RuntimeWarning, match="audio-only"):
            events = list(rt.stream(audio=uri, video="camera://57"))
        assert events and all("camera failed: audio-only" in e.degraded for e in events)
    with make_runtime(config=RuntimeConfig(on_camera_failure="stop")) as rt:
        with pytest.raises(RuntimeError, match="stopping"):
            list(rt.stream(audio=uri, video="camera://57"))


def test_text_source_forms():
    assert TextSource(None)(None, 0, 1) is None
    lines = TextSource(["a", "", "c"])
    assert [lines(None, 0, 1) for _ in range(4)] == ["a", None, "c", None]
    timed = TextSource([(0.0, 1.0, "x"), (2.0, 3.0, "y")])
    assert timed(None, 2.2, 2.8) == "y" and timed(None, 5, 6) is None


def _bundle_with_stages():
    try:
        from mlsan_edge.backends.stages import Stages

        return Stages("default")
    except Exception as e:  # no bundle, or one without stage graphs
        pytest.skip(f"default bundle has no stage graphs ({e})")


@pytest.mark.slow
@pytest.mark.requires_data
def test_end_to_end_cremad_clip():
    if not CLIP.exists():
        pytest.skip(f"{CLIP} not found")
    stages = _bundle_with_stages()
    uri = f"file://{CLIP}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budget warnings on a loaded CI box
        with Runtime(stages, SpeakerCache(":memory:", dims=DIMS)) as rt:
            events = list(rt.stream(audio=uri, video=uri))
    assert len(events) == 6
    for ev in events:
        check_event(json.loads(ev.to_json()))
        assert ev.face_used and "visual" in ev.modalities


def test_speaker_scoring_choice_is_checked_and_a_missing_scorer_is_explained(tmp_path):
    from types import SimpleNamespace

    from mlsan_edge.runtime.load import bundle_voice_scorer
    from mlsan_edge.features.voice_scorer import SCORER_FILE, VoiceScorer

    with pytest.raises(ValueError, match="unknown speaker_scoring 'plda'"):
        RuntimeConfig(speaker_scoring="plda")
    bare = SimpleNamespace(root=tmp_path, manifest=SimpleNamespace(files={}))
    with pytest.raises(ValueError, match="no voice scorer.*speaker_scoring='cosine'"):
        bundle_voice_scorer(bare)
    rng = np.random.default_rng(0)
    VoiceScorer.fit(rng.normal(size=(20, 8)), np.repeat([0, 1], 10)).save(tmp_path / SCORER_FILE)
    with_scorer = SimpleNamespace(root=tmp_path, manifest=SimpleNamespace(files={SCORER_FILE: {}}))
    assert bundle_voice_scorer(with_scorer).nuisance.shape[1] == 8


@pytest.mark.slow
@pytest.mark.requires_data
def test_end_to_end_grid_six_speakers_with_the_default_speaker_matching():
    """The six-speaker GRID clip through load_runtime (the bundle's voice scorer): every utterance,
    every speaker kept apart, the recurring ones recognised, the face used."""
    clip = SHARED_DATA / "talking" / "grid_multi_6spk_24s.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} not found")
    _bundle_with_stages()
    truth = json.loads(clip.with_suffix(".json").read_text())["segments"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with load_runtime("default") as rt:
            events = list(rt.stream(audio=f"file://{clip}", video=f"file://{clip}"))
    said = [next(s["speaker"] for s in truth if s["start"] <= (e.start_s + e.end_s) / 2 < s["end"]) for e in events]
    assert len(events) == len(truth)
    ids = [e.speaker_id for e in events]
    pairs = [(a, b) for a in range(len(ids)) for b in range(a + 1, len(ids))]
    assert all((ids[a] == ids[b]) == (said[a] == said[b]) for a, b in pairs), (ids, said)
    assert all(e.face_used for e in events)


@pytest.mark.slow
@pytest.mark.requires_data
def test_person_identity_acceptance_seven_persons_from_grid_and_cremad(tmp_path):
    """Issue #10: every shared GRID sentence and the six CREMA-D 1001 emotions, shuffled (seed 0),
    1 s gaps, audio + video, fresh cache: exactly 7 persons, purity and coverage >= 0.95."""
    from conftest import load_script
    from mlsan_edge.runtime.face_identity import available

    if not available():
        pytest.skip("face identity needs mlsan-edge[face-id]")
    pi = load_script("person_identity")
    items = pi.clips(SHARED_DATA / "talking")
    if len(items) != 19:
        pytest.skip("the shared GRID/CREMA-D clips are not all there")
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    segs = pi.build_stream(items, tmp_path / "all.mp4")
    r = pi.score(pi.run(tmp_path / "all.mp4", tmp_path / "c.db", "default"), segs)
    assert r["persons"] == 7 and r["purity"] >= 0.95 and r["coverage"] >= 0.95, r
