"""features/voice_stream.py: the streaming voice embedding equals the batch one
(`VoiceEncoder.embed`), as its docstring claims: exactly when nothing is reused, and within the
stated tolerance when partials embedded during the utterance are reused.

Fed as `runtime/live.py` feeds it: `update` with the growing open utterance after every audio
chunk, then `finish` with the complete utterance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.features.audio import load_audio
from mlsan_edge.features.voice import VoiceEncoder, partial_slices
from mlsan_edge.features.voice_stream import CHECK_SAMPLES, GAIN_TOLERANCE_DB, StreamingVoiceEmbedder, gain_db

SPEECH = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"  # 3.3 s, speech at 0.96-2.47 s
CHUNK = 512  # samples per audio chunk (32 ms at 16 kHz), as the live sources deliver


@pytest.fixture(scope="module")
def encoder() -> VoiceEncoder:
    return VoiceEncoder(num_threads=1)  # the default bundle's encoder


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(SPEECH)


def stream(emb: StreamingVoiceEmbedder, full: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Feed `full` chunk by chunk as the open utterance grows, then finish it."""
    for n in range(chunk, len(full), chunk):
        emb.update(full[:n])
    return emb.finish(full)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_nothing_reused_is_exactly_embed(encoder, speech):
    emb = StreamingVoiceEmbedder(encoder)
    got = emb.finish(speech)
    assert emb.reused == 0 and emb.computed == len(partial_slices(len(speech)))
    np.testing.assert_array_equal(got, encoder.embed(speech))


def test_at_unit_gain_reused_partials_equal_embed(encoder, speech):
    """Audio already louder than -30 dBFS gets no gain, so nothing about a reused partial differs."""
    full = np.concatenate([speech] * 3)
    full = full * np.float32(1.5 * 10 ** (gain_db(full) / 20))
    assert gain_db(full) == 0.0
    emb = StreamingVoiceEmbedder(encoder)
    got = stream(emb, full)
    n = len(partial_slices(len(full)))
    assert emb.reused >= n - 2 and emb.reused + emb.computed == n  # all but the last one or two
    want = encoder.embed(full)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6) and got.dtype == np.float32


@pytest.mark.parametrize("repeats", [1, 3])
def test_reused_partials_within_the_gain_tolerance_stay_close(encoder, speech, repeats):
    """Real speech that needs gain: partials embedded early used the gain of the audio so far,
    reused when within GAIN_TOLERANCE_DB (1 dB) of the final gain, where the docstring states a
    cosine >= 0.995 to the exact partial; the utterance embedding keeps it."""
    full = np.concatenate([speech] * repeats)
    assert gain_db(full) > GAIN_TOLERANCE_DB  # the interesting case: the gain is not known early
    emb = StreamingVoiceEmbedder(encoder)
    got = stream(emb, full)
    assert emb.reused >= 1 and emb.reused + emb.computed == len(partial_slices(len(full)))
    assert cosine(got, encoder.embed(full)) >= 0.995


def test_a_gain_change_beyond_the_tolerance_recomputes(encoder, speech):
    """A quiet start and a loud end: partials embedded with the quiet start's gain are off by more
    than 1 dB at the end, so they are recomputed and the result is exact again."""
    quiet = speech * np.float32(0.05)
    loud = speech * np.float32(10 ** (gain_db(speech) / 20))
    full = np.concatenate([quiet, quiet, loud, loud])
    emb = StreamingVoiceEmbedder(encoder)
    for n in range(CHUNK, 2 * len(speech), CHUNK):  # updates during the quiet half only
        emb.update(full[:n])
    assert abs(gain_db(full[:2 * len(speech)]) - gain_db(full)) > GAIN_TOLERANCE_DB
    got = emb.finish(full)
    assert emb.reused == 0
    np.testing.assert_array_equal(got, encoder.embed(full))


def test_a_different_utterance_reuses_nothing_and_finish_resets(encoder, speech):
    emb = StreamingVoiceEmbedder(encoder)
    for n in range(CHUNK, len(speech), CHUNK):
        emb.update(speech[:n])
    other = speech[CHECK_SAMPLES:]  # not the audio the partials were embedded from
    np.testing.assert_array_equal(emb.finish(other), encoder.embed(other))
    assert emb.reused == 0
    np.testing.assert_array_equal(emb.finish(speech), encoder.embed(speech))  # nothing left over
