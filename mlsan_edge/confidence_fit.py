"""Fit a checkpoint's `confidence.json` (temperature and feature distances; `mlsan_edge.confidence`).

Called by `mlsan-edge train` and `distill` after fitting; `export` copies the file into the bundle.

* The audio-only base temperature and the slope over the audio distance are fitted on speakers
  the network never trained on, heard audio only: EmoSpeech's calibration users
  (`data.emospeech.emospeech_calibration_speaker`: other microphones and people) and the RAVDESS
  actors left out of training, if any, each replayed as a causal stream exactly as evaluation
  does. Their calibration error before and after is recorded. The base when a face is used is
  1 unless given; `mlsan-edge calibrate --crossval` fits it on cross-validation's held-out actors.
* Distances are quantiles of `feature_distance` over the training table's audio and visual
  rows (channel-augmented copies included: they are part of what the model learned).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlsan_edge.confidence import (CONFIDENCE_FILE, Confidence, distance_quantiles, fit_base_and_slope, nll, ood_rows,
                                   temper)
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


def fit_confidence(model, stats, train, held_out: list, temperature: float = 1.0,
                   crossval: list[dict] | None = None) -> Confidence:
    """Training distances from `train`; the temperatures from held-out speakers (`fit_temperatures`).

    Audio only: the `held_out` tables (causal speaker streams, never trained on) heard audio only,
    as the device hears them without a face, plus, when given, the `crossval` folds' held-out
    actors heard audio only. With a face: the `crossval` folds heard with every modality; without
    them the base stays `temperature`."""
    distance = {}
    for m in ("audio", "visual"):
        x, mask = getattr(train, m), getattr(train, f"mask_{m}")
        if mask.sum() >= 20:
            distance[m] = distance_quantiles(x[mask], stats.mean[m], stats.var[m])
    if "audio" not in distance:
        return Confidence(temperature, distance, {"data": "none", "note": "no audio in training: no temperature"})
    knee = round(distance["audio"]["p50"] / distance["audio"]["p99"], 4)  # above the median training voice
    audio = held_out_audio(model, stats, held_out, distance["audio"]["p99"])
    if audio is None and not crossval:
        log.warning("no held-out speakers to fit a temperature on: T = %s", temperature)
        return Confidence(temperature, distance, {"data": "none", "note": "no held-out speakers"}, 0.0, knee)
    extra = [audio] if audio is not None else []
    fit = fit_temperatures([*extra, *(_fold_audio(f) for f in crossval or [])],
                           [_fold_face(f) for f in crossval or []], knee, temperature)
    conf = Confidence(fit["temperature"], distance, {}, fit["slope"], knee, fit["temperature_audio_only"])
    folds = [f"cross-validation held-out actors ({sum(len(f['label']) for f in crossval)})"] if crossval else []
    fitted = {"audio_only": ", ".join([*(audio["names"] if audio else []), *folds]),
              "face": folds[0] if folds else "none (base given)"}
    if audio is not None:
        q = _tempered(conf, audio["probs"], audio["ood"], audio_only=True)
        p, y = audio["probs"], audio["label"]
        fitted.update(utterances=int(len(y)), accuracy=round(float((p.argmax(1) == y).mean()), 4),
                      ece_before=round(calibration_error(p.max(1), p.argmax(1) == y), 4),
                      ece_after=round(calibration_error(q.max(1), q.argmax(1) == y), 4))
    if crossval:
        fitted["crossval_nested"] = crossfit(crossval, extra, knee, temperature)
    log.info("temperatures: face %.2f, audio only %.2f, + %.2f per ood above %.2f (%s)", conf.temperature,
             conf.temperature_audio_only, conf.slope, knee, fitted["audio_only"])
    return Confidence(conf.temperature, distance, fitted, conf.slope, knee, conf.temperature_audio_only)


def held_out_audio(model, stats, tables: list, p99: float) -> dict | None:
    """Probabilities, labels and audio distances of `tables`' labelled rows, each table replayed
    as causal speaker streams heard audio only (None when there are none)."""
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.evaluate import hide_modalities
    from mlsan_edge.train import predict

    probs, labels, oods, names = [], [], [], []
    for t in tables:
        keep = (t.label >= 0) & t.mask_audio
        if not keep.any():
            continue
        t = hide_modalities(t.subset(np.arange(len(t))), ("audio",))
        order = stream_order(t, shuffle_groups=set(np.unique(t.group).tolist()), seed=0)
        p = predict(model, t, order, stats)["probs"]
        ood = ood_rows(t.audio, t.mask_audio, stats.mean["audio"], stats.var["audio"], p99)
        probs.append(p[keep]), labels.append(t.label[keep]), oods.append(ood[keep])
        names.append(f"{t.corpus} ({int(keep.sum())})")
    if not probs:
        return None
    return {"probs": np.concatenate(probs), "label": np.concatenate(labels), "ood": np.concatenate(oods),
            "names": names}


def fit_temperatures(audio: list[dict], face: list[dict], knee: float, temperature: float = 1.0) -> dict:
    """The device's temperatures from held-out predictions (dicts of probs, label, ood).

    `audio` (heard audio only) gives the audio-only base and the slope over the audio distance
    (`fit_base_and_slope`); `face` (heard with face features as training saw them) the base when a
    face is used, with that slope (`temperature` when `face` is empty)."""
    cat = lambda sets, k: np.concatenate([s[k] for s in sets])  # noqa: E731
    base, slope = fit_base_and_slope(cat(audio, "probs"), cat(audio, "label"), cat(audio, "ood"), knee) \
        if audio else (temperature, 0.0)
    if face:
        p, y, excess = cat(face, "probs"), cat(face, "label"), np.nan_to_num(np.maximum(0.0, cat(face, "ood") - knee))
        grid = np.round(np.arange(0.5, 3.001, 0.02), 2)
        temperature = float(grid[int(np.argmin([nll(p, y, t + slope * excess) for t in grid]))])
    return {"temperature": temperature, "temperature_audio_only": base, "slope": round(slope, 4)}


def crossfit(folds: list[dict], extra_audio: list[dict], knee: float, temperature: float = 1.0) -> dict:
    """Nested check of `fit_temperatures` on cross-validation's folds: for each fold, the
    temperatures are fitted on the *other* folds (and `extra_audio`) and its held-out actors' ECE
    measured with them, heard with every modality and audio only; per fold, their mean, and pooled
    over every held-out actor (each utterance scored by a model that never heard its speaker)."""
    rows, pooled = [], {}
    for k, f in enumerate(folds):
        rest = [g for j, g in enumerate(folds) if j != k]
        t = fit_temperatures([*extra_audio, *map(_fold_audio, rest)], [_fold_face(g) for g in rest], knee, temperature)
        conf = Confidence(t["temperature"], {}, {}, t["slope"], knee, t["temperature_audio_only"])
        row = {"fold": k, **t}
        for name, sample, audio_only in (("face", _fold_face(f), False), ("audio_only", _fold_audio(f), True)):
            for when, q in (("before", sample["probs"]),
                            ("after", _tempered(conf, sample["probs"], sample["ood"], audio_only))):
                conf_ok = (q.max(1), q.argmax(1) == sample["label"])
                row[f"ece_{name}_{when}"] = round(100 * calibration_error(*conf_ok), 2)
                pooled.setdefault(f"ece_{name}_{when}_pooled", []).append(conf_ok)
        rows.append(row)
    out = {"folds": rows}
    out.update({f"{k}_mean": round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0] if k.startswith("ece_")})
    out.update({k: round(100 * calibration_error(np.concatenate([c for c, _ in v]), np.concatenate([o for _, o in v])), 2)
                for k, v in pooled.items()})
    return out


def _fold_face(f: dict) -> dict:
    return {"probs": f["probs"], "label": f["label"], "ood": f["ood"]}


def _fold_audio(f: dict) -> dict:
    return {"probs": f["probs_audio"], "label": f["label"], "ood": f["ood"]}


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
