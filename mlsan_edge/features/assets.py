"""The model files a front-end uses when its caller names none: those of the default bundle.

`load_runtime`, `mlsan-edge eval` and training pass the files of the bundle they were given
(`Bundle.path(role)`); only a bare `VoiceEncoder()`, `TextEncoder()`, `SileroVAD()` falls back
here. The lookup reads the default bundle's manifest (no hashing: `load_runtime("default")` is
what verifies it), once per bundle folder, so that `bundle.DEFAULT_BUNDLE_DIR` stays the one
place that knows where the default bundle lives.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mlsan_edge import bundle as _bundle

ROLES: tuple[str, ...] = ("voice_encoder", "text_encoder", "tokenizer", "vad")


@functools.lru_cache(maxsize=4)
def _manifest_of(root: Path) -> _bundle.Bundle:
    return _bundle.load_bundle(root, verify=False)


def default_asset(role: str) -> Path:
    """Absolute path of the default bundle's file for `role`.

    Args:
        role: "voice_encoder", "text_encoder", "tokenizer" (the text encoder's tokenizer.json)
            or "vad" (silero VAD ONNX).

    Raises:
        ValueError: unknown role (the valid ones are listed).
        BundleError: the default bundle is missing or its manifest is broken (reinstall).
    """
    if role not in ROLES:
        raise ValueError(f"unknown asset role {role!r}; valid: {', '.join(ROLES)}")
    b = _manifest_of(Path(_bundle.DEFAULT_BUNDLE_DIR))  # read at call time: tests may point it elsewhere
    return b.tokenizer_path if role == "tokenizer" else b.path(role)


__all__ = ["ROLES", "default_asset"]
