"""Fit a checkpoint's `confidence.json` (temperature and feature distances; `mlsan_edge.confidence`).

Called by `mlsan-edge train` and `distill` after fitting; `export` copies the file into the bundle.

* The audio-only base temperature and the slope over the audio distance are fitted on speakers
  the network never trained on, heard audio only: EmoSpeech's calibration users
  (`data.emospeech.emospeech_calibration_speaker`: other microphones and people) and the RAVDESS
  actors left out of training, if any, each replayed as a causal stream exactly as evaluation
  does. Their calibration error before and after is recorded. The base when a face is used is
  1 unless given (cross-validation fits it: `benchmarks/crossval_calibration.py`).
* Distances are quantiles of `feature_distance` over the training table's audio and visual
  rows (channel-augmented copies included: they are part of what the model learned).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlsan_edge.confidence import (CONFIDENCE_FILE, Confidence, distance_quantiles, fit_base_and_slope,
                                   fit_temperature, ood_rows, temper)
from mlsan_edge.metrics import calibration_error

log = logging.getLogger(__name__)


def calibration_tables(data: Path, enc: dict, trained_actors: list[int] | None) -> list:
    """Held-out tables to fit the temperature on (possibly empty)."""
    from mlsan_edge.data.extract import emospeech_table, ravdess_table

    tables = []
    if (data / "emospeech").is_dir():
        tables.append(emospeech_table(data / "emospeech", enc["text_encoder"], enc["voice_encoder"],
                                      split="calibration", vad=enc.get("vad")))
    if trained_actors and (data / "ravdess").is_dir():
        rest = [a for a in range(1, 25) if a not in set(trained_actors)]
        try:
            tables.append(ravdess_table(data / "ravdess", enc["text_encoder"], enc["voice_encoder"], actors=rest,
                                        vad=enc.get("vad")))
        except ValueError:  # no clips of those actors here
            pass
    return tables


def fit_confidence(model, stats, train, held_out: list, temperature: float = 1.0) -> Confidence:
    """Training distances from `train`; from the `held_out` tables (causal speaker streams) heard
    audio only, as the device hears them without a face, the audio-only base temperature and the
    slope over the audio distance (`fit_base_and_slope`). `temperature`, the base when a face is
    used, is given (1, or fitted on cross-validation: `benchmarks/crossval_calibration.py`)."""
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.evaluate import hide_modalities
    from mlsan_edge.train import predict

    distance = {}
    for m in ("audio", "visual"):
        x, mask = getattr(train, m), getattr(train, f"mask_{m}")
        if mask.sum() >= 20:
            distance[m] = distance_quantiles(x[mask], stats.mean[m], stats.var[m])
    if "audio" not in distance:
        return Confidence(temperature, distance, {"data": "none", "note": "no audio in training: no temperature"})
    knee = round(distance["audio"]["p50"] / distance["audio"]["p99"], 4)  # above the median training voice
    probs, labels, oods, names = [], [], [], []
    for t in held_out:
        keep = (t.label >= 0) & t.mask_audio
        if not keep.any():
            continue
        t = hide_modalities(t.subset(np.arange(len(t))), ("audio",))
        order = stream_order(t, shuffle_groups=set(np.unique(t.group).tolist()), seed=0)
        p = predict(model, t, order, stats)["probs"]
        ood = ood_rows(t.audio, t.mask_audio, stats.mean["audio"], stats.var["audio"], distance["audio"]["p99"])
        probs.append(p[keep]), labels.append(t.label[keep]), oods.append(ood[keep])
        names.append(f"{t.corpus} ({int(keep.sum())})")
    if not probs:
        log.warning("no held-out speakers to fit a temperature on: T = %s", temperature)
        return Confidence(temperature, distance, {"data": "none", "note": "no held-out speakers"}, 0.0, knee)
    p, y, ood = np.concatenate(probs), np.concatenate(labels), np.concatenate(oods)
    base, slope = fit_base_and_slope(p, y, ood, knee)
    conf = Confidence(temperature, distance, {}, round(slope, 4), knee, base)
    q = _tempered(conf, p, ood, audio_only=True)
    fitted = {"data": ", ".join(names) + ", audio only", "utterances": int(len(y)),
              "accuracy": round(float((p.argmax(1) == y).mean()), 4),
              "ece_before": round(calibration_error(p.max(1), p.argmax(1) == y), 4),
              "ece_after": round(calibration_error(q.max(1), q.argmax(1) == y), 4),
              "single_temperature_would_be": fit_temperature(p, y)}
    log.info("audio-only temperature %.2f + %.2f above ood %.2f on %s: ECE %.3f -> %.3f", base, slope, knee,
             fitted["data"], fitted["ece_before"], fitted["ece_after"])
    return Confidence(temperature, distance, fitted, conf.slope, knee, base)


def calibrated_rows(conf: Confidence, probs: np.ndarray, table, stats) -> np.ndarray:
    """`probs` (N, C) of `table`'s rows as the device would report them (per-row temperature; a
    row without a visual vector is heard audio only)."""
    p99 = conf.distance.get("audio", {}).get("p99")
    ood = (ood_rows(table.audio, table.mask_audio, stats.mean["audio"], stats.var["audio"], p99) if p99
           else np.full(len(probs), np.nan))
    return _tempered(conf, probs, ood, audio_only=~np.asarray(table.mask_visual, bool))


def _tempered(conf: Confidence, probs: np.ndarray, ood: np.ndarray, audio_only=False) -> np.ndarray:
    """Each row of `probs` at the temperature of its audio distance `ood` (NaN: the base) and of
    whether it was heard without a face (`audio_only`: a bool or one per row)."""
    audio_only = np.broadcast_to(np.asarray(audio_only, bool), (len(probs),))
    return temper(probs, np.array([conf.temperature_at(o, a) for o, a in zip(ood, audio_only)])[:, None])


def crossfit_temperature(folds: list[dict]) -> dict:
    """The base temperature when a face is used, cross-fitted on cross-validation's held-out actors.

    `folds`: one dict per fold with its held-out `probs` (N, C) heard with every modality, `label`
    (N,), audio distance `ood` (N,) and the fold model's `slope` and `knee` (the `.npz` files
    `mlsan-edge crossval --json` writes). For each fold the base is fitted on the *other* folds
    and its ECE measured on this one (nested: no fold calibrates itself); the returned
    `temperature` is fitted on all folds, for the model trained on every actor.
    """
    def fit(fs: list[dict]) -> float:
        grid = np.round(np.arange(0.5, 3.001, 0.02), 2)
        nll = [sum(_nll_at(f, t) for f in fs) for t in grid]
        return float(grid[int(np.argmin(nll))])

    rows, before, after = [], [], []
    for k, f in enumerate(folds):
        t = fit([g for j, g in enumerate(folds) if j != k])
        p, q = f["probs"], _tempered(_fold_conf(f, t), f["probs"], f["ood"])
        ok_p, ok_q = p.argmax(1) == f["label"], q.argmax(1) == f["label"]
        rows.append({"fold": k, "temperature": t, "ece_before": round(100 * calibration_error(p.max(1), ok_p), 2),
                     "ece_after": round(100 * calibration_error(q.max(1), ok_q), 2)})
        before.append((p.max(1), ok_p)), after.append((q.max(1), ok_q))
    pooled = lambda xs: round(100 * calibration_error(np.concatenate([c for c, _ in xs]),  # noqa: E731
                                                      np.concatenate([o for _, o in xs])), 2)
    return {"temperature": fit(folds), "folds": rows,
            "ece_before_mean": round(float(np.mean([r["ece_before"] for r in rows])), 2),
            "ece_after_mean": round(float(np.mean([r["ece_after"] for r in rows])), 2),
            "ece_before_pooled": pooled(before), "ece_after_pooled": pooled(after)}


def _fold_conf(f: dict, temperature: float) -> Confidence:
    return Confidence(temperature, {}, {}, float(f["slope"]), float(f["knee"]))


def _nll_at(f: dict, temperature: float) -> float:
    q = _tempered(_fold_conf(f, temperature), f["probs"], f["ood"])
    return float(-np.log(np.clip(q[np.arange(len(f["label"])), f["label"]], 1e-12, 1)).sum())


def crossval_folds(crossval_json: Path) -> list[dict]:
    """The held-out predictions `mlsan-edge crossval --json X.json` saved beside X.json (variant "full")."""
    paths = sorted(Path(crossval_json).parent.glob(Path(crossval_json).stem + ".full.s*.f*.npz"))
    if not paths:
        raise FileNotFoundError(f"no held-out predictions beside {crossval_json} (expected "
                                f"{Path(crossval_json).stem}.full.s0.f0.npz, ...): run `mlsan-edge crossval --json` again")
    return [dict(np.load(p)) for p in paths]


def write_confidence(out_dir: Path, conf: Confidence) -> Path:
    path = Path(out_dir) / CONFIDENCE_FILE
    path.write_text(json.dumps(conf.to_dict(), indent=2))
    return path
