"""Assemble a verified bundle from a training checkpoint (`mlsan-edge export`).

The bundle holds everything the device runs — the encoders, the VAD model and the network —
with the feature contract and measured accuracy in its manifest (see `bundle.py`). Writing is
atomic: an interrupted export leaves the previous bundle untouched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlsan_edge.bundle import BundleWriter, default_provenance
from mlsan_edge.config import (EMOTIONS, HOP_LENGTH, N_FFT, N_MELS, N_MFCC, SAMPLE_RATE, TEXT_DIM, VISUAL_DIM,
                               VOICE_DIM, WIN_LENGTH)

log = logging.getLogger(__name__)

VAD_ONNX = Path(__file__).resolve().parent / "assets" / "vad" / "silero_vad.onnx"


def feature_contract(audio_dim: int) -> dict:
    """What the device's front-ends must produce for this bundle (checked at load)."""
    return {
        "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "win_length": WIN_LENGTH, "hop_length": HOP_LENGTH,
        "n_mels": N_MELS, "n_mfcc": N_MFCC, "audio_dim": audio_dim, "text_dim": TEXT_DIM,
        "visual_dim": VISUAL_DIM, "voice_dim": VOICE_DIM,
        "audio_features": "mlsan_edge.features.audio.utterance_features",
        "visual_features": "OpenFace AU intensities (17) + presence fractions (18), clip means",
        "normalisation": "raw inputs; global mean/std inside the network; speaker profile per profile.py",
    }


CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "calibration_data"


def write_bundle(checkpoint: Path, out: Path, metrics_json: list[Path] = (), name: str | None = None,
                 student: Path | None = None, calibration: Path | None = CALIBRATION_DIR,
                 int8_graphs: tuple[str, ...] | None = None, teacher_graphs: bool = True) -> Path:
    """Bundle = checkpoint's network + the encoders it was trained with + the VAD model.

    The networks go in as the per-utterance stage graphs (`export/onnx_export.py`): roles
    `<model>.<graph>.fp32` for the checkpoint (and `student`), and `student.<graph>.int8` for the
    graphs in `int8_graphs` (default: every graph with MatMul/Gemm) when calibration data exists.
    The torch weights stay under teacher/ (and student/) for `--backend torch`.
    `teacher_graphs=False` leaves the teacher's ONNX graphs out when a student is given (the
    committed default bundle: the device runs the student, and 6 MB less churns per retrain).
    """
    import tempfile

    import torch

    from mlsan_edge.export.onnx_export import QUANTISED_GRAPHS, add_stages_to_writer, load_calibration
    from mlsan_edge.features.voice_scorer import SCORER_FILE
    from mlsan_edge.train import load_checkpoint

    doc = json.loads((checkpoint / "model.json").read_text())
    models, stats = {}, None
    for ck in [checkpoint] + ([Path(student)] if student else []):
        model, ck_stats, ck_doc = load_checkpoint(ck)
        models[ck_doc["model"]["name"]] = (model, ck)
        stats = stats or ck_stats
    calib = load_calibration(calibration) if calibration and (Path(calibration) / "speaker.npz").exists() else None
    if calib is None:
        log.warning("no calibration data at %s: exporting without INT8 and without the real-input parity check",
                    calibration)
    int8 = ("student",) if calib is not None and "student" in models else ()
    int8_graphs = QUANTISED_GRAPHS if int8_graphs is None else tuple(int8_graphs)
    enc = {k: Path(v) for k, v in doc.get("encoders", {}).items()}
    for role, p in enc.items():
        if not p.exists():
            raise FileNotFoundError(f"the checkpoint's {role} {p} is gone; re-train or restore it")
    metrics = {}
    for m in metrics_json:
        metrics[m.stem] = json.loads(m.read_text())
    with BundleWriter(out, name=name or f"mlsan-{doc['model']['name']}", classes=list(EMOTIONS),
                      feature_contract=feature_contract(doc["model"]["audio_dim"]),
                      provenance={**default_provenance(doc.get("data", {})), "train": doc.get("train", {})},
                      metrics=metrics) as w:
        for f in ("model.safetensors", "model.json"):
            w.add_file(f"teacher/{f}", checkpoint / f)
            if student:
                w.add_file(f"student/{f}", Path(student) / f)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            graphs = {k: m for k, (m, _) in models.items() if teacher_graphs or not student or k == "student"}
            ensembles = [k for k, m in graphs.items() if hasattr(m, "members")]
            if ensembles:
                raise ValueError(f"{ensembles[0]} is an ensemble of {len(graphs[ensembles[0]].members)} networks and "
                                 "has no single set of stage graphs: distil a student (`mlsan-edge distill`) and "
                                 "export with --student S --no-teacher-graphs")
            w.metrics["export"] = add_stages_to_writer(w, Path(tmp), graphs, stats,
                                                       calibration=calib, int8=int8 if int8_graphs else (),
                                                       int8_graphs=int8_graphs)
        w.add_model("text_encoder", "encoders/text_encoder.int8.onnx", src=enc["text_encoder"], precision="int8",
                    inputs=[{"name": "input_ids", "shape": ["batch", "tokens"], "dtype": "int64"},
                            {"name": "attention_mask", "shape": ["batch", "tokens"], "dtype": "int64"}],
                    outputs=[{"name": "embeddings", "shape": ["batch", TEXT_DIM], "dtype": "float32"}])
        w.add_file("encoders/tokenizer.json", enc["text_encoder"].parent / "tokenizer.json")
        w.add_model("voice_encoder", "encoders/voice_encoder.onnx", src=enc["voice_encoder"],
                    inputs=[{"name": "mels", "shape": ["batch", 160, 40], "dtype": "float32"}],
                    outputs=[{"name": "embeddings", "shape": ["batch", VOICE_DIM], "dtype": "float32"}],
                    profiles={"mels": {"min": [1, 160, 40], "opt": [4, 160, 40], "max": [16, 160, 40]}})
        w.add_model("vad", "vad/silero_vad.onnx", src=VAD_ONNX,
                    inputs=[{"name": "input", "shape": [1, 576], "dtype": "float32"},
                            {"name": "state", "shape": [2, 1, 128], "dtype": "float32"},
                            {"name": "sr", "shape": [], "dtype": "int64"}],
                    outputs=[{"name": "output", "shape": [1, 1], "dtype": "float32"},
                             {"name": "stateN", "shape": [2, 1, 128], "dtype": "float32"}])
        scorer = checkpoint / "voice_scorer.npz"
        if scorer.exists():  # the speaker cache's voice scorer (fitted on the RAVDESS training voices)
            w.add_file(SCORER_FILE, scorer)
        else:
            log.warning("%s has no voice_scorer.npz: the runtime will match speakers by plain cosine", checkpoint)
        w.add_file("LICENSES.md", _licence_text())
    return out


def _licence_text() -> Path:
    import tempfile

    p = Path(tempfile.mkdtemp()) / "LICENSES.md"
    p.write_text(
        "# Licences of this bundle\n\n"
        "- teacher/: trained on RAVDESS (CC BY-NC-SA 4.0, Livingstone & Russo 2018) and MELD (GPL-3.0,\n"
        "  Poria et al. 2019): non-commercial, share-alike; GPL-3.0 obligations for MELD-derived weights.\n"
        "- encoders/text_encoder.int8.onnx: all-MiniLM-L6-v2 (Apache-2.0), fine-tuned on MELD (GPL-3.0).\n"
        "- encoders/voice_encoder.onnx: GE2E speaker encoder from resemblyzer (Apache-2.0).\n"
        "- vad/silero_vad.onnx: silero-vad 6.2.3 (MIT).\n")
    return p
