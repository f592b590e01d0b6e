"""`load_runtime`: a bundle and a speaker cache in, a ready `Runtime` out (the device's one entry point)."""

from __future__ import annotations

import logging
from pathlib import Path

from mlsan_edge.config import TEXT_DIM, VISUAL_DIM, VOICE_DIM
from mlsan_edge.runtime.session import Runtime, RuntimeConfig

log = logging.getLogger(__name__)


def load_runtime(bundle: str = "default", backend: str = "auto", cache=None,
                 config: RuntimeConfig = RuntimeConfig(), precision: str = "auto") -> Runtime:
    """Load the stage graphs of a bundle and open (or create) the speaker cache.

    Args:
        bundle: bundle folder or "default".
        backend: "auto", "onnxruntime" or "tensorrt".
        cache: SQLite path of the persistent speaker cache, a `SpeakerCache`, or None for a
            throw-away in-memory cache.
        config: runtime behaviour.
        precision: "auto", "fp32", "fp16" or "int8" (what the bundle offers).
    """
    from mlsan_edge.features.audio import AUDIO_DIM
    from mlsan_edge.runtime.speakers import SpeakerCache
    from mlsan_edge.backends.stages import Stages

    stages = Stages(bundle, backend=backend, precision=precision)
    if int(stages.audio_dim) != AUDIO_DIM:
        raise ValueError(f"bundle {bundle!r} expects {stages.audio_dim}-d audio features but this mlsan_edge computes "
                         f"{AUDIO_DIM}-d ones; re-export the bundle with this version")
    if cache is None or isinstance(cache, (str, Path)):
        dims = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
        scorer = None
        if config.speaker_scoring == "scorer" or (config.speaker_scoring == "auto" and has_voice_scorer(stages.bundle)):
            scorer = bundle_voice_scorer(stages.bundle)
        elif config.speaker_scoring == "auto":
            log.warning("bundle %s has no voice scorer: matching speakers by plain cosine (more splits on "
                        "emotional speech); re-export it with this version", stages.bundle.root)
        cache = SpeakerCache(":memory:" if cache is None else cache, threshold=config.speaker_threshold, dims=dims,
                             voice_dim=VOICE_DIM, scorer=scorer)
    return Runtime(stages, cache, config)


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
