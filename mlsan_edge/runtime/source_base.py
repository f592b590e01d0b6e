"""What every source shares: the items (AudioChunk, Frame), the Source base class, SourceError.

Both `sources.py` (files, synthetic signals, the URI dispatch) and `capture.py` (microphone and
cameras) build on this module, so the dependency runs one way: sources -> capture -> source_base.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

CHUNK_SAMPLES = 512  # one silero VAD window at 16 kHz (32 ms); the capture block size


class AudioChunk(NamedTuple):
    t: float  # stream time of the first sample, s
    samples: np.ndarray  # (512,) float32 in [-1, 1], 16 kHz mono


class Frame(NamedTuple):
    t: float  # presentation / capture time, s
    image: np.ndarray  # (H, W, 3) uint8 BGR


class SourceError(RuntimeError):
    """A source that cannot be opened or read, with what to do about it."""


class Source:
    """Common behaviour: context manager, iteration until end of stream, close()."""

    uri: str = ""
    eos: bool = False  # True once the stream has ended (files, synth) or the source is closed

    def read(self, timeout: float | None = 1.0):
        """The next item, or None on timeout / end of stream (see `eos`)."""
        raise NotImplementedError

    def close(self) -> None:
        self.eos = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        while not self.eos:
            item = self.read(timeout=1.0)
            if item is not None:
                yield item

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


__all__ = ["CHUNK_SAMPLES", "AudioChunk", "Frame", "Source", "SourceError"]
