"""The synchronous step (`runtime/step.py`) and the per-utterance pipeline (`runtime/pipeline.py`):
a real recording fed chunk by chunk gives the events `Runtime.stream` gives for the same file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fake_stages import FakeStages
from mlsan_edge.features.vad import CHUNK_SAMPLES
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.events import STEPS
from mlsan_edge.runtime.pipeline import Job
from mlsan_edge.runtime.session import Runtime
from mlsan_edge.runtime.speakers import SpeakerCache
from test_session import DIMS, speech, speech_stream

SAME = ("start_s", "end_s", "speaker_id", "speaker_name", "new_speaker", "emotion", "modalities", "face_used", "text")


def runtime() -> Runtime:
    return Runtime(FakeStages(), SpeakerCache(":memory:", dims=DIMS), RuntimeConfig(face="none"))


def chunks(path) -> list[np.ndarray]:
    """The file as 512-sample chunks, the last one zero-padded (as the file source does)."""
    wav = sf.read(path, dtype="float32")[0]
    wav = np.concatenate([wav, np.zeros(-len(wav) % CHUNK_SAMPLES, np.float32)])
    return list(wav.reshape(-1, CHUNK_SAMPLES))


def assert_same(a, b) -> None:
    for f in SAME:
        assert getattr(a, f) == getattr(b, f), f
    assert a.speaker_similarity == pytest.approx(b.speaker_similarity, abs=1e-6) or a.speaker_similarity is None
    for k in a.probs:
        assert a.probs[k] == pytest.approx(b.probs[k], abs=1e-6)
    assert a.trust == pytest.approx(b.trust, abs=1e-6)


def test_step_chunk_by_chunk_gives_the_events_of_stream(tmp_path):
    uri, truth = speech_stream(tmp_path, 3, gain=(1.0, 0.5, 2.0))
    text = ["one", "two", "three"]
    with runtime() as rt:
        streamed = list(rt.stream(audio=uri, text=list(text)))
    got = []
    with runtime() as rt:
        step = rt.step(text=list(text), on_event=got.append)
        stepped = [ev for c in chunks(uri[len("file://"):]) if (ev := step.step(c)) is not None]
        last = step.flush()
        stepped += [last] if last is not None else []
        assert got == stepped
    assert len(stepped) == len(streamed) == len(truth)
    for a, b in zip(stepped, streamed):
        assert_same(a, b)
        assert set(STEPS) <= set(a.timings_ms) and a.dropped == {}
    assert [e.speaker_id for e in stepped] == [stepped[0].speaker_id] * 3  # one voice, one history


def test_flush_closes_the_utterance_open_at_the_end():
    s = speech()[:32 * CHUNK_SAMPLES]  # cut 1 s in, mid-sentence
    wav = np.concatenate([np.zeros(16 * CHUNK_SAMPLES, np.float32), s])
    with runtime() as rt:
        step = rt.step()
        events = [step.step(c) for c in wav.reshape(-1, CHUNK_SAMPLES)]
        assert all(e is None for e in events)  # still speaking when the audio stops
        ev = step.flush()
        assert ev is not None and ev.start_s < 1.0 and ev.end_s == pytest.approx(len(wav) / 16000, abs=0.1)
        assert step.flush() is None


def test_pipeline_process_one_job_and_conversation_history():
    with runtime() as rt:
        pipeline = rt.pipeline
        conv = pipeline.conversation()
        s = speech()
        ev1 = pipeline.process(conv, Job(s, 0.0, len(s) / 16000, t_end=0.0), text_source=None)
        ev2 = pipeline.process(conv, Job(s, 2.0, 2.0 + len(s) / 16000, t_end=0.0, text="hi"))
        assert ev1.new_speaker and not ev2.new_speaker and ev2.speaker_id == ev1.speaker_id
        assert ev2.text == "hi" and ev2.modalities == ["text", "audio"]
        assert rt.stages.seen_same_prev == [False, True] and len(conv.history) == 2
    with pytest.raises(RuntimeError, match="closed"):
        rt.step()


def test_a_short_utterance_does_not_update_the_profile_even_when_a_face_names_the_speaker():
    """Stage 1's statistics are of sentences: under the cache's min_voice_s (a word) the face still
    says who it is, but the profile (and its cached parameters) stay as they were."""
    from mlsan_edge.runtime.face_tracking import FaceObs, FrameFaces

    face = np.random.default_rng(0).standard_normal(128).astype(np.float32) * 0.05

    def frames(start, end):
        ts = np.arange(start, end, 0.04)
        return lambda: ([FrameFaces(float(t), [FaceObs(1, (0, 0, 100, 100), None, 0.0, face, float(start))])
                         for t in ts], 0.0)

    with runtime() as rt:
        p, conv, s = rt.pipeline, rt.pipeline.conversation(), speech()
        word = s[:int(0.6 * 16000)]
        assert len(word) / 16000 < rt.cache.min_voice_s <= len(s) / 16000
        ev = p.process(conv, Job(s, 0.0, len(s) / 16000, t_end=0.0), face_frames=frames(0.0, len(s) / 16000))
        sid, counted = ev.speaker_id, rt.cache.get_profile(ev.speaker_id).stats["audio"].count
        assert sid is not None and ev.identified_by == "face" and counted == 1
        ev = p.process(conv, Job(word, 3.0, 3.6, t_end=0.0), face_frames=frames(3.0, 3.6))
        assert ev.speaker_id == sid and rt.cache.get_profile(sid).stats["audio"].count == 1
        ev = p.process(conv, Job(s, 5.0, 5.0 + len(s) / 16000, t_end=0.0), face_frames=frames(5.0, 5.0 + len(s) / 16000))
        assert ev.speaker_id == sid and rt.cache.get_profile(sid).stats["audio"].count == 2


def test_event_confidence_is_the_calibrated_top_probability_and_ood_is_reported():
    from mlsan_edge.confidence import Confidence, temper

    with runtime() as rt:
        raw = rt.pipeline.process(rt.pipeline.conversation(), Job(speech(), 0.0, 1.0, t_end=0.0))
        assert raw.confidence == pytest.approx(max(raw.probs.values())) and raw.ood == {}
        rt.stages.confidence = Confidence(2.0, {"audio": {"p99": 5.0}, "visual": {"p99": 1.0}})
        ev = rt.pipeline.process(rt.pipeline.conversation(), Job(speech(), 2.0, 3.0, t_end=0.0))
        p = np.array([raw.probs[c] for c in rt.pipeline.classes])
        assert [ev.probs[c] for c in rt.pipeline.classes] != pytest.approx(list(p))  # tempered
        assert ev.confidence == pytest.approx(max(ev.probs.values()))
        assert ev.emotion == raw.emotion and set(ev.ood) == {"audio"} and ev.ood["audio"] > 0
        assert '"ood":{"audio":' in ev.to_json() and type(ev).from_json(ev.to_json()).ood == pytest.approx(ev.ood, abs=1e-3)
        # a visual vector far from the training faces is not used, and the event says why
        degraded: list[str] = []
        far = np.full(rt.pipeline.dims["visual"], 50.0, np.float32)
        visual, ood = rt.pipeline._ood(np.zeros(rt.pipeline.dims["audio"], np.float32), far, degraded)
        assert visual is None and ood["visual"] > 1.5 and "unlike the training faces" in degraded[0]
        near = np.zeros(rt.pipeline.dims["visual"], np.float32)
        assert rt.pipeline._ood(None, near, [])[0] is near
    assert temper(p, 2.0).max() < p.max()
