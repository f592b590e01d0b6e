"""Assemble a verified bundle from a training checkpoint (`mlsan-edge export`).

The bundle holds everything the device runs — the encoders, the VAD model and the network —
with the feature contract and measured accuracy in its manifest (see `bundle.py`). The encoders
and VAD are the ones the checkpoint was trained with (`training_job.checkpoint_encoders`), and
the networks' model.json copies name them by their place in the new bundle: no path in a bundle
is absolute. Writing is atomic: an interrupted export leaves the previous bundle untouched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlsan_edge.bundle import TOKENIZER_FILE, expected_feature_contract
from mlsan_edge.bundle_writer import BundleWriter, default_provenance
from mlsan_edge.config import EMOTIONS, TEXT_DIM, VOICE_DIM

log = logging.getLogger(__name__)

# where each front-end model goes inside a bundle
ENCODER_FILES = {"text_encoder": "encoders/text_encoder.int8.onnx", "voice_encoder": "encoders/voice_encoder.onnx",
                 "vad": "vad/silero_vad.onnx"}


def feature_contract(audio_dim: int) -> dict:
    """What the device's front-ends must produce for this bundle (checked at load by
    `bundle.check_feature_contract`): every number of this code's contract, the network's audio
    width, and descriptions (not compared)."""
    return {
        **expected_feature_contract(), "audio_dim": audio_dim,
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
    from mlsan_edge.bundle import load_bundle
    from mlsan_edge.train import load_checkpoint
    from mlsan_edge.training_job import checkpoint_encoders

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
    enc = checkpoint_encoders(checkpoint, doc)  # the files it was trained with, hash-checked
    if "vad" not in enc:  # checkpoints from before the VAD was recorded: their encoder bundle's
        enc["vad"] = load_bundle(doc.get("encoder_bundle", "default"), verify=False).path("vad")
    metrics = {}
    for m in metrics_json:
        metrics[m.stem] = json.loads(m.read_text())
    with BundleWriter(out, name=name or f"mlsan-{doc['model']['name']}", classes=list(EMOTIONS),
                      feature_contract=feature_contract(doc["model"]["audio_dim"]),
                      provenance={**default_provenance(doc.get("data", {})), "train": doc.get("train", {})},
                      metrics=metrics) as w:
        for sub, ck in [("teacher", checkpoint)] + ([("student", Path(student))] if student else []):
            w.add_file(f"{sub}/model.safetensors", ck / "model.safetensors")
            _write_model_json(w.add_file(f"{sub}/model.json"), json.loads((ck / "model.json").read_text()))
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
        w.add_model("text_encoder", ENCODER_FILES["text_encoder"], src=enc["text_encoder"], precision="int8",
                    inputs=[{"name": "input_ids", "shape": ["batch", "tokens"], "dtype": "int64"},
                            {"name": "attention_mask", "shape": ["batch", "tokens"], "dtype": "int64"}],
                    outputs=[{"name": "embeddings", "shape": ["batch", TEXT_DIM], "dtype": "float32"}])
        w.add_file(TOKENIZER_FILE, enc["text_encoder"].parent / "tokenizer.json")
        w.add_model("voice_encoder", ENCODER_FILES["voice_encoder"], src=enc["voice_encoder"],
                    inputs=[{"name": "mels", "shape": ["batch", 160, 40], "dtype": "float32"}],
                    outputs=[{"name": "embeddings", "shape": ["batch", VOICE_DIM], "dtype": "float32"}],
                    profiles={"mels": {"min": [1, 160, 40], "opt": [4, 160, 40], "max": [16, 160, 40]}})
        w.add_model("vad", ENCODER_FILES["vad"], src=enc["vad"],
                    inputs=[{"name": "input", "shape": [1, 576], "dtype": "float32"},
                            {"name": "state", "shape": [2, 1, 128], "dtype": "float32"},
                            {"name": "sr", "shape": [], "dtype": "int64"}],
                    outputs=[{"name": "output", "shape": [1, 1], "dtype": "float32"},
                             {"name": "stateN", "shape": [2, 1, 128], "dtype": "float32"}])
        if (enc["vad"].parent / "NOTICE").exists():  # silero's MIT notice travels with its model
            w.add_file("vad/NOTICE", enc["vad"].parent / "NOTICE")
        from mlsan_edge.confidence import CONFIDENCE_FILE

        conf = (Path(student) if student else checkpoint) / CONFIDENCE_FILE  # the graphs the device runs
        if conf.exists():
            w.add_file(CONFIDENCE_FILE, conf)
        else:
            log.warning("%s has no %s: probabilities stay uncalibrated and events carry no ood score",
                        conf.parent, CONFIDENCE_FILE)
        scorer = checkpoint / "voice_scorer.npz"
        if scorer.exists():  # the speaker cache's voice scorer (fitted on the RAVDESS training voices)
            w.add_file(SCORER_FILE, scorer)
        else:
            log.warning("%s has no voice_scorer.npz: the runtime will match speakers by plain cosine", checkpoint)
        w.add_file("LICENSES.md", _licence_text())
    return out


def _write_model_json(target: Path, doc: dict) -> None:
    """A checkpoint's model.json as the bundle keeps it: encoders named by their place in the bundle
    (relative to its root), no encoder_bundle, the distillation teacher by name (no build paths)."""
    doc = dict(doc)
    if "encoders" in doc:
        doc["encoders"] = {k: ENCODER_FILES[k] for k in doc["encoders"] if k in ENCODER_FILES}
    doc.pop("encoder_bundle", None)
    if isinstance(doc.get("distill"), dict) and doc["distill"].get("teacher"):
        doc["distill"] = {**doc["distill"], "teacher": Path(doc["distill"]["teacher"]).name}
    target.write_text(json.dumps(doc, indent=2))


def _licence_text() -> Path:
    import tempfile

    p = Path(tempfile.mkdtemp()) / "LICENSES.md"
    p.write_text(
        "# Licences of this bundle\n\n"
        "- teacher/, student/ and the stage graphs: trained on RAVDESS (CC BY-NC-SA 4.0, Livingstone &\n"
        "  Russo 2018), EmoSpeech's training users (CC BY-NC-SA 4.0, RakshakTeam) and MELD (GPL-3.0,\n"
        "  Poria et al. 2019): non-commercial, share-alike; GPL-3.0 obligations for MELD-derived weights.\n"
        "- confidence.json: fitted on EmoSpeech's calibration users (CC BY-NC-SA 4.0).\n"
        "- encoders/text_encoder.int8.onnx: all-MiniLM-L6-v2 (Apache-2.0), fine-tuned on MELD (GPL-3.0).\n"
        "- encoders/voice_encoder.onnx: GE2E speaker encoder from resemblyzer (Apache-2.0).\n"
        "- vad/silero_vad.onnx: silero-vad 6.2.3 (MIT; see vad/NOTICE).\n")
    return p
