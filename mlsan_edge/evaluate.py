"""Speaker-disjoint, causal evaluation. Entry point: `mlsan-edge eval`.

RAVDESS: every clip under `--data`; with `--stream` each actor's clips arrive one at a time in
a fixed seeded shuffled order (without it, in file order) and the speaker profile uses only
that actor's earlier clips — exactly what the device does. MELD: utterances in dialogue order,
speaker profiles built causally over the split.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS, MODALITIES
from mlsan_edge.metrics import plot_confusion, report

log = logging.getLogger(__name__)
DATASETS = ("ravdess", "meld")
STREAM_SEED = 0


def load_model(bundle: str | Path):
    """(model, global stats, metadata, front-end model files) from a bundle ('default' or a
    folder) or a bare training checkpoint (a folder with model.json + model.safetensors).

    The front-end files (`bundle_encoders`) are the bundle's own, or for a checkpoint the ones it
    was trained with (`training_job.checkpoint_encoders`)."""
    from mlsan_edge.bundle import BundleError, check_feature_contract, load_bundle, resolve_bundle_path
    from mlsan_edge.train import load_checkpoint
    from mlsan_edge.training_job import checkpoint_encoders

    path = resolve_bundle_path(bundle)
    if (path / "model.json").exists():  # a checkpoint straight from `mlsan-edge train`
        model, stats, meta = load_checkpoint(path)
        return model, stats, meta, checkpoint_encoders(path, meta)
    try:
        b = load_bundle(path)
    except BundleError as e:
        raise BundleError(f"{bundle} is neither a bundle nor a checkpoint: {e}") from e
    check_feature_contract(b)
    model, stats, meta = load_checkpoint(b.root / "teacher")
    return model, stats, meta, bundle_encoders(b)


def bundle_encoders(b) -> dict[str, Path]:
    """{"text_encoder", "voice_encoder", "vad"} -> the bundle's file, for the roles it has."""
    from mlsan_edge.training_job import ENCODER_ROLES

    return {r: b.path(r) for r in ENCODER_ROLES if r in b.roles}


def evaluation_table(dataset: str, data: str | Path, split: str, encoders: dict, progress: bool = True,
                     actors: list[int] | None = None):
    from mlsan_edge.data.extract import meld_table, ravdess_table

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data}")
    if dataset == "ravdess":
        return ravdess_table(data, encoders.get("text_encoder"), encoders.get("voice_encoder"), actors=actors,
                             progress=progress, vad=encoders.get("vad"))
    if actors:
        raise ValueError("--actors selects RAVDESS actors; MELD has no actor numbers")
    return meld_table(data, split, encoders.get("text_encoder"), progress=progress)


def evaluate(bundle: str | Path, dataset: str, data: str | Path, split: str = "dev", stream: bool = False,
             json_out: str | Path | None = None, seed: int = STREAM_SEED, progress: bool = True,
             details: bool = False, backend: str = "auto", precision: str = "auto", model: str = "auto",
             actors: list[int] | None = None, modalities: tuple[str, ...] = MODALITIES) -> dict:
    """Run the model over a corpus causally and return the metrics dict (also written as JSON,
    with a confusion-matrix PNG beside it, when `json_out` is given).

    backend "torch" runs the bundle's teacher/ weights over whole streams (`train.predict`);
    "onnxruntime"/"tensorrt" run its stage graphs utterance by utterance with the same profile
    replay (`runtime.stages.replay_table`); "auto" picks the most accurate model this machine can
    run: the teacher when torch is installed (and no other precision than fp32 was asked for),
    else the bundle's student graphs."""
    from mlsan_edge.data.replay import stream_order

    if dataset == "clips":  # the offline side never imports the runtime, which runs them
        raise ValueError("clip lists run through the device path: mlsan_edge.runtime.clip_eval.evaluate_clips "
                         "(`mlsan-edge eval --dataset clips --data LIST.csv`)")
    backend, precision, stages = _backend_choice(bundle, backend, precision, model)
    if stages is None:
        from mlsan_edge.train import predict

        net, stats, meta, enc = load_model(bundle)
    else:
        from mlsan_edge.data.replay import replay_table

        meta = {"model": {"name": stages.model}}
        enc = bundle_encoders(stages.bundle)
    table = hide_modalities(evaluation_table(dataset, data, split, enc, progress, actors), modalities)
    shuffle = set(np.unique(table.group).tolist()) if (dataset == "ravdess" and stream) else None
    order = stream_order(table, shuffle_groups=shuffle, seed=seed)
    out = predict(net, table, order, stats) if stages is None else replay_table(stages, table, order)
    pred = out["probs"].argmax(1)
    res = report(table.label, pred, EMOTIONS)
    present = np.array([[table.mask_text[i], table.mask_audio[i], table.mask_visual[i]] for i in range(len(table))])
    res.update(dataset=dataset, split=split if dataset == "meld" else "all", stream=bool(stream), seed=seed,
               bundle=str(bundle), model=meta["model"]["name"], backend=backend,
               precision=precision if stages is None else dict(stages.precisions),
               speakers=int(len(np.unique(table.speaker))), modalities=list(modalities),
               **({"actors": sorted(actors)} if actors else {}),
               mean_trust={m: round(float(out["trust"][present[:, i], i].mean()), 3) if present[:, i].any() else None
                           for i, m in enumerate(("text", "audio", "visual"))})
    if details:  # one record per utterance, in stream order
        res["predictions"] = [
            {"row": int(i), "speaker": str(table.speaker[i]), "true": EMOTIONS[table.label[i]],
             "emotion": EMOTIONS[pred[i]], "p": round(float(out["probs"][i, pred[i]]), 4),
             "trust": dict(zip(("text", "audio", "visual"), map(lambda x: round(float(x), 3), out["trust"][i])))}
            for i in order]
    if json_out:
        json_out = Path(json_out)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        png = json_out.with_suffix(".confusion.png")
        try:
            plot_confusion(res["confusion"], EMOTIONS, png,
                           f"{dataset} {res['split']}{' stream' if stream else ''}: acc {res['accuracy']:.1f}%, "
                           f"wF1 {res['weighted_f1']:.1f}")
            res["confusion_png"] = str(png)
        except ImportError as e:  # the device install (`mlsan-edge demo --json`) has no matplotlib
            warnings.warn(f"{e}; writing {json_out} without the confusion-matrix PNG", RuntimeWarning, stacklevel=2)
        json_out.write_text(json.dumps(res, indent=2))
    return res


def hide_modalities(table, modalities):
    """The table, changed in place, with every modality outside `modalities` marked absent (zeroed);
    without audio the voice embedding goes too (it is computed from the audio)."""
    unknown = set(modalities) - set(MODALITIES)
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {', '.join(MODALITIES)}; got {list(modalities)}")
    for m in MODALITIES:
        if m not in modalities:
            setattr(table, f"mask_{m}", np.zeros_like(getattr(table, f"mask_{m}")))
            setattr(table, m, np.zeros_like(getattr(table, m)))
    if "audio" not in modalities:
        table.mask_voice, table.voice = np.zeros_like(table.mask_voice), np.zeros_like(table.voice)
    return table


def _backend_choice(bundle, backend: str, precision: str, model: str):
    """(backend, precision, Stages or None for torch) for `evaluate`."""
    from mlsan_edge.bundle import MANIFEST_NAME, check_feature_contract, load_bundle, resolve_bundle_path

    valid = ("auto", "torch", "onnxruntime", "tensorrt")
    if backend not in valid:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(valid)}")
    path = resolve_bundle_path(bundle)
    has_graphs = False
    if (path / MANIFEST_NAME).exists():
        manifest_only = load_bundle(path, verify=False)  # hashed when the chosen backend loads it
        check_feature_contract(manifest_only)  # before any feature is computed: refuse, don't mis-predict
        has_graphs = any(r.endswith(".stage3.fp32") for r in manifest_only.roles)
    # auto: the most accurate model this machine can run. Evaluation is offline work, so with
    # torch installed that is the teacher; on a torch-free device install, the ONNX student.
    import importlib.util

    torch_ok = importlib.util.find_spec("torch") is not None and model in ("auto", "teacher") and (
        precision in ("auto", "fp32")) and (
        (path / "teacher" / "model.safetensors").exists() or (path / "model.json").exists())
    if backend == "torch" or (backend == "auto" and (torch_ok or not has_graphs)):
        if precision not in ("auto", "fp32"):
            raise ValueError(f"the torch backend runs fp32 only, not {precision!r}; use --backend onnxruntime")
        return "torch", "fp32", None
    if not has_graphs:
        raise ValueError(f"{bundle} has no ONNX stage graphs: export a bundle with `mlsan-edge export`, "
                         "or use --backend torch")
    from mlsan_edge.backends.stages import Stages

    stages = Stages(bundle, backend="auto" if backend == "auto" else backend, precision=precision, model=model)
    return stages.backends["stage3"].name, precision, stages
