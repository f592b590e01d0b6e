"""The feature contract: the numbers a bundle's networks were trained on, checked against this code.

A bundle's manifest records, under `feature_contract`, the sample rate, STFT and mel settings,
every feature dimension, the feature version and the speaker-profile rule's version
(`config.PROFILE_VERSION`) its networks were trained with. This code
computes features with the constants in `config.py`; a bundle that disagrees would run and
mis-predict, so `load_runtime`, `mlsan-edge eval` and `speakers enroll` refuse it here, naming
the field, both values and what to do.
"""

from __future__ import annotations

import warnings
from typing import Any

from mlsan_edge import config as C


class FeatureContractError(ValueError):
    """A bundle's features are not the ones this mlsan_edge computes."""


def expected_feature_contract() -> dict[str, int]:
    """The numbers of the feature contract as this mlsan_edge computes them (`config.py`).

    A bundle's `feature_contract` holds these (and free-text descriptions, which are not compared).
    """
    return {
        "sample_rate": C.SAMPLE_RATE, "n_fft": C.N_FFT, "win_length": C.WIN_LENGTH, "hop_length": C.HOP_LENGTH,
        "n_mels": C.N_MELS, "n_mfcc": C.N_MFCC, "audio_dim": C.AUDIO_DIM, "text_dim": C.TEXT_DIM,
        "visual_dim": C.VISUAL_DIM, "voice_dim": C.VOICE_DIM, "feature_version": C.FEATURE_VERSION,
        "profile_version": C.PROFILE_VERSION,
    }


def check_feature_contract(bundle: Any, name: str | None = None) -> None:
    """Refuse a bundle whose features are not the ones this code computes.

    Every number of `expected_feature_contract` is compared. A field the bundle does not state
    (bundles written before it existed, e.g. `feature_version`) is a warning, not a refusal: the
    bundle runs, unchecked on that field.

    Args:
        bundle: a loaded Bundle, its Manifest, or the `feature_contract` mapping itself.
        name: how to call the bundle in messages (default: its name and folder).

    Raises:
        FeatureContractError (a ValueError): a field differs; the message names each field, both values
            and what to do.
    """
    if hasattr(bundle, "manifest"):  # a loaded Bundle
        contract, name = bundle.manifest.feature_contract, name or f"{bundle.manifest.name} ({bundle.root})"
    elif hasattr(bundle, "feature_contract"):  # a Manifest
        contract, name = bundle.feature_contract, name or bundle.name
    else:
        contract, name = bundle, name or "bundle"
    expected = expected_feature_contract()
    wrong = [f"feature_contract.{k} is {contract[k]!r} but this mlsan_edge computes {v!r}"
             for k, v in expected.items() if k in contract and contract[k] != v]
    if wrong:
        raise FeatureContractError(f"bundle {name}: {'; '.join(wrong)}; re-export the bundle with this version "
                          "(`mlsan-edge export`) or install the mlsan_edge it was built with")
    missing = [k for k in expected if k not in contract]
    if missing:
        warnings.warn(f"bundle {name}: feature_contract does not state {', '.join(missing)}; running without "
                      f"checking {'it' if len(missing) == 1 else 'them'} (re-export the bundle with this version)",
                      stacklevel=2)
