"""Export ML-SAN's per-utterance stage graphs to ONNX, simplify them and check them against torch.

    python -m mlsan_edge.export.onnx_export --checkpoint runs/student --out /tmp/graphs

Each graph of `mlsan_edge.model.stages` (speaker, stage1, stage2, stage3) becomes one ONNX file:
opset 17, the TorchScript exporter (`dynamo=False`: the graphs are small and static, and its
output is what TensorRT 10's parser has been tested on), a dynamic batch axis (1 on the device),
simplified with onnxslim, then run with onnxruntime on fresh random inputs and, when given, on
real ones and compared with torch: max abs diff ≤ 1e-4 or the export fails.

`write_stage_bundle` packs the graphs of one or more models (roles `<model>.<graph>.fp32`, plus
`<model>.<graph>.int8` when quantised) with the global statistics into a bundle; the full bundle
with encoders and VAD is `mlsan_edge.packaging.write_bundle`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOL = 1e-4  # max abs diff, fp32 (issue 3)
MAX_BATCH = 64  # TensorRT optimisation profile: batch 1 on the device, up to this offline
QUANTISED_GRAPHS = ("speaker", "stage2", "stage3")  # the graphs with MatMul/Gemm (stage1 is elementwise)


class ExportError(RuntimeError):
    """An exported graph does not reproduce torch within tolerance."""


def export_graph(module, inputs: list[dict], outputs: list[dict], example: Mapping, path: Path) -> Path:
    """torch.onnx.export one wrapper, then simplify it with onnxslim (in place)."""
    import onnx
    import onnxslim
    import torch

    names_in, names_out = [t["name"] for t in inputs], [t["name"] for t in outputs]
    args = tuple(torch.as_tensor(example[n], dtype=torch.float32) for n in names_in)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes={n: {0: "batch"} for n in names_in + names_out},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    slim = onnxslim.slim(onnx.load(str(path)))
    onnx.checker.check_model(slim)
    onnx.save(slim, str(path))
    return path


def compare(module, onnx_path: Path, feeds: Mapping[str, np.ndarray]) -> float:
    """Max abs difference between torch and onnxruntime (CPU) outputs on `feeds`."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]
    ort_out = sess.run(None, {n: np.ascontiguousarray(feeds[n], np.float32) for n in wanted})
    names = [o.name for o in sess.get_outputs()]
    with torch.no_grad():
        ref = module(*[torch.as_tensor(np.asarray(feeds[n]), dtype=torch.float32) for n in _forward_names(module)])
    ref = dict(zip(_output_names(module), ref))
    return max(float(np.abs(ref[n].numpy() - o).max()) for n, o in zip(names, ort_out))


def _forward_names(module) -> list[str]:
    from mlsan_edge.model.stages import graph_io

    return [t["name"] for t in graph_io(module.m)[module.GRAPH][0]]


def _output_names(module) -> list[str]:
    from mlsan_edge.model.stages import graph_io

    return [t["name"] for t in graph_io(module.m)[module.GRAPH][1]]


def onnx_io(path: Path, specs: list[dict]) -> list[dict]:
    """The specs of the tensors the (simplified) graph really has, in graph order: an ablated
    model's graph may have lost inputs it never reads."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    by_name = {t["name"]: t for t in specs}
    return [by_name[v.name] for v in g.input if v.name in by_name]


def export_stages(model, out_dir: Path, prefix: str, real: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  seed: int = 0) -> dict[str, dict]:
    """Export, simplify and check the four graphs of `model` as `out_dir/<prefix>.<graph>.fp32.onnx`.

    Args:
        real: optional real inputs per graph ({graph: {input: (N, ...)}}), checked as well.

    Returns:
        {graph: {"path", "inputs", "outputs", "max_abs_diff": {"random": x, "real": y}}}.

    Raises:
        ExportError: a graph differs from torch by more than PARITY_TOL.
    """
    from mlsan_edge.model.stages import GRAPHS, graph_io, random_inputs, stage_modules

    model.eval()
    mods, io = stage_modules(model), graph_io(model)
    res = {}
    for g in GRAPHS:
        inputs, outputs = io[g]
        example = {k: v.numpy() for k, v in random_inputs(model, batch=2, seed=seed)[g].items()}
        path = export_graph(mods[g], inputs, outputs, example, out_dir / f"{prefix}.{g}.fp32.onnx")
        diffs = {"random": max(compare(mods[g], path, {k: v.numpy() for k, v in random_inputs(model, b, seed + 1 + b)[g].items()})
                               for b in (1, 5))}
        if real and g in real:
            diffs["real"] = compare(mods[g], path, real[g])
        worst = max(diffs.values())
        if not worst <= PARITY_TOL:
            raise ExportError(f"{path.name}: onnxruntime differs from torch by {worst:.2e} (> {PARITY_TOL}) on {diffs}")
        log.info("exported %s: max abs diff vs torch %s", path.name, {k: f"{v:.1e}" for k, v in diffs.items()})
        res[g] = {"path": path, "inputs": onnx_io(path, inputs), "outputs": outputs, "max_abs_diff": diffs}
    return res


# --- calibration / real inputs -------------------------------------------------------------------
RAW_INPUTS = {  # inputs of each graph that come from the device's features, not from another graph
    "speaker": ("voice", "voice_mask", "profile_audio_mean", "profile_audio_var", "profile_visual_mean",
                "profile_visual_var", "profile_text_mean", "profile_conf"),
    "stage1": ("audio", "visual", "mask_audio", "mask_visual"),
    "stage2": ("text", "modality_mask"),
    "stage3": ("same_speaker_prev",),
}


def load_calibration(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """{graph: {array: float32 (N, ...)}} from `directory/<graph>.npz` (float16 storage is cast)."""
    from mlsan_edge.model.stages import GRAPHS

    out = {}
    for g in GRAPHS:
        f = Path(directory) / f"{g}.npz"
        if not f.is_file():
            from .quantize import CalibrationError

            raise CalibrationError(f"calibration file {f} is missing; rebuild with "
                                   "`python -m calibration_data.build` (see calibration_data/README.md)")
        with np.load(f, allow_pickle=False) as z:
            out[g] = {k: (z[k].astype(np.float32) if np.issubdtype(z[k].dtype, np.floating) else z[k]) for k in z.files}
    return out


def derive_inputs(model, calib: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Every graph's inputs for `model`, from the calibration set's raw (model-independent)
    inputs: the speaker, FiLM, calibrated and fused values are recomputed with `model`'s own
    graphs, and each row's history from the earlier rows of its stream (`stream` array in
    stage3.npz, rows in stream order). So one calibration set serves any model."""
    import torch

    from mlsan_edge.model.stages import graph_io, history_len, stage_modules

    from .quantize import CalibrationError

    io, mods = graph_io(model), stage_modules(model)
    for g, names in RAW_INPUTS.items():
        missing = [n for n in names if n not in calib.get(g, {})]
        if missing:
            raise CalibrationError(f"calibration {g}.npz lacks {missing}; rebuild it")
    T = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    raw = {n: calib[g][n] for g, names in RAW_INPUTS.items() for n in names}
    for g, (inputs, _) in io.items():
        for t in inputs:
            if t["name"] in raw and tuple(raw[t["name"]].shape[1:]) != tuple(t["shape"][1:]):
                raise CalibrationError(f"calibration {g}.npz: {t['name']!r} has per-sample shape "
                                       f"{raw[t['name']].shape[1:]}, the model expects {tuple(t['shape'][1:])}; "
                                       "the calibration set was built for another feature contract: rebuild it")
    out = {g: {} for g in io}
    with torch.no_grad():
        sp = mods["speaker"](*[T(raw[n]) for n in RAW_INPUTS["speaker"]])
        sp_names = [t["name"] for t in io["speaker"][1]]
        sp = dict(zip(sp_names, sp))
        out["speaker"] = {n: raw[n] for n in RAW_INPUTS["speaker"]}
        out["stage1"] = {**{n: raw[n] for n in RAW_INPUTS["stage1"]}, **{n: sp[n].numpy() for n in sp_names[1:]}}
        cal = mods["stage1"](*[T(out["stage1"][t["name"]]) for t in io["stage1"][0]])
        out["stage2"] = {"text": raw["text"], "audio_cal": cal[0].numpy(), "visual_cal": cal[1].numpy(),
                         "modality_mask": raw["modality_mask"], "speaker": sp["speaker"].numpy()}
        fused, _ = mods["stage2"](*[T(out["stage2"][t["name"]]) for t in io["stage2"][0]])
        same = T(raw["same_speaker_prev"])
        flag = model.context.speaker_flag.weight
        ctx_in = (fused + torch.where(same > 0.5, flag[1], flag[0])).numpy()
    W, N = history_len(model), len(ctx_in)
    stream = calib["stage3"].get("stream", np.zeros(N, np.int64))
    hist, hmask = np.zeros((N, W, ctx_in.shape[1]), np.float32), np.zeros((N, W), np.float32)
    for i in range(N):
        for j in range(1, W + 1):
            if i - j < 0 or stream[i - j] != stream[i]:
                break
            hist[i, W - j], hmask[i, W - j] = ctx_in[i - j], 1.0
    out["stage3"] = {"fused": fused.numpy(), "same_speaker_prev": raw["same_speaker_prev"], "history": hist,
                     "history_mask": hmask}
    return out


# --- INT8 ----------------------------------------------------------------------------------------
def quantise_stages(graphs: Mapping[str, dict], inputs: Mapping[str, Mapping[str, np.ndarray]], out_dir: Path,
                    prefix: str, only: tuple[str, ...] = QUANTISED_GRAPHS) -> dict[str, dict]:
    """Symmetric-int8 QDQ (`export.quantize.quantize_qdq`) of the graphs in `only`, calibrated on
    `inputs` (per graph, as `derive_inputs` returns). Returns {graph: {"path", "report"}}."""
    from dataclasses import asdict

    from .quantize import quantize_qdq

    res = {}
    for g in only:
        names = [t["name"] for t in graphs[g]["inputs"]]
        feeds = {n: np.ascontiguousarray(inputs[g][n], np.float32) for n in names}
        path = out_dir / f"{prefix}.{g}.int8.onnx"
        report = quantize_qdq(graphs[g]["path"], path, feeds)
        res[g] = {"path": path, "report": asdict(report)}
    return res


def tensor_profiles(inputs: list[dict]) -> dict[str, dict[str, list]]:
    """TensorRT optimisation profiles: batch 1 (min, opt) to MAX_BATCH."""
    return {t["name"]: {"min": [1, *t["shape"][1:]], "opt": [1, *t["shape"][1:]], "max": [MAX_BATCH, *t["shape"][1:]]}
            for t in inputs}


def add_stage_models(w, name: str, graphs: Mapping[str, dict], precision: str) -> None:
    """Register exported graph files with a BundleWriter as roles `<name>.<graph>.<precision>`."""
    for g, rec in graphs.items():
        rel = f"{name}/{Path(rec['path']).name}"
        w.add_model(f"{name}.{g}.{precision}", rel, src=rec["path"], precision=precision,
                    inputs=rec["inputs"], outputs=rec["outputs"], profiles=tensor_profiles(rec["inputs"]))


def write_stage_bundle(dest: Path, models: Mapping, stats, classes=None, calibration: Mapping | None = None,
                       int8: tuple[str, ...] = (), int8_graphs: tuple[str, ...] = QUANTISED_GRAPHS) -> Path:
    """A minimal bundle with only the stage graphs of `models` ({"student": MLSAN, ...}) and
    `global_stats.json` (tests and tools; `packaging.write_bundle` adds encoders, VAD, weights).

    Args:
        calibration: raw calibration inputs (`load_calibration`), for the real-input parity
            check and for INT8.
        int8: names in `models` to quantise (needs `calibration`).
    """
    from mlsan_edge.bundle_writer import BundleWriter
    from mlsan_edge.config import EMOTIONS

    with tempfile.TemporaryDirectory() as tmp, BundleWriter(
            dest, name="mlsan-stages", classes=list(classes or EMOTIONS), feature_contract={}) as w:
        add_stages_to_writer(w, Path(tmp), models, stats, calibration, int8, int8_graphs)
    return Path(dest)


def add_stages_to_writer(w, tmp: Path, models: Mapping, stats, calibration=None, int8=(),
                         int8_graphs: tuple[str, ...] = QUANTISED_GRAPHS) -> dict:
    """Export every model's graphs into `tmp`, register them and global_stats.json with `w`.
    Returns what was measured (parity, QDQ reports) for the manifest's metrics."""
    info = {}
    for name, model in models.items():
        real = derive_inputs(model, calibration) if calibration is not None else None
        graphs = export_stages(model, tmp, name, real=real)
        add_stage_models(w, name, graphs, "fp32")
        info[name] = {"parity_max_abs_diff": {g: r["max_abs_diff"] for g, r in graphs.items()}}
        if name in int8:
            if real is None:
                raise ValueError(f"INT8 for {name!r} needs calibration data")
            q = quantise_stages(graphs, real, tmp, name, only=int8_graphs)
            add_stage_models(w, name, {g: {**graphs[g], "path": r["path"]} for g, r in q.items()}, "int8")
            info[name]["int8"] = {g: r["report"] for g, r in q.items()}
    stats_path = tmp / "global_stats.json"
    stats_path.write_text(json.dumps(stats.to_dict()))
    w.add_file("global_stats.json", stats_path)
    return info


def main(argv=None) -> int:
    from mlsan_edge.train import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="folder for <name>.<graph>.fp32.onnx")
    p.add_argument("--calibration", default=None, help="calibration_data folder: also check on real inputs")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, _, doc = load_checkpoint(a.checkpoint)
    real = derive_inputs(model, load_calibration(Path(a.calibration))) if a.calibration else None
    res = export_stages(model, Path(a.out), doc["model"]["name"], real=real)
    print(json.dumps({g: {"path": str(r["path"]), "max_abs_diff": r["max_abs_diff"]} for g, r in res.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
