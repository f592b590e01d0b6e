"""`mlsan-edge train`: load both corpora through the device's front-ends, fit, save a checkpoint."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


ENCODER_ROLES: tuple[str, ...] = ("text_encoder", "voice_encoder", "vad")  # what features are computed with


def encoder_paths(text_encoder: str | Path | None = None, bundle="default") -> dict[str, Path]:
    """The front-end models training uses: {"text_encoder", "voice_encoder", "vad"} -> file.

    They come from `bundle` (default: the shipped one), so that what training computes is what a
    device running that bundle computes. `text_encoder` replaces the bundle's text encoder (a
    fine-tuned one, `mlsan-edge finetune-text`); its tokenizer is the `tokenizer.json` beside it.
    """
    from mlsan_edge.bundle import load_bundle

    b = load_bundle(bundle, verify=False)  # encoders are hashed into the feature cache keys anyway
    paths = {r: b.path(r) for r in ENCODER_ROLES}
    if text_encoder:
        paths["text_encoder"] = Path(text_encoder)
    for role, p in paths.items():
        if not p.exists():
            raise FileNotFoundError(f"{role} not found at {p}: reinstall mlsan-edge, copy the bundle again"
                                    f"{' or pass --text-encoder' if role == 'text_encoder' else ''}")
    return paths


AUGMENT_COPIES = 1  # channel-augmented copies of every acted clip in the default recipe (issue #9)


def load_training_tables(data: Path, enc: dict[str, Path], actors=None, use_meld=True, use_ravdess=True,
                         use_emospeech: bool = True, augment_copies: int = AUGMENT_COPIES):
    """The training corpora under `data`, as tables: RAVDESS (`actors`, or all), EmoSpeech's
    training speakers (`data.emospeech`: evaluation and calibration users never), MELD train.
    The acted corpora also come as `augment_copies` channel-augmented copies (`data.augment`)."""
    from mlsan_edge.data.extract import emospeech_table, meld_table, ravdess_table

    tables = []
    if use_ravdess:
        tables.append(ravdess_table(data / "ravdess", enc["text_encoder"], enc["voice_encoder"], actors=actors,
                                    vad=enc.get("vad"), augment_copies=augment_copies))
    if use_emospeech:
        if (data / "emospeech").is_dir():
            tables.append(emospeech_table(data / "emospeech", enc["text_encoder"], enc["voice_encoder"],
                                          split="train", vad=enc.get("vad"), augment_copies=augment_copies))
        else:
            log.warning("no %s: training without EmoSpeech (pass --no-emospeech to silence this)",
                        data / "emospeech")
    if use_meld:
        tables.append(meld_table(data / "meld", "train", enc["text_encoder"]))
    if not tables:
        raise ValueError("nothing to train on: drop --no-meld or --no-ravdess")
    return tables


def data_meta(train, enc: dict[str, Path], bundle="default") -> dict:
    """What a checkpoint records of its data and front-end models (provenance; the bundle copies it).

    Encoder paths are stored relative to the bundle they came from (`encoder_bundle`), never as
    this machine's absolute paths; a file from outside that bundle (a fine-tuned text encoder)
    keeps the path it was given. `checkpoint_encoders` turns them back into files.
    """
    from mlsan_edge.bundle import resolve_bundle_path
    from mlsan_edge.data.extract import GROUP_STRIDE, file_sha

    root = resolve_bundle_path(bundle).resolve()

    def portable(p: Path) -> str:
        try:
            return Path(p).resolve().relative_to(root).as_posix()
        except ValueError:
            return str(p)

    return {
        "data": {"corpora": train.corpus, "n_utterances": len(train),
                 "ravdess_actors": sorted({int(g) % GROUP_STRIDE for g, s in zip(train.group, train.speaker)
                                           if str(s).startswith("ravdess")}),
                 "emospeech_speakers": len({str(s).split("~")[0] for s in train.speaker
                                            if str(s).startswith("emospeech:")}),
                 "recipe": {"emospeech": "emospeech" in train.corpus,
                            "augment_copies": int(max((int(str(s).rsplit("~ch", 1)[1]) for s in train.speaker
                                                       if "~ch" in str(s)), default=0))},
                 "licence": "weights derived from RAVDESS and EmoSpeech (CC BY-NC-SA 4.0) and MELD (GPL-3.0)"},
        "encoders": {k: portable(v) for k, v in enc.items()},
        "encoder_bundle": str(bundle),  # as given; `mlsan-edge export` rewrites it to the new bundle's files
        "encoder_sha256": {k: file_sha(v) for k, v in enc.items()},
    }


def checkpoint_encoders(checkpoint: str | Path, doc: dict | None = None, bundle=None) -> dict[str, Path]:
    """The front-end model files a checkpoint was trained with, as files on this machine.

    A relative path is inside a bundle: the one holding the checkpoint (a bundle's teacher/ or
    student/), else `bundle`, else the checkpoint's `encoder_bundle` ("default" when not recorded).
    Each file is checked against the checkpoint's `encoder_sha256`, so a network is never packed
    or evaluated with encoders other than its own.

    Raises:
        FileNotFoundError: a file is gone. ValueError: a file is not the one training used.
    """
    import json

    from mlsan_edge.bundle import MANIFEST_NAME, load_bundle
    from mlsan_edge.data.extract import file_sha

    checkpoint = Path(checkpoint)
    doc = doc if doc is not None else json.loads((checkpoint / "model.json").read_text())
    if (checkpoint.parent / MANIFEST_NAME).exists():
        bundle = checkpoint.parent
    elif bundle is None:
        bundle = doc.get("encoder_bundle", "default")
    root = None
    out = {}
    for role, rel in doc.get("encoders", {}).items():
        if not rel:
            continue
        p = Path(rel)
        if not p.is_absolute():
            root = root or load_bundle(bundle, verify=False).root
            p = root / p
        if not p.exists():
            raise FileNotFoundError(f"the {role} checkpoint {checkpoint} was trained with is gone ({p}); "
                                    "restore it, or pass the bundle it came from")
        want = doc.get("encoder_sha256", {}).get(role)
        if want and file_sha(p) != want:
            raise ValueError(f"{p} is not the {role} checkpoint {checkpoint} was trained with (sha256 "
                             f"{file_sha(p)} vs {want}); pass the bundle it was trained with")
        out[role] = p
    return out


def fit_voice_scorer(train):
    """The speaker cache's `VoiceScorer`, fitted on the training table's RAVDESS voices (many
    emotions per speaker is what it learns to ignore); None without RAVDESS actors."""
    from mlsan_edge.features.voice_scorer import VoiceScorer

    from mlsan_edge.data.table import augmented_rows

    # original RAVDESS voices only: an augmented copy is the same person through another channel
    rows = train.mask_voice & np.char.startswith(train.speaker.astype(str), "ravdess") & ~augmented_rows(train.speaker)
    if len(np.unique(train.speaker[rows])) < 2:
        log.warning("fewer than 2 RAVDESS speakers in the training data: no voice scorer (plain cosine matching)")
        return None
    return VoiceScorer.fit(train.voice[rows], train.speaker[rows])


def run_training(data: Path, out: Path, config: str = "teacher", epochs: int | None = None, seed: int = 0,
                 actors: list[int] | None = None, use_meld: bool = True, use_ravdess: bool = True,
                 use_emospeech: bool = True, augment_copies: int = AUGMENT_COPIES,
                 text_encoder: str | Path | None = None, ensemble: int | None = None, bundle: str | Path = "default",
                 neutral_first: bool = True, stage1_max_gain: float | None = None) -> dict:
    """Train on the corpora under `data`, their features computed with `bundle`'s encoders and VAD.
    `stage1_max_gain` overrides the config's (inf: unbounded)."""
    from mlsan_edge.train import concat_tables, fit, model_config, save_checkpoint, train_config

    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data} (expected ravdess/ and meld/ as in ../shared/data)")
    enc = encoder_paths(text_encoder, bundle)
    train = concat_tables(load_training_tables(data, enc, actors, use_meld, use_ravdess, use_emospeech, augment_copies))
    tc = train_config(config, seed=seed, neutral_first=neutral_first, **({} if epochs is None else {"epochs": epochs}),
                      **({} if ensemble is None else {"ensemble": ensemble}))
    mc = model_config(config) if stage1_max_gain is None else \
        model_config(config, stage1_max_gain=None if math.isinf(stage1_max_gain) else float(stage1_max_gain))
    model, stats, hist = fit(train, mc, tc)
    meta = {"train": asdict(tc), "history": hist, "n_params": model.n_params(), **data_meta(train, enc, bundle)}
    save_checkpoint(out, model, stats, meta)
    write_checkpoint_confidence(out, model, stats, train, data, enc)
    scorer = fit_voice_scorer(train)
    if scorer is not None:
        scorer.save(Path(out) / "voice_scorer.npz")
    log.info("wrote %s (%d parameters, %.0f s)", out, model.n_params(), hist["train_seconds"])
    return {"checkpoint": str(out), "n_params": model.n_params(), "train_seconds": hist["train_seconds"],
            "final_loss": round(hist["loss"][-1], 4)}


def write_checkpoint_confidence(out: Path, model, stats, train, data: Path, enc: dict) -> None:
    """The checkpoint's confidence.json: temperature on held-out speakers, training distances."""
    from mlsan_edge.confidence_fit import calibration_tables, fit_confidence, write_confidence

    actors = data_meta(train, enc)["data"]["ravdess_actors"]
    write_confidence(out, fit_confidence(model, stats, train, calibration_tables(data, enc, actors)))


def recalibrate(checkpoint: Path, data: Path, temperature: float | None = None,
                crossval: list[dict] | None = None) -> dict:
    """Refit `checkpoint`'s confidence.json without retraining (`mlsan-edge calibrate`): the training
    table is rebuilt from the checkpoint's recorded recipe (cached features) and the temperatures
    refitted on held-out speakers (`confidence_fit.fit_confidence`), with cross-validation's held-out
    actors (`crossval`: `confidence_fit.crossval_folds`) when given; without them, the base when a
    face is used is `temperature`, or kept from the existing file."""
    from mlsan_edge.confidence import CONFIDENCE_FILE, Confidence
    from mlsan_edge.train import concat_tables, load_checkpoint

    model, stats, doc = load_checkpoint(checkpoint)
    meta = doc.get("data", {})
    recipe = meta.get("recipe", {})
    enc = checkpoint_encoders(checkpoint, doc)
    train = concat_tables(load_training_tables(
        data, enc, meta.get("ravdess_actors") or None, use_meld="meld" in str(meta.get("corpora", "meld")),
        use_emospeech=recipe.get("emospeech", False), augment_copies=recipe.get("augment_copies", 0)))
    if temperature is None:
        temperature = Confidence.load(Path(checkpoint) / CONFIDENCE_FILE).temperature
    from mlsan_edge.confidence_fit import calibration_tables, fit_confidence, write_confidence

    conf = fit_confidence(model, stats, train, calibration_tables(data, enc, meta.get("ravdess_actors")), temperature,
                          crossval)
    write_confidence(checkpoint, conf)
    return {k: v for k, v in conf.to_dict().items() if k != "distance"}
