"""Fit a checkpoint's `confidence.json` (temperature and feature distances; `mlsan_edge.confidence`).

Called by `mlsan-edge train` and `distill` after fitting; `export` copies the file into the bundle.

* The temperature's slope over the audio distance is fitted on speakers the network never
  trained on: EmoSpeech's calibration users (`data.emospeech.emospeech_calibration_speaker`:
  other microphones and people) and the RAVDESS actors left out of training, if any, each
  replayed as a causal stream exactly as evaluation does. Their calibration error before and
  after is recorded.
* Distances are quantiles of `feature_distance` over the training table's audio and visual
  rows (channel-augmented copies included: they are part of what the model learned).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlsan_edge.confidence import (CONFIDENCE_FILE, Confidence, distance_quantiles, fit_slope, fit_temperature,
                                   ood_rows, temper)
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


def fit_confidence(model, stats, train, held_out: list) -> Confidence:
    """Training distances from `train`; the temperature's slope over the audio distance fitted on
    `held_out` tables (causal speaker streams), its base held at 1 (see `mlsan_edge.confidence`)."""
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.train import predict

    distance = {}
    for m in ("audio", "visual"):
        x, mask = getattr(train, m), getattr(train, f"mask_{m}")
        if mask.sum() >= 20:
            distance[m] = distance_quantiles(x[mask], stats.mean[m], stats.var[m])
    if "audio" not in distance:
        return Confidence(1.0, distance, {"data": "none", "note": "no audio in training: no temperature"})
    knee = round(distance["audio"]["p50"] / distance["audio"]["p99"], 4)  # above the median training voice
    probs, labels, oods, names = [], [], [], []
    for t in held_out:
        keep = (t.label >= 0) & t.mask_audio
        if not keep.any():
            continue
        order = stream_order(t, shuffle_groups=set(np.unique(t.group).tolist()), seed=0)
        p = predict(model, t, order, stats)["probs"]
        ood = ood_rows(t.audio, t.mask_audio, stats.mean["audio"], stats.var["audio"], distance["audio"]["p99"])
        probs.append(p[keep]), labels.append(t.label[keep]), oods.append(ood[keep])
        names.append(f"{t.corpus} ({int(keep.sum())})")
    if not probs:
        log.warning("no held-out speakers to fit a temperature on: T = 1")
        return Confidence(1.0, distance, {"data": "none", "note": "no held-out speakers: temperature 1"}, 0.0, knee)
    p, y, ood = np.concatenate(probs), np.concatenate(labels), np.concatenate(oods)
    slope = fit_slope(p, y, ood, knee)
    conf = Confidence(1.0, distance, {}, round(slope, 4), knee)
    q = _tempered(conf, p, ood)
    fitted = {"data": ", ".join(names), "utterances": int(len(y)),
              "accuracy": round(float((p.argmax(1) == y).mean()), 4),
              "ece_before": round(calibration_error(p.max(1), p.argmax(1) == y), 4),
              "ece_after": round(calibration_error(q.max(1), q.argmax(1) == y), 4),
              "single_temperature_would_be": fit_temperature(p, y)}
    log.info("temperature slope %.2f above ood %.2f on %s: ECE %.3f -> %.3f", slope, knee, fitted["data"],
             fitted["ece_before"], fitted["ece_after"])
    return Confidence(1.0, distance, fitted, conf.slope, knee)


def calibrated_rows(conf: Confidence, probs: np.ndarray, table, stats) -> np.ndarray:
    """`probs` (N, C) of `table`'s rows as the device would report them (per-row temperature)."""
    p99 = conf.distance.get("audio", {}).get("p99")
    if not p99:
        return temper(probs, conf.temperature)
    return _tempered(conf, probs, ood_rows(table.audio, table.mask_audio, stats.mean["audio"], stats.var["audio"], p99))


def _tempered(conf: Confidence, probs: np.ndarray, ood: np.ndarray) -> np.ndarray:
    """Each row of `probs` at the temperature of its audio distance `ood` (NaN: the base)."""
    return temper(probs, np.array([conf.temperature_at(o) for o in ood])[:, None])


def write_confidence(out_dir: Path, conf: Confidence) -> Path:
    path = Path(out_dir) / CONFIDENCE_FILE
    path.write_text(json.dumps(conf.to_dict(), indent=2))
    return path
