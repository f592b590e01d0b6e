"""Streaming VAD: the silero model on real speech, and the segmenter's rules on scripted probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.features.audio import load_audio
from mlsan_edge.runtime.sources import open_audio
from mlsan_edge.features.vad import CHUNK_SAMPLES, Segmenter, SileroVAD, VADConfig, segment

SR = 16_000
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"


def speech_bounds(wav: np.ndarray) -> tuple[float, float]:
    """Truth for clean studio speech: first/last 10 ms frame within 35 dB of the loudest (s)."""
    frames = wav[: len(wav) // 160 * 160].reshape(-1, 160)
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    active = np.where(db > db.max() - 35)[0]
    return active[0] * 0.01, (active[-1] + 1) * 0.01


def join(clips: list[np.ndarray], gap_s: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips separated (and surrounded) by silence, with each clip's speech bounds in stream time."""
    gap = np.zeros(int(gap_s * SR), np.float32)
    parts, truth, t = [gap], [], gap_s
    for c in clips:
        s, e = speech_bounds(c)
        truth.append((t + s, t + e))
        parts += [c, gap]
        t += len(c) / SR + gap_s
    return np.concatenate(parts), truth


class Scripted:
    """A fake VAD returning scripted probabilities, one per chunk."""

    def __init__(self, probs):
        self.probs, self.i = list(probs), 0

    def __call__(self, chunk):
        p = self.probs[self.i] if self.i < len(self.probs) else 0.0
        self.i += 1
        return p

    def reset(self):
        self.i = 0


def run_scripted(probs, **cfg):
    seg = Segmenter(VADConfig(**cfg), vad=Scripted(probs))
    audio = np.arange(len(probs) * CHUNK_SAMPLES, dtype=np.float32)  # sample value = its index
    return seg.feed(audio) + [u for u in [seg.flush()] if u is not None], audio


def test_silero_probabilities_speech_vs_silence():
    vad = SileroVAD()
    wav = load_audio(FIXTURE)
    s, e = speech_bounds(wav)
    probs = np.array([vad(wav[i:i + CHUNK_SAMPLES]) for i in range(0, len(wav) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)])
    t = np.arange(len(probs)) * CHUNK_SAMPLES / SR
    inside = (t > s + 0.2) & (t < e - 0.2)
    outside = (t < s - 0.3) | (t > e + 0.4)
    assert probs[inside].mean() > 0.8 and probs[outside].max() < 0.3
    vad.reset()
    assert max(vad(np.zeros(CHUNK_SAMPLES, np.float32)) for _ in range(30)) < 0.1
    with pytest.raises(ValueError, match="512 samples"):
        vad(np.zeros(480, np.float32))


def test_fixture_twice_gives_two_utterances_at_the_right_times():
    clip = load_audio(FIXTURE)
    wav, truth = join([clip, clip])
    utts = segment(wav)
    assert len(utts) == 2
    for u, (s, e) in zip(utts, truth):
        assert abs(u.start_s - s) < 0.3 and abs(u.end_s - e) < 0.3
        assert u.audio.dtype == np.float32 and len(u.audio) == pytest.approx(u.duration_s * SR, abs=1)
        i = int(round(u.start_s * SR))
        np.testing.assert_array_equal(u.audio, wav[i:i + len(u.audio)])  # the stream's own samples


def test_silence_and_faint_noise_give_nothing():
    assert segment(np.zeros(2 * SR, np.float32)) == []
    noise = (np.random.default_rng(0).standard_normal(2 * SR) * 1e-3).astype(np.float32)
    assert segment(noise) == []


def test_stream_from_a_source_with_times():
    seg, utts = Segmenter(), []
    with open_audio(f"file://{FIXTURE}") as src:
        for chunk in src:
            utts += [u for u in [seg.process(chunk.samples, chunk.t)] if u is not None]
            if seg.in_speech:
                assert seg.partial().shape[0] % CHUNK_SAMPLES == 0  # embeddable while speaking
    utts += [u for u in [seg.flush()] if u is not None]
    s, e = speech_bounds(load_audio(FIXTURE))
    assert len(utts) == 1 and abs(utts[0].start_s - s) < 0.3 and abs(utts[0].end_s - e) < 0.3


def test_max_utterance_forces_a_split():
    utts = segment(load_audio(FIXTURE), VADConfig(max_utterance_s=0.5))
    assert len(utts) >= 2 and any(u.forced_split for u in utts)
    assert all(u.duration_s <= 0.5 + 0.1 + 1e-6 for u in utts)  # max + start padding
    for a, b in zip(utts, utts[1:]):
        assert b.start_s >= a.end_s - 1e-9  # no overlap


def test_segmenter_rules_on_scripted_probabilities():
    c = CHUNK_SAMPLES / SR  # 32 ms
    # 10 silent chunks, 20 speech (640 ms), 20 silent: one utterance, padded 100 ms each side
    (u,), audio = run_scripted([0.0] * 10 + [0.9] * 20 + [0.0] * 20)
    assert u.start_s == pytest.approx(10 * c - 0.1) and u.end_s == pytest.approx(30 * c + 0.1)
    assert u.audio[0] == audio[int(round(u.start_s * SR))]
    # a 160 ms blip is shorter than min_speech (250 ms): dropped
    assert run_scripted([0.0] * 10 + [0.9] * 5 + [0.0] * 20)[0] == []
    # a 192 ms dip (< min_silence 500 ms) does not split; hysteresis: 0.4 (between 0.35 and 0.5) keeps speech
    utts, _ = run_scripted([0.0] * 5 + [0.9] * 10 + [0.1] * 6 + [0.9] * 10 + [0.4] * 30 + [0.0] * 20)
    assert len(utts) == 1 and utts[0].end_s == pytest.approx((5 + 10 + 6 + 10 + 30) * c + 0.1)
    # a 416 ms pause inside a sentence does not split (it did at the old 300 ms); a 608 ms one does
    assert len(run_scripted([0.0] * 5 + [0.9] * 10 + [0.1] * 13 + [0.9] * 10 + [0.0] * 20)[0]) == 1
    assert len(run_scripted([0.0] * 5 + [0.9] * 10 + [0.1] * 19 + [0.9] * 10 + [0.0] * 20)[0]) == 2
    # speech running at the end of the stream is closed by flush()
    (u,), _ = run_scripted([0.0] * 5 + [0.9] * 20)
    assert u.end_s == pytest.approx(25 * c)


def test_settled_is_the_utterance_the_silence_will_close():
    """Once the silence is speech_pad_ms old the utterance's audio is fixed: `settled()` is then
    exactly what the close returns, and None again when speech resumes (runtime/speculation.py)."""
    c = CHUNK_SAMPLES / SR
    # speech, a 6-chunk dip (settles after 4 chunks, then speech resumes), speech, silence
    probs = [0.0] * 5 + [0.9] * 10 + [0.1] * 6 + [0.9] * 10 + [0.0] * 20
    seg = Segmenter(VADConfig(), vad=Scripted(probs))
    audio = np.arange(len(probs) * CHUNK_SAMPLES, dtype=np.float32)
    settled, closed = [], []
    for i in range(len(probs)):
        u = seg.process(audio[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES])
        if u is not None:
            closed.append((i, u))
        settled.append(seg.settled())
    pad = int(np.ceil(0.1 / c))  # chunks until the end padding is in
    assert [i for i, u in enumerate(settled) if u is not None] == \
        [*range(15 + pad - 1, 21), *range(31 + pad - 1, closed[0][0])]
    (i, u), = closed
    for early in settled[31 + pad - 1:i]:
        assert (early.start_s, early.end_s) == (u.start_s, u.end_s) and early.forced_split == u.forced_split
        np.testing.assert_array_equal(early.audio, u.audio)
    assert settled[20].end_s == pytest.approx(15 * c + 0.1) and settled[20].start_s == u.start_s
    assert seg.settled() is None  # closed: nothing open
    # shorter than min_speech: nothing to settle; and flush() closes without end padding: not "settled"
    seg = Segmenter(VADConfig(), vad=Scripted([0.0] * 5 + [0.9] * 5 + [0.0] * 8))
    seg.feed(np.ones(18 * CHUNK_SAMPLES, np.float32))
    assert seg.in_speech and seg.settled() is None


def test_feed_accepts_any_block_length():
    wav = load_audio(FIXTURE)
    whole = segment(wav)
    seg, utts = Segmenter(), []
    for i in range(0, len(wav), 700):
        utts += seg.feed(wav[i:i + 700])
    utts += [u for u in [seg.flush()] if u is not None]
    assert [(u.start_s, u.end_s) for u in utts] == [(u.start_s, u.end_s) for u in whole]


def test_bad_thresholds():
    with pytest.raises(ValueError, match="neg_threshold"):
        Segmenter(VADConfig(threshold=0.3, neg_threshold=0.5), vad=Scripted([]))


def test_three_ravdess_clips_give_three_utterances(shared_data):
    files = sorted((shared_data / "ravdess" / "audio16k" / "Actor_01").glob("*.flac"))
    if len(files) < 3:
        pytest.skip("RAVDESS audio16k/Actor_01 absent")
    wav, truth = join([load_audio(f) for f in files[8:11]])  # calm, normal and strong intensity
    utts = segment(wav)
    assert len(utts) == 3
    for u, (s, e) in zip(utts, truth):
        assert abs(u.start_s - s) < 0.3 and abs(u.end_s - e) < 0.3


def test_speech_span_cuts_the_silence_around_a_sentence():
    from mlsan_edge.features.vad import speech_span

    clip = load_audio(FIXTURE)
    padded = np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(16000, np.float32)])
    span = speech_span(padded)
    utts = segment(padded)
    a, b = round(utts[0].start_s * 16000), round(utts[-1].end_s * 16000)
    np.testing.assert_array_equal(span, padded[a:b])
    s, e = speech_bounds(padded)
    assert a / 16000 <= s + 0.15 and e - 0.15 <= b / 16000  # the speech is kept (VAD onset within 150 ms)
    assert len(span) < len(clip)  # and the silence around it (the fixture's own too) is not
    quiet = np.zeros(32000, np.float32)
    assert speech_span(quiet) is quiet  # no speech found: the recording is kept whole
