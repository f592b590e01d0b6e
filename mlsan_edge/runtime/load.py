"""`load_runtime`: a bundle and a speaker cache in, a ready `Runtime` out (the device's one entry point).

Every model the runtime runs comes from the bundle it is given (ARCHITECTURE.md invariant 3): the
stage graphs, the voice and text encoders, the VAD and the voice scorer; "default" is just the
bundle that ships. The bundle's feature contract is checked before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from mlsan_edge.config import AUDIO_DIM, TEXT_DIM, VISUAL_DIM, VOICE_DIM
from mlsan_edge.runtime.session import Runtime, RuntimeConfig

log = logging.getLogger(__name__)


def load_runtime(bundle: str = "default", backend: str = "auto", cache=None,
                 config: RuntimeConfig = RuntimeConfig(), precision: str = "auto") -> Runtime:
    """Load a bundle's models and open (or create) the speaker cache.

    Args:
        bundle: bundle folder, "default", or a loaded `Bundle`.
        backend: "auto", "onnxruntime" or "tensorrt".
        cache: SQLite path of the persistent speaker cache, a `SpeakerCache`, or None for a
            throw-away in-memory cache.
        config: runtime behaviour.
        precision: "auto", "fp32", "fp16" or "int8" (what the bundle offers).

    Raises:
        BundleError (a ValueError): the bundle is not intact, or its feature contract differs from
            this code's (the field is named).
    """
    from mlsan_edge.backends.stages import Stages
    from mlsan_edge.bundle import check_feature_contract, load_bundle
    from mlsan_edge.features.text import TextEncoder
    from mlsan_edge.features.voice import VoiceEncoder
    from mlsan_edge.runtime.speakers import SpeakerCache

    b = load_bundle(bundle)  # every file hashed before any is parsed
    check_feature_contract(b)
    # one intra-op thread per stage graph: they are tiny, and a thread pool per graph only competes
    # with capture, VAD and the feature threads for the cores (benchmarks: `mlsan-edge bench`)
    stages = Stages(b, backend=backend, precision=precision, threads=1)
    if int(stages.audio_dim) != AUDIO_DIM:
        raise ValueError(f"bundle {bundle!r} expects {stages.audio_dim}-d audio features but this mlsan_edge computes "
                         f"{AUDIO_DIM}-d ones; re-export the bundle with this version")
    # resolved before the cache opens, so a bundle without them fails with nothing left open
    voice_onnx, text_onnx, tokenizer, vad_onnx = (b.path("voice_encoder"), b.path("text_encoder"),
                                                   b.tokenizer_path, b.path("vad"))
    if cache is None or isinstance(cache, (str, Path)):
        dims = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
        scorer = None
        if config.speaker_scoring == "scorer" or (config.speaker_scoring == "auto" and has_voice_scorer(stages.bundle)):
            scorer = bundle_voice_scorer(stages.bundle)
        elif config.speaker_scoring == "auto":
            log.warning("bundle %s has no voice scorer: matching speakers by plain cosine (more splits on "
                        "emotional speech); re-export it with this version", stages.bundle.root)
        cache = SpeakerCache(":memory:" if cache is None else cache, threshold=config.speaker_threshold, dims=dims,
                             voice_dim=VOICE_DIM, scorer=scorer, retention_days=config.speaker_retention_days,
                             key_file=config.cache_key_file)
    bind = getattr(cache, "bind_params", None)
    if bind is not None:
        bind(params_owner(stages))
    return Runtime(stages, cache, config, voice=VoiceEncoder(voice_onnx, num_threads=1),
                   text_encoder=lambda: TextEncoder(text_onnx, tokenizer, num_threads=1),  # built on first text
                   vad_model=vad_onnx)


def params_owner(stages) -> str:
    """Who computes a speaker's cached parameters: the bundle's content (every file's sha256) and
    the speaker graph's backend and precision. The speaker cache drops parameters of another owner."""
    files = stages.bundle.manifest.files
    digest = hashlib.sha256(json.dumps({k: v.get("sha256") for k, v in files.items()}, sort_keys=True).encode())
    return f"{digest.hexdigest()[:16]}/{stages.backends['speaker'].name}/{stages.precisions['speaker']}"


def has_voice_scorer(bundle) -> bool:
    from mlsan_edge.features.voice_scorer import SCORER_FILE

    return SCORER_FILE in bundle.manifest.files


def bundle_voice_scorer(bundle):
    """The bundle's `VoiceScorer` (speakers/voice_scorer.npz); ValueError when it has none."""
    from mlsan_edge.features.voice_scorer import SCORER_FILE, VoiceScorer

    if SCORER_FILE not in bundle.manifest.files:
        raise ValueError(f"bundle {bundle.root} has no voice scorer ({SCORER_FILE}); use speaker_scoring='cosine' "
                         "or re-export the bundle with this version (`mlsan-edge train` fits the scorer)")
    return VoiceScorer.load(bundle.root / SCORER_FILE)
