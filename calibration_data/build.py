"""Rebuild the INT8 calibration set: real utterances replayed through the fp32 stage graphs.

    python -m calibration_data.build --data ../shared/data --bundle-or-checkpoint runs/student --out calibration_data/

Deterministic (seeded): the same data and model give byte-identical files. See README.md here.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEED = 0
RAVDESS_ACTORS = (1, 2, 5, 6, 9, 10, 13, 14)  # training actors only (17-20 stay unseen); odd = male, even = female
RAVDESS_PER_ACTOR = 26  # the first clips of each actor's seeded shuffled stream (every emotion occurs)
MELD_DIALOGUES = 14  # dialogues of MELD train, in dialogue order (text only, with context history)
DROP = {"text": 0.5, "visual": 0.3, "audio": 0.15}  # RAVDESS modality patterns, as training's dropout
STORE_DTYPE = np.float16  # halves the files; quantize.py and export/onnx_export.py cast back to float32


def _drop_modalities(t, rows: np.ndarray, rng) -> None:
    """Mark modalities of RAVDESS rows missing (in place), keeping at least one per utterance."""
    for m, p in DROP.items():
        drop = rng.random(len(rows)) < p
        others = sum(getattr(t, f"mask_{o}")[rows] for o in DROP if o != m) > 0
        drop &= others
        getattr(t, f"mask_{m}")[rows[drop]] = False
        getattr(t, m)[rows[drop]] = 0


def select_rows(data: Path, enc: dict):
    """(table, order, stream id per ordered row): RAVDESS actor-stream prefixes + MELD dialogues."""
    from mlsan_edge.data.extract import meld_table, ravdess_table
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.train import concat_tables

    rng = np.random.default_rng(SEED)
    rav = ravdess_table(data / "ravdess", enc["text_encoder"], enc["voice_encoder"], vad=enc.get("vad"))
    rav = rav.subset(np.where(np.isin(rav.group, RAVDESS_ACTORS))[0])
    order = stream_order(rav, shuffle_groups=set(np.unique(rav.group).tolist()), seed=SEED)
    keep = np.concatenate([order[rav.group[order] == g][:RAVDESS_PER_ACTOR] for g in np.unique(rav.group)])
    rav = rav.subset(np.sort(keep))
    _drop_modalities(rav, np.arange(len(rav)), rng)
    meld = meld_table(data / "meld", "train", enc["text_encoder"])
    dialogues = np.unique(meld.group)[:MELD_DIALOGUES]
    meld = meld.subset(np.where(np.isin(meld.group, dialogues))[0])
    table = concat_tables([rav, meld])
    n_rav_groups = len(np.unique(rav.group))
    rav_ids = set(np.unique(table.group)[:n_rav_groups].tolist())
    order = stream_order(table, shuffle_groups=rav_ids, seed=SEED)
    return table, order


def raw_inputs(table, order: np.ndarray, stats) -> dict[str, dict[str, np.ndarray]]:
    """The model-independent inputs of each graph, one row per utterance in stream order."""
    from mlsan_edge.data.replay import profile_inputs

    prof = profile_inputs(table, order, stats)
    g = table.group[order]
    spk = table.speaker[order]
    same = np.zeros(len(order), np.float32)
    same[1:] = (spk[1:] == spk[:-1]) & (g[1:] == g[:-1])
    col = lambda a: a[order].astype(np.float32).reshape(len(order), -1)  # noqa: E731
    return {
        "speaker": {"voice": col(prof["voice"]), "voice_mask": col(prof["mask_voice"]),
                    **{k: col(prof[k]) for k in ("profile_audio_mean", "profile_audio_var", "profile_visual_mean",
                                                 "profile_visual_var", "profile_text_mean", "profile_conf")}},
        "stage1": {"audio": col(table.audio * table.mask_audio[:, None]), "visual": col(table.visual * table.mask_visual[:, None]),
                   "mask_audio": col(table.mask_audio), "mask_visual": col(table.mask_visual)},
        "stage2": {"text": col(table.text * table.mask_text[:, None]),
                   "modality_mask": np.stack([table.mask_text[order], table.mask_audio[order], table.mask_visual[order]], 1).astype(np.float32)},
        "stage3": {"same_speaker_prev": same[:, None], "stream": np.unique(g, return_inverse=True)[1].astype(np.int32)},
    }


def load_model(path: Path):
    """A torch MLSAN and its global stats from a checkpoint, or from a bundle's student/ (else teacher/) weights."""
    from mlsan_edge.train import load_checkpoint

    path = Path(path)
    if (path / "model.json").exists():
        return load_checkpoint(path)
    for sub in ("student", "teacher"):
        if (path / sub / "model.json").exists():
            return load_checkpoint(path / sub)
    raise FileNotFoundError(f"{path} is neither a checkpoint (model.json) nor a bundle with student/ or teacher/ weights")


def build(data: Path, model_path: Path, out: Path) -> dict:
    """Write `out/<graph>.npz` (every input of that graph, first axis = utterance) and `out/build.json`."""
    import torch

    from mlsan_edge.export.onnx_export import derive_inputs
    from mlsan_edge.training_job import checkpoint_encoders, encoder_paths

    torch.set_num_threads(1)
    model, stats, doc = load_model(model_path)
    # the front-ends the model was trained with: its bundle's, or those its checkpoint records
    is_bundle = (Path(model_path) / "manifest.json").exists()
    enc = encoder_paths(bundle=model_path) if is_bundle else {**encoder_paths(), **checkpoint_encoders(model_path)}
    table, order = select_rows(data, enc)
    raw = raw_inputs(table, order, stats)
    full = derive_inputs(model, raw)  # through the fp32 graphs (torch == ONNX within 1e-5, tests/test_stages.py)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for g, arrays in full.items():
        arrays = {k: v.astype(STORE_DTYPE) for k, v in arrays.items()}
        if g == "stage3":
            arrays["stream"] = raw["stage3"]["stream"]
        np.savez_compressed(out / f"{g}.npz", **arrays)
        sizes[g] = (out / f"{g}.npz").stat().st_size
    labels = table.label[order]
    is_rav = np.array([str(s).startswith("ravdess") for s in table.speaker[order]])
    masks = raw["stage2"]["modality_mask"].astype(bool)
    patterns = {}
    for r, m in zip(is_rav, masks):
        key = ("ravdess " if r else "meld ") + "+".join(n for n, on in zip(("text", "audio", "visual"), m) if on)
        patterns[key] = patterns.get(key, 0) + 1
    info = {"n_utterances": int(len(order)), "ravdess": int(is_rav.sum()), "meld_train": int((~is_rav).sum()),
            "emotions": {e: int((labels == i).sum()) for i, e in enumerate(doc["classes"])},
            "modality_patterns": dict(sorted(patterns.items())), "bytes": sizes,
            "model": {"path": str(model_path), "name": doc["model"]["name"]}, "seed": SEED}
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding ravdess/ and meld/")
    p.add_argument("--bundle-or-checkpoint", required=True, help="model whose fp32 graphs produce the intermediate inputs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(build(Path(a.data), Path(a.bundle_or_checkpoint), Path(a.out)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
