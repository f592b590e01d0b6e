"""runtime/speculation.py: work started during the VAD hangover gives the events the
non-speculative path gives, on real speech fed chunk by chunk (`Step`) and through
`Runtime.stream`; a pause that does not end the utterance throws the work away."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fake_stages import FakeStages
from mlsan_edge.features.vad import CHUNK_SAMPLES, Segmenter, VADConfig
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.session import Runtime
from mlsan_edge.runtime.speakers import SpeakerCache
from mlsan_edge.runtime.text_source import TextSource
from test_session import DIMS, speech, speech_stream

SAME = ("start_s", "end_s", "speaker_id", "speaker_name", "speaker_similarity", "voice_similarity", "new_speaker",
        "emotion", "probs", "trust", "modalities", "text", "degraded")


def runtime(speculate: bool) -> Runtime:
    return Runtime(FakeStages(), SpeakerCache(":memory:", dims=DIMS), RuntimeConfig(face="none", speculate=speculate))


def energy_vad(chunk: np.ndarray) -> float:
    """Any sound is speech, digital silence is not: pauses exactly where the test puts them."""
    return float(np.sqrt(np.mean(np.square(chunk))) > 1e-5)


def stepped(wav: np.ndarray, speculate: bool, text=None, vad=None) -> tuple[list, list]:
    """(events, speculations started) of `wav` fed chunk by chunk to a `Step` (`vad`: instead of silero)."""
    wav = np.concatenate([wav, np.zeros(-len(wav) % CHUNK_SAMPLES, np.float32)])
    with runtime(speculate) as rt:
        started = []
        real = rt.pipeline.speculate
        rt.pipeline.speculate = lambda utt, src=None: started.append(real(utt, src)) or started[-1]
        step = rt.step(text=text)
        if vad is not None:
            step.utterances.segmenter = Segmenter(VADConfig(), vad=vad)
        events = [ev for c in wav.reshape(-1, CHUNK_SAMPLES) if (ev := step.step(c)) is not None]
        last = step.flush()
    return events + ([last] if last is not None else []), started


def assert_identical(a, b) -> None:
    """Bit for bit: the same inputs went through the same functions."""
    for f in SAME:
        assert getattr(a, f) == getattr(b, f), f


def test_speculation_gives_the_events_of_the_plain_path(tmp_path):
    uri, truth = speech_stream(tmp_path, 3, gain=(1.0, 0.5, 2.0))
    wav = sf.read(uri[len("file://"):], dtype="float32")[0]
    text = [(a, b, f"sentence {i}") for i, (a, b) in enumerate(truth)]  # timed: asked ahead too
    plain, none_started = stepped(wav, speculate=False, text=text)
    fast, started = stepped(wav, speculate=True, text=text)
    assert none_started == [] and len(started) == len(truth) == len(plain) == len(fast)
    for a, b in zip(plain, fast):
        assert_identical(a, b)
        assert "speculative" not in a.timings_ms and b.timings_ms["speculative"] > 0
        assert a.text is not None and "text" in b.modalities
    # what was left after the end is waiting for work already done (or nearly)
    assert all(s.features.done() and s.text.done() for s in started)


def test_a_pause_inside_the_utterance_drops_the_work():
    """A pause longer than speech_pad_ms (the audio settles) but shorter than min_silence_ms:
    the work started for the first half is dropped, the whole utterance gets one event, as without."""
    s, gap = speech(), np.zeros(16000, np.float32)
    assert energy_vad(s[:CHUNK_SAMPLES]) == 1.0  # the recording's noise floor counts as speech
    pause = np.zeros(int(0.2 * 16000), np.float32)  # settles after 128 ms, resumes before 300 ms
    wav = np.concatenate([gap, s, pause, s, gap])
    plain, _ = stepped(wav, speculate=False, vad=energy_vad)
    fast, started = stepped(wav, speculate=True, vad=energy_vad)
    assert len(plain) == len(fast) == 1 and len(started) == 2  # the pause, then the end
    first, last = started
    assert first.end_s == pytest.approx(1.0 + len(s) / 16000 + 0.1, abs=0.04) and last.end_s == fast[0].end_s
    assert first.features.cancelled() or first.features.done()
    assert_identical(plain[0], fast[0])
    assert fast[0].timings_ms["speculative"] > 0


def test_a_stream_ending_in_the_hangover_drops_the_work():
    """flush() closes without the end padding: not the utterance the work was started for."""
    s, gap = speech(), np.zeros(16000, np.float32)
    wav = np.concatenate([gap, s, np.zeros(int(0.2 * 16000), np.float32)])
    plain, _ = stepped(wav, speculate=False, vad=energy_vad)
    fast, started = stepped(wav, speculate=True, vad=energy_vad)
    assert len(plain) == len(fast) == len(started) == 1 and fast[0].end_s < started[0].end_s - 0.05
    assert_identical(plain[0], fast[0])
    assert "speculative" not in fast[0].timings_ms


def test_matches_needs_the_same_span_and_samples():
    from mlsan_edge.features.vad import Utterance
    from mlsan_edge.runtime.speculation import Speculation

    a = np.arange(4096, dtype=np.float32)
    spec = Speculation(1.0, 1.256, a)
    assert spec.matches(Utterance(1.0, 1.256, a.copy()))
    assert not spec.matches(Utterance(1.0, 1.25, a[:4000]))
    b = a.copy()
    b[-1] += 1
    assert not spec.matches(Utterance(1.0, 1.256, b))


def test_a_list_of_lines_is_not_asked_ahead(tmp_path):
    """Lines are taken in order: asking for one early would give it to the wrong utterance."""
    uri, truth = speech_stream(tmp_path, 2)
    wav = sf.read(uri[len("file://"):], dtype="float32")[0]
    plain, _ = stepped(wav, speculate=False, text=["one", "two"])
    fast, started = stepped(wav, speculate=True, text=["one", "two"])
    assert [e.text for e in fast] == [e.text for e in plain] == ["one", "two"]
    assert all(s.text is None for s in started) and all("speculative" in e.timings_ms for e in fast)


def test_stream_speculates_as_step_does(tmp_path):
    uri, truth = speech_stream(tmp_path, 2)
    text = [(a, b, "hello there") for a, b in truth]
    runs = {}
    for speculate in (False, True):
        with runtime(speculate) as rt:
            runs[speculate] = list(rt.stream(audio=uri, text=text))
    assert len(runs[False]) == len(runs[True]) == 2
    for a, b in zip(runs[False], runs[True]):
        assert_identical(a, b)
        assert "speculative" in b.timings_ms and "speculative" not in a.timings_ms


def test_text_source_purity():
    assert TextSource(None).pure and TextSource([(0.0, 1.0, "hi")]).pure
    assert not TextSource(["one", "two"]).pure and not TextSource("one").pure
    asr = lambda audio, a, b: "hi"  # noqa: E731
    assert not TextSource(asr).pure
    asr.pure = True
    assert TextSource(asr).pure


def test_speculation_can_be_turned_off():
    assert RuntimeConfig().speculate is True
    with pytest.raises(TypeError):
        RuntimeConfig(speculat=False)  # a typo is an error, not a silent default
