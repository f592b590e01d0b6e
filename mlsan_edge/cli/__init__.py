"""`mlsan-edge`: one console script, one subcommand per job; heavy imports stay inside handlers."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("mlsan_edge")


_CALIBRATION = Path(__file__).resolve().parents[2] / "calibration_data"  # in a checkout


def _default_data() -> str:
    """../shared/data next to a checkout, else the current folder."""
    here = Path(__file__).resolve().parents[3] / "shared" / "data"  # mlsan_edge/cli/__init__.py -> ../shared
    return str(here) if here.exists() else "."


# --- handlers ------------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    from mlsan_edge.training_job import run_training

    res = run_training(data=Path(a.data), out=Path(a.out), config=a.config, epochs=a.epochs, seed=a.seed,
                       actors=_parse_actors(a.actors), use_meld=not a.no_meld, use_ravdess=not a.no_ravdess,
                       use_emospeech=not a.no_emospeech, augment_copies=a.augment,
                       text_encoder=a.text_encoder, ensemble=a.ensemble, neutral_first=not a.no_neutral_first,
                       stage1_max_gain=a.stage1_max_gain)
    print(json.dumps(res, indent=2))
    return 0


def cmd_distill(a: argparse.Namespace) -> int:
    from mlsan_edge.distill import DistillConfig, run_distill

    res = run_distill(Path(a.teacher), Path(a.data), Path(a.out), epochs=a.epochs, seed=a.seed,
                      actors=_parse_actors(a.actors), kd=DistillConfig(temperature=a.temperature, alpha=a.alpha))
    print(json.dumps(res, indent=2))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    if a.dataset == "clips":  # any labelled clips, through the device path (runtime/clip_eval.py)
        from mlsan_edge.runtime.clip_eval import evaluate_clips, summary

        res = evaluate_clips(a.data, a.bundle, backend=a.backend, precision=a.precision, face=a.face, gap_s=a.gap,
                             root=a.root, seed=a.seed, shuffle=a.shuffle, json_out=a.json, gain_db=a.gain_db,
                             speaker_threshold=a.speaker_threshold)
        print(json.dumps(summary(res), indent=2))
        if a.json:
            print(f"wrote {a.json}" + (f" and {res['confusion_png']}" if "confusion_png" in res else ""), file=sys.stderr)
        return 0
    from mlsan_edge.evaluate import evaluate

    res = evaluate(a.bundle, a.dataset, a.data, split=a.split, stream=a.stream, json_out=a.json, seed=a.seed,
                   backend=a.backend, precision=a.precision, model=a.model, actors=_parse_actors(a.actors),
                   modalities=tuple(a.modalities.split(",")))
    short = {k: res[k] for k in ("dataset", "split", "stream", "modalities", "n", "accuracy", "weighted_f1", "macro_f1", "per_class_f1")}
    print(json.dumps(short, indent=2))
    if a.json:
        print(f"wrote {a.json} and {res['confusion_png']}", file=sys.stderr)
    return 0


def cmd_crossval(a: argparse.Namespace) -> int:
    from mlsan_edge.crossval import ABLATIONS, run_crossval

    variants = a.ablations.split(",") if a.ablations else ["full"]
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {unknown}; valid: {', '.join(ABLATIONS)}")
    res = run_crossval(Path(a.data), variants=variants, folds=a.folds, seeds=[int(s) for s in a.seeds.split(",")],
                       config=a.config, epochs=a.epochs, text_dropout=a.text_dropout, ensemble=a.ensemble,
                       json_out=Path(a.json) if a.json else None,
                       only_folds=[int(k) for k in a.only_folds.split(",")] if a.only_folds else None)
    print(json.dumps(res["summary"], indent=2))
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from mlsan_edge.training_job import recalibrate

    from mlsan_edge.confidence_fit import crossval_folds

    folds = [f for j in a.crossval for f in crossval_folds(Path(j))] if a.crossval else None
    out = {"checkpoints": {c: recalibrate(Path(c), Path(a.data), a.temperature, folds) for c in a.checkpoint}}
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


def cmd_finetune_text(a: argparse.Namespace) -> int:
    from mlsan_edge.data.meld import load_meld
    from mlsan_edge.model.text_finetune import TextTuneConfig, finetune_text_encoder

    tr = [u for d in load_meld(a.data, "train") for u in d]
    dv = [u for d in load_meld(a.data, "dev") for u in d]
    hist = finetune_text_encoder([u.text for u in tr], [u.label for u in tr], a.out,
                                 dev=([u.text for u in dv], [u.label for u in dv]),
                                 config=TextTuneConfig(epochs=a.epochs, seed=a.seed))
    print(json.dumps(hist, indent=2))
    print(f"next: python -m mlsan_edge.export.text_encoder --weights {a.out} --no-static", file=sys.stderr)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from mlsan_edge.packaging import write_bundle

    path = write_bundle(Path(a.checkpoint), Path(a.out), metrics_json=[Path(p) for p in a.metrics or []],
                        student=Path(a.student) if a.student else None, calibration=Path(a.calibration),
                        int8_graphs=tuple(g for g in a.int8_graphs.split(",") if g),
                        teacher_graphs=not a.no_teacher_graphs)
    print(path)
    return 0


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "assets" / "sample" / "ravdess_mini"  # RAVDESS clips (tests, bench)


def cmd_build_engine(a: argparse.Namespace) -> int:
    """TensorRT engines for the stage graphs of the bundle's model (int8 graphs where the bundle has
    them, fp16 for the rest), each printed as its trtexec equivalent first; with --verify, each engine
    is then compared with onnxruntime on the calibration set. TensorRT is device work: no torch here."""
    from mlsan_edge.backends.select import onnx_role_for
    from mlsan_edge.backends.stages import GRAPHS, MODELS
    from mlsan_edge.backends.tensorrt import TensorRTUnavailable, check_tensorrt
    from mlsan_edge.backends.tensorrt_build import EngineBuildError, ensure_engine, profiles_from_spec, trtexec_command
    from mlsan_edge.bundle import load_bundle

    graphs = [g for g in a.graphs.split(",") if g]
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        raise ValueError(f"unknown graph {unknown}; valid: {', '.join(GRAPHS)}")
    bundle = load_bundle(a.bundle)
    model = a.model if a.model != "auto" else next((m for m in MODELS if bundle.variants(f"{m}.stage3")), None)
    if model is None:
        raise ValueError(f"bundle {bundle.root} has no stage graphs; roles: {bundle.roles}")
    try:
        if not a.trtexec:
            check_tensorrt()  # before anything is printed: without TensorRT the answer is one line
        for g in graphs:
            base = f"{model}.{g}"
            p = a.precision if onnx_role_for(bundle, base, "tensorrt", a.precision) else "fp16"
            role = onnx_role_for(bundle, base, "tensorrt", p)
            print(trtexec_command(bundle.path(role), f"{base}-{p}.engine", p, profiles_from_spec(bundle.model_spec(role)),
                                  "timing.cache"), file=sys.stdout if a.trtexec else sys.stderr)
            if a.trtexec:
                continue
            print(ensure_engine(bundle, base, p, workspace_mb=a.workspace_mb, rebuild=a.rebuild))
            if a.verify is not None and not _verify_engine(bundle, a.verify, base, p):
                return 1
    except (TensorRTUnavailable, EngineBuildError) as e:
        if a.verbose:
            raise
        print(f"mlsan-edge build-engine: error: {e}", file=sys.stderr)
        return 2
    return 0


def _verify_engine(bundle, calibration: str, base: str, precision: str) -> bool:
    from mlsan_edge.backends.tensorrt_verify import verify_engine

    report = verify_engine(bundle, calibration, base, precision)
    print(f"{base} ({precision}): {report.summary()}", file=sys.stderr)
    return report.ok


def cmd_info(a: argparse.Namespace) -> int:
    from mlsan_edge.bundle import load_bundle

    print(load_bundle(a.bundle).to_json())
    return 0


def _parse_actors(s: str | None) -> list[int] | None:
    if not s:
        return None
    out = []
    for part in s.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


# --- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlsan-edge", description="Speaker-adaptive multimodal emotion recognition "
                                "(ML-SAN) for edge devices.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train ML-SAN on RAVDESS + EmoSpeech + MELD (needs the [train] extra)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default=_default_data(), help="folder holding ravdess/ and meld/ (as ../shared/data)")
    t.add_argument("--out", required=True, help="checkpoint folder to write (model.safetensors + model.json)")
    t.add_argument("--config", default="teacher", choices=["teacher", "student"])
    t.add_argument("--epochs", type=int, default=None, help="override the training length")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--actors", default=None, help="RAVDESS actors to train on, e.g. '1-16' or '1,3,5' (default all)")
    t.add_argument("--no-meld", action="store_true", help="train on RAVDESS only")
    t.add_argument("--no-ravdess", action="store_true", help="train without RAVDESS")
    t.add_argument("--no-emospeech", action="store_true",
                   help="train without EmoSpeech's training users (data/emospeech; CC BY-NC-SA 4.0)")
    t.add_argument("--no-neutral-first", action="store_true",
                   help="no replay that puts each acted speaker's neutral clips first (an ablation of the default recipe)")
    t.add_argument("--augment", type=int, default=1, metavar="N",
                   help="channel-augmented copies of every acted clip (microphone, room, noise, codec; 0: none)")
    t.add_argument("--text-encoder", default=None, help="text encoder ONNX (default: the default bundle's)")
    t.add_argument("--ensemble", type=int, default=None, help="seeds averaged in the teacher (default 3; student 1)")
    t.add_argument("--stage1-max-gain", type=float, default=None, metavar="G",
                   help="most stage 1 may magnify a speaker's features (corpus std / speaker std); "
                        "inf: unbounded, as before issue #9's stage-1 change (default: the config's)")
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("distill", help="train the small student from a teacher's soft targets (needs [train])",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    k.add_argument("--teacher", required=True, help="teacher checkpoint folder (from `mlsan-edge train`)")
    k.add_argument("--data", default=_default_data(), help="folder holding ravdess/ and meld/")
    k.add_argument("--out", required=True, help="student checkpoint folder to write")
    k.add_argument("--epochs", type=int, default=None, help="override the training length")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--actors", default=None, help="RAVDESS actors (default: the teacher's training actors)")
    k.add_argument("--temperature", type=float, default=3.0, help="softmax temperature of the soft targets")
    k.add_argument("--alpha", type=float, default=0.3, help="weight of the hard-label loss (1-alpha: soft)")
    k.set_defaults(func=cmd_distill)

    e = sub.add_parser("eval", help="causal, speaker-disjoint evaluation; writes JSON + confusion PNG",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--bundle", default="default", help="bundle folder, checkpoint folder, or 'default'")
    e.add_argument("--dataset", required=True, help="ravdess, meld, or clips (a labelled clip list run through "
                   "the device path: mlsan_edge/assets/clips/README.md)")
    e.add_argument("--data", required=True, help="RAVDESS folder (audio16k/ + visual_au35.csv), MELD folder, or "
                   "clips: a CSV (path, speaker, emotion[, start, end]) or a shipped list's name")
    e.add_argument("--split", default="dev", help="MELD split: dev or test")
    e.add_argument("--stream", action="store_true", help="RAVDESS: each actor's clips in seeded shuffled order")
    e.add_argument("--seed", type=int, default=0, help="seed of the --stream order")
    e.add_argument("--json", default=None, help="write the metrics here (and OUT.confusion.png beside it)")
    e.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="auto: the bundle's stage graphs when it has them (TensorRT if engines exist), else torch")
    e.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"],
                   help="auto: the best the bundle has for the backend (see backends/select.py)")
    e.add_argument("--model", default="auto", choices=["auto", "student", "teacher"],
                   help="which network of the bundle the ONNX backends run")
    e.add_argument("--actors", default=None,
                   help="RAVDESS: only these actors, e.g. 17-20 or 1,3,5 (default: every actor under --data)")
    e.add_argument("--modalities", default="text,audio,visual",
                   help="what the model may see, e.g. 'audio' for what `mlsan-edge run` sees without camera or text")
    e.add_argument("--root", default=None, help="clips: the folder the list's paths are relative to (default: its own)")
    e.add_argument("--face", default="auto", choices=["auto", "none"],
                   help="clips: 'auto' runs video clips' frames through the face path; 'none': audio only")
    e.add_argument("--gap", type=float, default=1.0, help="clips: seconds of silence between clips")
    e.add_argument("--shuffle", action="store_true", help="clips: run them in a --seed shuffled order")
    e.add_argument("--gain-db", type=float, default=0.0,
                   help="clips: play every clip this many dB louder (or quieter, < 0), as another microphone would")
    e.add_argument("--speaker-threshold", type=float, default=None,
                   help="clips: the speaker cache's match threshold (default: the bundle's tuned one); "
                        "--speaker-threshold=-1e9 files every voice under one speaker, the emotion figures of a "
                        "one-person list with the speaker known")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("crossval", help="leave-actors-out cross-validation and ablations (RAVDESS + MELD dev)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--data", default=_default_data(), help="folder holding ravdess/ and meld/")
    c.add_argument("--folds", type=int, default=5, help="folds of consecutive actors over actors 1-20")
    c.add_argument("--seeds", default="0", help="comma-separated training seeds")
    c.add_argument("--ablations", default="full", help="comma-separated: full,no_stage1,no_stage2,no_stage3,no_speaker")
    c.add_argument("--config", default="teacher", choices=["teacher", "student"])
    c.add_argument("--epochs", type=int, default=None, help="override the training length")
    c.add_argument("--text-dropout", type=float, default=None, help="override the model's text-input dropout")
    c.add_argument("--ensemble", type=int, default=None, help="override the teacher's number of seeds (default 3)")
    c.add_argument("--json", default=None, help="write every run and the summary here")
    c.add_argument("--only-folds", default=None, metavar="K,K",
                   help="run only these folds (0-based), e.g. to share the folds between processes or machines")
    c.set_defaults(func=cmd_crossval)

    q = sub.add_parser("calibrate", help="refit checkpoints' confidence.json (temperatures) without retraining",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint folders (teacher, student)")
    q.add_argument("--data", default=_default_data(), help="folder holding ravdess/, emospeech/ and meld/")
    q.add_argument("--crossval", nargs="+", default=None, metavar="JSON",
                   help="`crossval --json` outputs (with their saved held-out predictions): their held-out actors "
                        "join the fit (audio only and with a face), with a nested check per fold")
    q.add_argument("--temperature", type=float, default=None,
                   help="base temperature when a face is used, without --crossval (default: keep the checkpoint's)")
    q.add_argument("--json", default=None, help="write the fitted values and the nested ECE here")
    q.set_defaults(func=cmd_calibrate)

    f = sub.add_parser("finetune-text", help="fine-tune the MiniLM text encoder on MELD (torch)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--data", default=str(Path(_default_data()) / "meld"), help="MELD folder")
    f.add_argument("--out", required=True)
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_finetune_text)

    x = sub.add_parser("export", help="write a verified bundle from a checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True, help="bundle folder (written atomically)")
    x.add_argument("--metrics", nargs="*", help="eval/crossval JSON files to record in the manifest")
    x.add_argument("--student", default=None, help="distilled student checkpoint to add (fp32 + int8 graphs)")
    x.add_argument("--calibration", default=str(_CALIBRATION),
                   help="INT8 calibration folder (calibration_data/README.md)")
    x.add_argument("--int8-graphs", default="speaker,stage2,stage3",
                   help="student graphs to ship as INT8 ('' = none; graphs that fail the accuracy gate stay fp32)")
    x.add_argument("--no-teacher-graphs", action="store_true",
                   help="with --student: leave the teacher's ONNX graphs out (its torch weights stay)")
    x.set_defaults(func=cmd_export)

    from mlsan_edge.cli.doctor import add_parser as add_doctor_parser
    from mlsan_edge.demo.cli import add_parser as add_demo_parser  # the live demo (demo/; no torch)

    add_demo_parser(sub)
    add_doctor_parser(sub)

    from mlsan_edge.cli.device import add_parsers as add_runtime_parsers  # run, speakers (no torch)

    add_runtime_parsers(sub)

    from mlsan_edge.bench.cli import add_parser as add_bench_parser  # latency (imports its tools lazily)

    add_bench_parser(sub)

    b = sub.add_parser("build-engine", help="build (and verify) TensorRT engines for a bundle on this device "
                       "(Jetson; minutes; needs TensorRT, not torch)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--bundle", default="default")
    b.add_argument("--precision", default="int8", choices=["fp16", "int8", "fp32"],
                   help="graphs the bundle has no ONNX for at this precision are built fp16")
    b.add_argument("--model", default="auto", choices=["auto", "student", "teacher"])
    b.add_argument("--graphs", default="speaker,stage1,stage2,stage3", help="comma-separated stage graphs to build")
    b.add_argument("--rebuild", action="store_true", help="ignore cached engines")
    b.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (Orin Nano shares 8 GB)")
    b.add_argument("--verify", metavar="CALIBRATION", nargs="?", const=str(_CALIBRATION), default=None,
                   help="then compare each engine with onnxruntime on CALIBRATION (a folder with one <graph>.npz "
                        "per graph, as calibration_data/); exit 1 when one fails the gate")
    b.add_argument("--trtexec", action="store_true",
                   help="only print the equivalent trtexec commands (no TensorRT needed); build nothing")
    b.set_defaults(func=cmd_build_engine)

    i = sub.add_parser("info", help="print a bundle's manifest as JSON")
    i.add_argument("--bundle", default="default")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    from mlsan_edge.runtime.source_base import SourceError  # a bad or lost source (file, mic, camera)

    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    try:
        return a.func(a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, OSError, SourceError) as e:
        if a.verbose:
            raise
        print(f"mlsan-edge {a.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
