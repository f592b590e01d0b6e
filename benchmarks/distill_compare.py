"""Teacher vs distilled student, and the student's FP32 vs INT8 graphs, on unseen data.

    python benchmarks/distill_compare.py --bundle runs/bundle_a1-16 --data ../shared/data

The bundle must come from a teacher and a student trained without RAVDESS actors 17-20
(`mlsan-edge train --actors 1-16`, `mlsan-edge distill`, `mlsan-edge export --student`).
Evaluated causally: RAVDESS actors 17-20 each as one seeded shuffled stream (`eval --stream`),
MELD dev in dialogue order. Writes benchmarks/results/distill.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the checkout: default data and results paths only
TEST_ACTORS = (17, 18, 19, 20)


def main(argv=None) -> int:
    import torch

    from mlsan_edge.bundle import load_bundle
    from mlsan_edge.config import EMOTIONS
    from mlsan_edge.data.extract import meld_table, ravdess_table
    from mlsan_edge.data.replay import stream_order
    from mlsan_edge.metrics import report
    from mlsan_edge.model.stages import stage_macs
    from mlsan_edge.backends.stages import Stages
    from mlsan_edge.data.replay import replay_table
    from mlsan_edge.train import load_checkpoint, predict

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    b = load_bundle(a.bundle)
    data = Path(a.data)
    enc = {r: b.path(r) for r in ("text_encoder", "voice_encoder")}
    rav = ravdess_table(data / "ravdess", enc["text_encoder"], enc["voice_encoder"], progress=False)
    rav = rav.subset(np.where(np.isin(rav.group, TEST_ACTORS))[0])
    meld = meld_table(data / "meld", "dev", enc["text_encoder"], progress=False)
    orders = {"ravdess": stream_order(rav, shuffle_groups=set(np.unique(rav.group).tolist()), seed=0),
              "meld": stream_order(meld)}
    tables = {"ravdess": rav, "meld": meld}

    def score(probs: dict) -> dict:
        r = report(rav.label, probs["ravdess"].argmax(1), EMOTIONS)
        m = report(meld.label, probs["meld"].argmax(1), EMOTIONS)
        return {"ravdess_unseen_stream_accuracy": r["accuracy"], "ravdess_unseen_weighted_f1": r["weighted_f1"],
                "meld_dev_weighted_f1": m["weighted_f1"], "meld_dev_accuracy": m["accuracy"]}

    res = {"bundle": str(b.root), "test_actors": list(TEST_ACTORS), "n_ravdess": len(rav), "n_meld_dev": len(meld)}
    for name in ("teacher", "student"):
        model, stats, doc = load_checkpoint(b.root / name)
        assert not set(TEST_ACTORS) & set(doc["data"]["ravdess_actors"]), f"{name} saw the test actors"
        macs = stage_macs(model)
        res[name] = {"params": model.n_params(), "macs_per_utterance": macs, "macs_total": sum(macs.values()),
                     "torch": score({k: predict(model, tables[k], orders[k], stats)["probs"] for k in tables})}
        for precision in ("fp32", "int8"):  # an ensemble teacher ships no graphs: torch only
            if not b.variants(f"{name}.stage2").get(precision):
                continue
            st = Stages(b, backend="onnxruntime", precision=precision, model=name, threads=1)
            res[name][f"onnxruntime_{precision}"] = {
                **score({k: replay_table(st, tables[k], orders[k])["probs"] for k in tables}),
                "graph_precisions": st.precisions}
        print(json.dumps({name: res[name]}, indent=2), flush=True)
    t, s = res["teacher"], res["student"]
    res["ratios"] = {"params": round(t["params"] / s["params"], 2), "macs": round(t["macs_total"] / s["macs_total"], 2)}
    gap = {k: round(t["torch"][k] - s["torch"][k], 2) for k in ("ravdess_unseen_stream_accuracy", "meld_dev_weighted_f1")}
    res["teacher_minus_student"] = gap
    res["distill_acceptance"] = {"params_5x": res["ratios"]["params"] >= 5, "macs_5x": res["ratios"]["macs"] >= 5,
                                 "within_1.5_points": all(g <= 1.5 for g in gap.values())}
    if "onnxruntime_int8" in s:
        d = {k: round(s["onnxruntime_fp32"][k] - s["onnxruntime_int8"][k], 2)
             for k in ("ravdess_unseen_stream_accuracy", "meld_dev_weighted_f1")}
        res["student_fp32_minus_int8"] = d
        res["int8_acceptance_within_1_point"] = all(x <= 1.0 for x in d.values())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in res if k not in ("teacher", "student")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
