"""The feature contract and configuration dataclasses.

Every number that training, export and the device must agree on lives here as a named
constant, with its derivation written out. The bundle manifest records these values and the
runtime refuses a bundle whose contract differs from the code that loads it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

# --- audio contract -------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz; every audio path resamples to this
MEL_WINDOW_MS = 25  # analysis window of the emotion front-end
MEL_HOP_MS = 10
N_FFT = 512  # >= 25 ms * 16 kHz = 400 samples, next power of two
WIN_LENGTH = SAMPLE_RATE * MEL_WINDOW_MS // 1000  # 400 samples
HOP_LENGTH = SAMPLE_RATE * MEL_HOP_MS // 1000  # 160 samples
N_MELS = 64  # log-mel bands of the emotion front-end (not the GE2E front-end, which uses 40)
N_MFCC = 20
N_STAT_EXTRA = 5 + 8 + 6  # energy, spectral shape, pitch summaries (see features.audio.utterance_features)
N_BASE = 2 * N_MFCC + N_MFCC + 2 * N_MELS + N_STAT_EXTRA  # 207: the statistics of feature version 2
# feature version 3 (issue #9) adds 4 * N_MFCC (MFCC p90-p10 and median-mean, mean |delta|,
# delta-delta std), N_MELS (delta log-mel std) and 7 + 4 + 9 (spectral flux/tilt, energy shape,
# voice quality): each group measured in README "Audio front-end"
N_DYNAMIC = 4 * N_MFCC + N_MELS + 7 + 4 + 9  # 164
# feature version 4 (issue #9) computes every statistic on the utterance brought to one reference
# level and gives the level itself as one last value, so only that value carries the microphone gain
N_LEVEL = 1
AUDIO_DIM = N_BASE + N_DYNAMIC + N_LEVEL  # 372: the emotion front-end's output size
# bump when profile.py's update or calibration rule changes: bundles trained on another rule are refused
PROFILE_VERSION = 1
# bump when a front-end changes: bundles and cached tables are refused / rebuilt
# (2: RAVDESS VAD-cut; 3: dynamics and voice-quality statistics; 4: level-normalised statistics + level)
FEATURE_VERSION = 4

# --- classes --------------------------------------------------------------------------------
# MELD's seven emotions, in the order the model's logits use.
EMOTIONS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
N_CLASSES = len(EMOTIONS)

# --- modalities -----------------------------------------------------------------------------
MODALITIES: tuple[str, ...] = ("text", "audio", "visual")

# Dimensions of the per-utterance feature vectors the model consumes.
TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding
VOICE_DIM = 256  # GE2E speaker embedding (resemblyzer)
VISUAL_DIM = 35  # 17 AU intensities + 18 AU presence fractions (OpenFace layout)


def _asdict(obj: Any) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class ModelConfig:
    """Shape and switches of one ML-SAN network. Serialised beside the weights as JSON."""

    name: str = "teacher"
    audio_dim: int = 0  # filled from the audio front-end's output size
    text_dim: int = TEXT_DIM
    visual_dim: int = VISUAL_DIM
    voice_dim: int = VOICE_DIM
    hidden: int = 256  # width of each modality's projection and of the fused latent
    speaker_dim: int = 128  # width of the speaker representation that drives FiLM and gates
    context_window: int = 8  # previous utterances the causal context attends to
    context_heads: int = 4
    context_layers: int = 1
    dropout: float = 0.3
    text_dropout: float = 0.0  # dropout on the standardised text embedding (training only)
    n_classes: int = N_CLASSES
    # ablation switches: each stage can be turned off; `use_speaker=False` removes every
    # speaker input (voice embedding and profile statistics).
    use_stage1: bool = True
    use_stage2: bool = True
    use_stage3: bool = True
    use_speaker: bool = True
    # stage 1's per-speaker standardisation divides by the speaker's spread; this bounds the gain
    # (corpus std / speaker std) it may apply. None: unbounded (checkpoints before issue #9's
    # stage-1 change). A speaker heard only neutral has a narrow spread, and an unbounded gain
    # magnified their sentence-to-sentence differences into emotions (GRID s1: 3 of 7 neutral).
    stage1_max_gain: float | None = None

    def to_json(self) -> str:
        return json.dumps(_asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
