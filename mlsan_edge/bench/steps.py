"""Micro-benchmarks of each per-utterance step the device runs, on real speech.

    vad                    silero VAD, one 32 ms chunk (512 samples)
    embedding_{1,3,6}s     GE2E voice embedding (ONNX) of a whole 1 / 3 / 6 s utterance
    cache_lookup_{N}       speaker cache with N speakers: identify (no update) + cached parameters
    cache_update_{N}       identify with update + profile update + parameters stored, as the
                           runtime does after each event
    audio_features         utterance_features of a 3 s utterance
    face                   face detection (+ landmarks when a TFLite interpreter is installed), one frame
    text                   sentence encoder (ONNX INT8), one sentence

Each returns (runs,) milliseconds from `mlsan_edge.bench.stats.time_calls`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mlsan_edge.bench.stats import time_calls
from mlsan_edge.config import SAMPLE_RATE

log = logging.getLogger(__name__)

EMBED_SECONDS = (1, 3, 6)
CACHE_SIZES = (10, 1000, 10_000)
CACHE_MAX_RUNS = 50  # an update rebuilds the voice index (O(N)): bound the 10,000-speaker runs


def speech_of(clips, seconds: float) -> np.ndarray:
    """`seconds` of speech: clips joined back to back (no gaps), cut to length."""
    n = int(seconds * SAMPLE_RATE)
    out, have = [], 0
    i = 0
    while have < n:
        a = clips[i % len(clips)].audio
        out.append(a)
        have += a.shape[0]
        i += 1
    return np.concatenate(out)[:n].astype(np.float32)


def bench_vad(clips, runs: int, warmup: int, threads: int, progress=None) -> np.ndarray:
    from mlsan_edge.features.vad import CHUNK_SAMPLES, SileroVAD

    vad = SileroVAD(threads=threads)
    wav = speech_of(clips, 10.0)
    chunks = wav[: wav.shape[0] // CHUNK_SAMPLES * CHUNK_SAMPLES].reshape(-1, CHUNK_SAMPLES)
    return time_calls(lambda i: vad(chunks[i % len(chunks)]), runs, warmup, progress)


def bench_embedding(clips, seconds: float, runs: int, warmup: int, threads: int, encoder=None, progress=None):
    from mlsan_edge.features.voice import VoiceEncoder

    enc = encoder or VoiceEncoder(num_threads=threads)
    wavs = [speech_of(clips[k:] + clips[:k], seconds) for k in range(min(4, len(clips)))]
    return time_calls(lambda i: enc.embed(wavs[i % len(wavs)]), runs, warmup, progress)


def bench_audio_features(clips, runs: int, warmup: int, progress=None) -> np.ndarray:
    from mlsan_edge.features.audio import utterance_features

    wavs = [speech_of(clips[k:] + clips[:k], 3.0) for k in range(min(4, len(clips)))]
    return time_calls(lambda i: utterance_features(wavs[i % len(wavs)]), runs, warmup, progress)


def bench_text(clips, runs: int, warmup: int, threads: int, progress=None) -> np.ndarray:
    from mlsan_edge.features.text import TextEncoder

    enc = TextEncoder(num_threads=threads)
    sentences = sorted({c.sentence for c in clips})
    return time_calls(lambda i: enc.embed(sentences[i % len(sentences)]), runs, warmup, progress)


def bench_face(runs: int, warmup: int, progress=None) -> tuple[np.ndarray, str]:
    """Per frame: detection (Haar) and, with a TFLite interpreter, Face Mesh landmarks."""
    from mlsan_edge.bench.data import face_image
    from mlsan_edge.runtime.face_tracking import FaceAnalyzer

    img, what = face_image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = FaceAnalyzer("auto")
    what += "; landmarks: " + ("Face Mesh (TFLite)" if fa.has_landmarks else "none (no TFLite interpreter: detection only)")
    return time_calls(lambda i: fa.analyze(i * 0.1, img), runs, warmup, progress), what


# --- speaker cache ------------------------------------------------------------------------------
def filled_cache(n: int, bundle, seed: int = 0):
    """An in-memory `SpeakerCache` holding `n` speakers (random GE2E-like voices; one real profile).

    Filled through the cache's own export/import format, which re-indexes once (enrolling one
    by one re-indexes per speaker: minutes at 10,000). The format's header is taken from a real
    `export()`, so this follows the cache's format wherever it is defined.
    """
    from mlsan_edge.config import TEXT_DIM, VISUAL_DIM
    from mlsan_edge.features.audio import AUDIO_DIM
    from mlsan_edge.profile import SpeakerProfile
    from mlsan_edge.runtime.load import bundle_voice_scorer, has_voice_scorer
    from mlsan_edge.runtime.speakers import SpeakerCache

    rng = np.random.default_rng(seed)
    dims = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
    rows = []
    for i in range(n):
        p = SpeakerProfile({})  # voice only: what lookup and re-indexing touch
        p.update({}, voice=np.abs(rng.standard_normal(256)))
        rows.append({"id": i + 1, "name": None, "profile": p.to_dict(), "first_seen": 0.0, "last_seen": 0.0,
                     "utterances": 1})
    scorer = bundle_voice_scorer(bundle) if has_voice_scorer(bundle) else None
    cache = SpeakerCache(":memory:", dims=dims, scorer=scorer, max_speakers=n + 10, auto_merge=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speakers.json"
        cache.export(path)  # empty: its header
        doc = json.loads(path.read_text())
        doc["speakers"] = rows
        path.write_text(json.dumps(doc))
        cache.import_(path)
    return cache


def bench_cache(n: int, bundle, voices: np.ndarray, features: dict, runs: int, warmup: int,
                progress=None) -> dict[str, np.ndarray]:
    """Lookup and update with `n` speakers known, for real voices (the first becomes a speaker).

    Args:
        voices: (k, 256) real voice embeddings of one speaker.
        features: {"audio": (A,), "text": (T,), "visual": None} of one utterance.
    """
    cache = filled_cache(n, bundle)
    sid = cache.identify(voices[0]).speaker_id
    blob = b"\0" * 4096  # the size of a student's FiLM/gate parameters (np.savez)
    cache.put_params(sid, blob, cache.profile_version(sid))
    runs, warmup = min(runs, CACHE_MAX_RUNS if n >= 10_000 else runs), min(warmup, 5 if n >= 10_000 else warmup)

    def lookup(i):
        m = cache.identify(voices[i % len(voices)], update=False)
        cache.get_params(m.speaker_id) if m.speaker_id is not None else None

    def update(i):
        m = cache.identify(voices[i % len(voices)], update=True)
        cache.update_profile(m.speaker_id, features)
        cache.put_params(m.speaker_id, blob, cache.profile_version(m.speaker_id))

    out = {"lookup": time_calls(lookup, runs, warmup, progress), "update": time_calls(update, runs, warmup, progress)}
    cache.close()
    return out
