"""What the MELD class weighting buys for the rare classes (fear, disgust).

    python benchmarks/rare_classes.py [--data ../shared/data]   # ~5 min here

Trains one teacher network (no ensemble) on the shipped recipe's data (`training_job.load_training_tables`:
every RAVDESS actor and its augmented copy, EmoSpeech's training users, MELD train) per class-weight power
p (weights ∝ frequency^-p on MELD rows: 0 = plain cross-entropy, 1 = fully balanced) and reports
MELD dev weighted/macro F1 and per-class F1. Writes benchmarks/results/rare_classes.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from mlsan_edge.config import EMOTIONS
    from mlsan_edge.data.extract import meld_table
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.metrics import report
    from mlsan_edge.train import TrainConfig, concat_tables, fit, model_config, predict
    from mlsan_edge.training_job import encoder_paths, load_training_tables

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--powers", default="0,0.5,1")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rare_classes.json"))
    a = p.parse_args(argv)
    data, enc = Path(a.data), encoder_paths()
    train = concat_tables(load_training_tables(data, enc))
    dev = meld_table(data / "meld", "dev", enc["text_encoder"], progress=False)
    results = {}
    for power in [float(x) for x in a.powers.split(",")]:
        model, stats, _ = fit(train, model_config("teacher"), TrainConfig(meld_weight_power=power), progress=False)
        r = report(dev.label, predict(model, dev, stream_order(dev), stats)["probs"].argmax(1), EMOTIONS)
        results[str(power)] = {k: r[k] for k in ("weighted_f1", "macro_f1", "accuracy", "per_class_f1")}
        print(power, json.dumps(results[str(power)]), flush=True)
    Path(a.out).write_text(json.dumps({"what": __doc__.split("\n\n")[0], "meld_dev": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
