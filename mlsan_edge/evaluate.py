"""Speaker-disjoint, causal evaluation. Entry point: `mlsan-edge eval`.

RAVDESS: every clip under `--data`; with `--stream` each actor's clips arrive one at a time in
a fixed seeded shuffled order (without it, in file order) and the speaker profile uses only
that actor's earlier clips — exactly what the device does. MELD: utterances in dialogue order,
speaker profiles built causally over the split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS
from mlsan_edge.metrics import plot_confusion, report

log = logging.getLogger(__name__)
DATASETS = ("ravdess", "meld")
STREAM_SEED = 0


def load_model(bundle: str | Path):
    """(model, global stats, metadata, encoder paths) from a bundle ('default' or a folder) or a
    bare training checkpoint (a folder with model.json + model.safetensors)."""
    from mlsan_edge.bundle import BundleError, load_bundle, resolve_bundle_path
    from mlsan_edge.train import load_checkpoint

    path = resolve_bundle_path(bundle)
    if (path / "model.json").exists():  # a checkpoint straight from `mlsan-edge train`
        model, stats, meta = load_checkpoint(path)
        enc = meta.get("encoders", {})
        return model, stats, meta, {k: Path(v) if v else None for k, v in enc.items()}
    try:
        b = load_bundle(path)
    except BundleError as e:
        raise BundleError(f"{bundle} is neither a bundle nor a checkpoint: {e}") from e
    model, stats, meta = load_checkpoint(b.root / "teacher")
    enc = {r: b.path(r) for r in ("text_encoder", "voice_encoder") if r in b.roles}
    return model, stats, meta, enc


def evaluation_table(dataset: str, data: str | Path, split: str, encoders: dict, progress: bool = True):
    from mlsan_edge.data.extract import meld_table, ravdess_table

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data}")
    if dataset == "ravdess":
        return ravdess_table(data, encoders.get("text_encoder"), encoders.get("voice_encoder"), progress=progress)
    return meld_table(data, split, encoders.get("text_encoder"), progress=progress)


def evaluate(bundle: str | Path, dataset: str, data: str | Path, split: str = "dev", stream: bool = False,
             json_out: str | Path | None = None, seed: int = STREAM_SEED, progress: bool = True) -> dict:
    """Run the model over a corpus causally and return the metrics dict (also written as JSON,
    with a confusion-matrix PNG beside it, when `json_out` is given)."""
    from mlsan_edge.data.streams import stream_order
    from mlsan_edge.train import predict

    model, stats, meta, enc = load_model(bundle)
    table = evaluation_table(dataset, data, split, enc, progress)
    shuffle = set(np.unique(table.group).tolist()) if (dataset == "ravdess" and stream) else None
    order = stream_order(table, shuffle_groups=shuffle, seed=seed)
    out = predict(model, table, order, stats)
    pred = out["probs"].argmax(1)
    res = report(table.label, pred, EMOTIONS)
    present = np.array([[table.mask_text[i], table.mask_audio[i], table.mask_visual[i]] for i in range(len(table))])
    res.update(dataset=dataset, split=split if dataset == "meld" else "all", stream=bool(stream), seed=seed,
               bundle=str(bundle), model=meta["model"]["name"],
               speakers=int(len(np.unique(table.speaker))),
               mean_trust={m: round(float(out["trust"][present[:, i], i].mean()), 3) if present[:, i].any() else None
                           for i, m in enumerate(("text", "audio", "visual"))})
    if json_out:
        json_out = Path(json_out)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        png = json_out.with_suffix(".confusion.png")
        plot_confusion(res["confusion"], EMOTIONS, png,
                       f"{dataset} {res['split']}{' stream' if stream else ''}: acc {res['accuracy']:.1f}%, "
                       f"wF1 {res['weighted_f1']:.1f}")
        res["confusion_png"] = str(png)
        json_out.write_text(json.dumps(res, indent=2))
    return res
