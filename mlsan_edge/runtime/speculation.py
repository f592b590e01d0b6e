"""Work on an utterance started during the VAD hangover, used when the VAD closes it.

The VAD closes an utterance only after `VADConfig.min_silence_ms` (500 ms) of silence, but the
utterance's audio ends `speech_pad_ms` (100 ms) after its speech: from then on it is fixed
(`Segmenter.settled()`) while the VAD waits out the rest of the hangover. `UtteranceSegmenter`
(step.py) then starts what does not depend on anything later:

    voice tail       the last voice partials (`StreamingVoiceEmbedder.embed`), on the VAD thread
    audio features   `utterance_features`, on the pipeline's feature threads
    text             the text and its embedding, on the feature threads, when the text source can
                     tell it from the utterance alone (`TextSource.pure`: timed segments, or a
                     transcriber marked `fn.pure = True`); a list of lines is never asked early

When the VAD closes the utterance, the work is used only if the utterance is the one it was done
for (same span, same samples); otherwise (speech resumed, a maximum-length split, the end of the
stream) it is dropped and the usual path runs. Same inputs through the same functions: the event
is the one the non-speculative path gives (tests/test_speculation.py). Its `timings_ms` say what
was left after the end, plus `speculative`: the ms of work done ahead.

The cost: a pause longer than `speech_pad_ms` and shorter than `min_silence_ms` inside a
sentence throws that work away (about 10 ms of CPU). `RuntimeConfig(speculate=False)` turns it off.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Speculation:
    """An utterance's work started before the VAD closed it.

    Attributes:
        start_s, end_s, audio: the utterance it was started for (`vad.Utterance` fields).
        embedding: its voice embedding (None: the audio was silent and embedding failed).
        embed_ms: ms the voice tail took (on the VAD thread).
        features: future of (audio feature vector, ms).
        text: future of (text or None, its embedding or None, ms), or None when the text source
            cannot tell the text ahead.
        source: the `TextSource` the text came from.
    """

    start_s: float
    end_s: float
    audio: np.ndarray
    embedding: np.ndarray | None = None
    embed_ms: float = 0.0
    features: Future | None = None
    text: Future | None = None
    source: object = None

    @classmethod
    def start(cls, pool: Executor, features: Callable[[np.ndarray], np.ndarray], text_encoder: Callable[[], object],
              utt, text_source=None) -> "Speculation":
        """Submit an utterance's audio features (and text, when `text_source.pure`) to `pool`.

        Args:
            pool: the pipeline's feature threads.
            features: audio -> feature vector (`utterance_features`).
            text_encoder: returns the `TextEncoder` (loaded on first use).
            utt: the settled utterance (`Segmenter.settled()`).
            text_source: the stream's `TextSource`, or None.

        Returns:
            The `Speculation`, its voice embedding left for the caller (who owns the voice stream).
        """
        clock = time.perf_counter

        def afeat():
            t = clock()
            return features(utt.audio), (clock() - t) * 1000

        def text():
            t = clock()
            said = text_source(utt.audio, utt.start_s, utt.end_s)
            vec = text_encoder().embed(said) if said else None
            return said, vec, (clock() - t) * 1000

        spec = cls(utt.start_s, utt.end_s, utt.audio, source=text_source)
        spec.features = pool.submit(afeat)
        if text_source is not None and getattr(text_source, "pure", False):
            spec.text = pool.submit(text)
        return spec

    def matches(self, utt) -> bool:
        """Whether `utt` (an `Utterance` or `Job`) is the utterance this work was started for."""
        a = utt.audio
        return (utt.start_s == self.start_s and utt.end_s == self.end_s and a.shape == self.audio.shape
                and np.array_equal(a, self.audio))

    def cancel(self) -> None:
        """Drop the work (what already runs finishes; its result is not used)."""
        for f in (self.features, self.text):
            if f is not None:
                f.cancel()

    def text_for(self, source) -> tuple[str | None, np.ndarray | None] | None:
        """(text, its embedding) as `source` gave it ahead (waits for it); None when it was not asked."""
        if self.text is None or source is not self.source:
            return None
        text, vec, _ = self.text.result()
        return text, vec

    def work_ms(self) -> float:
        """ms of work done ahead: voice tail, audio features and text, of the parts that finished."""
        ms = self.embed_ms
        for f in (self.features, self.text):
            if f is not None and f.done() and not f.cancelled() and f.exception() is None:
                ms += f.result()[-1]
        return ms

