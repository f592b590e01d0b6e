"""Leave-actors-out cross-validation with ablations. Entry point: `mlsan-edge crossval`.

For each fold (consecutive blocks of RAVDESS actors 1-20), seed and variant, one model is
trained on the other actors (and their channel-augmented copies), EmoSpeech's training users
and MELD train, then evaluated causally on (a) the held-out actors' original recordings in
`--stream` order and (b) MELD dev. The summary gives mean ± std over folds × seeds,
so a stage's gain can be told from noise, and pooled per-class F1 of the held-out predictions.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS
from mlsan_edge.metrics import report

log = logging.getLogger(__name__)

ABLATIONS = {
    "full": {},
    "no_stage1": {"use_stage1": False},
    "no_stage2": {"use_stage2": False},
    "no_stage3": {"use_stage3": False},
    "no_speaker": {"use_speaker": False},
}
N_ACTORS = 20


def run_crossval(data: Path, variants=("full",), folds: int = 5, seeds=(0,), config: str = "teacher",
                 epochs: int | None = None, text_dropout: float | None = None, ensemble: int | None = None,
                 json_out: Path | None = None,
                 progress: bool = True, only_folds: list[int] | None = None) -> dict:
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.train import concat_tables, fit, model_config, predict, train_config
    from mlsan_edge.training_job import encoder_paths, load_training_tables

    enc = encoder_paths()
    rav, *others = load_training_tables(data, enc)  # RAVDESS (+ augmented copies), EmoSpeech train, MELD train
    from mlsan_edge.data.extract import GROUP_STRIDE, meld_table
    from mlsan_edge.data.table import augmented_rows

    meld_dev = meld_table(data / "meld", "dev", enc["text_encoder"])
    from mlsan_edge.confidence_fit import calibrated_rows, calibration_tables, fit_confidence
    from mlsan_edge.evaluate import hide_modalities
    from mlsan_edge.metrics import calibration_error

    calib = calibration_tables(data, enc, None)  # EmoSpeech's calibration users
    actors = np.arange(1, N_ACTORS + 1)
    blocks = np.array_split(actors, folds)
    runs, pooled = [], {v: {"rav": ([], []), "meld": ([], [])} for v in variants}
    for variant in variants:
        for seed in seeds:
            for k, test_actors in enumerate(blocks):
                if only_folds is not None and k not in only_folds:  # a share of the folds (another process runs the rest)
                    continue
                t0 = time.time()
                held = np.isin(rav.group % GROUP_STRIDE, test_actors)  # the actors and their augmented copies
                te = held & ~augmented_rows(rav.speaker)  # evaluated on the original recordings
                train = concat_tables([rav.subset(np.where(~held)[0]), *others])
                mc = model_config(config, **ABLATIONS[variant],
                                  **({} if text_dropout is None else {"text_dropout": text_dropout}))
                tc = train_config(config, seed=seed, **({} if epochs is None else {"epochs": epochs}),
                                  **({} if ensemble is None else {"ensemble": ensemble}))
                model, stats, _ = fit(train, mc, tc, progress=progress)
                test = rav.subset(np.where(te)[0])
                order = stream_order(test, shuffle_groups=set(np.unique(test.group).tolist()), seed=0)
                probs = predict(model, test, order, stats)["probs"]
                p_rav = probs.argmax(1)
                # the temperature as the bundle's is fitted (held-out EmoSpeech users), its ECE here
                conf = fit_confidence(model, stats, train, calib)
                cal = calibrated_rows(conf, probs, test, stats)
                # what `mlsan-edge run` sees without a camera: the same stream, audio only
                audio = hide_modalities(test.subset(np.arange(len(test))), ("audio",))
                probs_a = predict(model, audio, order, stats)["probs"]
                cal_a = calibrated_rows(conf, probs_a, audio, stats)
                p_meld = predict(model, meld_dev, stream_order(meld_dev), stats)["probs"].argmax(1)
                r_rav, r_meld = report(test.label, p_rav, EMOTIONS), report(meld_dev.label, p_meld, EMOTIONS)
                run = {"variant": variant, "seed": seed, "fold": k, "test_actors": test_actors.tolist(),
                       "ravdess_stream_accuracy": r_rav["accuracy"], "ravdess_weighted_f1": r_rav["weighted_f1"],
                       "meld_dev_weighted_f1": r_meld["weighted_f1"], "meld_dev_accuracy": r_meld["accuracy"],
                       "ravdess_ece": round(100 * calibration_error(probs.max(1), p_rav == test.label), 2),
                       "temperature_slope": conf.slope,
                       "ravdess_ece_calibrated": round(100 * calibration_error(cal.max(1), p_rav == test.label), 2),
                       "ravdess_audio_accuracy": round(100 * float((probs_a.argmax(1) == test.label).mean()), 2),
                       "ravdess_audio_ece_calibrated": round(
                           100 * calibration_error(cal_a.max(1), probs_a.argmax(1) == test.label), 2),
                       "epochs": tc.epochs, "ensemble": tc.ensemble, "text_dropout": mc.text_dropout, "seconds": round(time.time() - t0, 1)}
                runs.append(run)
                log.info("%s", run)
                pooled[variant]["rav"][0].append(test.label), pooled[variant]["rav"][1].append(p_rav)
                pooled[variant]["meld"][0].append(meld_dev.label), pooled[variant]["meld"][1].append(p_meld)
                if json_out:  # partial results survive an interrupted run
                    _write(json_out, runs, variants, pooled)
                    _save_predictions(json_out, run, test, stats, conf, probs, probs_a)
    res = _write(json_out, runs, variants, pooled) if json_out else _summary(runs, variants, pooled)
    return res


def _save_predictions(json_out: Path, run: dict, test, stats, conf, probs, probs_a) -> None:
    """The fold's held-out probabilities (all modalities, audio only), labels and audio distances,
    beside the JSON (`<name>.<variant>.s<seed>.f<fold>.npz`), so calibration choices can be
    measured on them afterwards without retraining."""
    from mlsan_edge.confidence import ood_rows

    p99 = conf.distance.get("audio", {}).get("p99") or 1.0
    path = Path(json_out).with_suffix(f".{run['variant']}.s{run['seed']}.f{run['fold']}.npz")
    np.savez_compressed(path, probs=probs.astype(np.float32), probs_audio=probs_a.astype(np.float32),
                        label=test.label, speaker=test.speaker.astype(str),
                        ood=ood_rows(test.audio, test.mask_audio, stats.mean["audio"], stats.var["audio"], p99),
                        slope=conf.slope, knee=conf.knee)


def _summary(runs, variants, pooled) -> dict:
    summary = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        if not rs:
            continue
        s = {"n_runs": len(rs)}
        for key in ("ravdess_stream_accuracy", "meld_dev_weighted_f1", "ravdess_ece", "ravdess_ece_calibrated",
                    "ravdess_audio_accuracy", "ravdess_audio_ece_calibrated"):
            if any(key not in r for r in rs):
                continue
            vals = np.array([r[key] for r in rs])
            s[key] = {"mean": round(float(vals.mean()), 2), "std": round(float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, 2)}
        for corpus in ("rav", "meld"):
            y, p = np.concatenate(pooled[v][corpus][0]), np.concatenate(pooled[v][corpus][1])
            s[f"{corpus}_pooled_per_class_f1"] = report(y, p, EMOTIONS)["per_class_f1"]
        summary[v] = s
    return {"summary": summary, "runs": runs}


def _write(path: Path, runs, variants, pooled) -> dict:
    res = _summary(runs, variants, pooled)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2))
    try:
        plot_ablation(res["summary"], path.with_suffix(".png"))
    except Exception as e:  # a plot is a convenience; never lose the numbers over it
        log.warning("could not draw the ablation plot: %s", e)
    return res


def plot_ablation(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for ax, key, title in zip(axes, ("ravdess_stream_accuracy", "meld_dev_weighted_f1"),
                              ("RAVDESS unseen actors, stream: accuracy %", "MELD dev: weighted F1")):
        m = [summary[n][key]["mean"] for n in names]
        s = [summary[n][key]["std"] for n in names]
        ax.bar(range(len(names)), m, yerr=s, capsize=4, color=["#2b6cb0"] + ["#a0aec0"] * (len(names) - 1))
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylim(min(m) - 10, max(m) + 5)
        ax.set_title(title, fontsize=9)
        for i, (mi, si) in enumerate(zip(m, s)):
            ax.text(i, mi + si + 0.3, f"{mi:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
