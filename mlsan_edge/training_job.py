"""`mlsan-edge train`: load both corpora through the device's front-ends, fit, save a checkpoint."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def encoder_paths(text_encoder: str | Path | None = None) -> dict[str, Path]:
    """The encoders training uses: the default bundle's unless told otherwise."""
    from mlsan_edge.features.text import DEFAULT_ONNX as TEXT_ONNX
    from mlsan_edge.features.voice import DEFAULT_ONNX as VOICE_ONNX

    paths = {"text_encoder": Path(text_encoder) if text_encoder else TEXT_ONNX, "voice_encoder": VOICE_ONNX}
    for role, p in paths.items():
        if not p.exists():
            raise FileNotFoundError(f"{role} not found at {p}: reinstall mlsan-edge or pass --text-encoder")
    return paths


def load_training_tables(data: Path, enc: dict[str, Path], actors=None, use_meld=True, use_ravdess=True):
    from mlsan_edge.data.extract import meld_table, ravdess_table

    tables = []
    if use_ravdess:
        tables.append(ravdess_table(data / "ravdess", enc["text_encoder"], enc["voice_encoder"], actors=actors))
    if use_meld:
        tables.append(meld_table(data / "meld", "train", enc["text_encoder"]))
    if not tables:
        raise ValueError("nothing to train on: drop --no-meld or --no-ravdess")
    return tables


def data_meta(train, enc: dict[str, Path]) -> dict:
    """What a checkpoint records of its data and encoders (provenance; the bundle copies it)."""
    from mlsan_edge.data.extract import file_sha

    return {
        "data": {"corpora": train.corpus, "n_utterances": len(train),
                 "ravdess_actors": sorted({int(g) for g, s in zip(train.group, train.speaker)
                                           if str(s).startswith("ravdess")}),
                 "licence": "weights derived from RAVDESS (CC BY-NC-SA 4.0) and MELD (GPL-3.0)"},
        "encoders": {k: str(v) for k, v in enc.items()},
        "encoder_sha256": {k: file_sha(v) for k, v in enc.items()},
    }


def fit_voice_scorer(train):
    """The speaker cache's `VoiceScorer`, fitted on the training table's RAVDESS voices (many
    emotions per speaker is what it learns to ignore); None without RAVDESS actors."""
    from mlsan_edge.features.voice_scorer import VoiceScorer

    rows = train.mask_voice & np.char.startswith(train.speaker.astype(str), "ravdess")
    if len(np.unique(train.speaker[rows])) < 2:
        log.warning("fewer than 2 RAVDESS speakers in the training data: no voice scorer (plain cosine matching)")
        return None
    return VoiceScorer.fit(train.voice[rows], train.speaker[rows])


def run_training(data: Path, out: Path, config: str = "teacher", epochs: int | None = None, seed: int = 0,
                 actors: list[int] | None = None, use_meld: bool = True, use_ravdess: bool = True,
                 text_encoder: str | Path | None = None, ensemble: int | None = None) -> dict:
    from mlsan_edge.train import concat_tables, fit, model_config, save_checkpoint, train_config

    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data} (expected ravdess/ and meld/ as in ../shared/data)")
    enc = encoder_paths(text_encoder)
    train = concat_tables(load_training_tables(data, enc, actors, use_meld, use_ravdess))
    tc = train_config(config, seed=seed, **({} if epochs is None else {"epochs": epochs}),
                      **({} if ensemble is None else {"ensemble": ensemble}))
    mc = model_config(config)
    model, stats, hist = fit(train, mc, tc)
    meta = {"train": asdict(tc), "history": hist, "n_params": model.n_params(), **data_meta(train, enc)}
    save_checkpoint(out, model, stats, meta)
    scorer = fit_voice_scorer(train)
    if scorer is not None:
        scorer.save(Path(out) / "voice_scorer.npz")
    log.info("wrote %s (%d parameters, %.0f s)", out, model.n_params(), hist["train_seconds"])
    return {"checkpoint": str(out), "n_params": model.n_params(), "train_seconds": hist["train_seconds"],
            "final_loss": round(hist["loss"][-1], 4)}
