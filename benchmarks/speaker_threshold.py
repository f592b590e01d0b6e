"""Tune the speaker cache's threshold on real voices, on actors the scorer never saw (RAVDESS 1-20).

Each clip's voice embedding is the training table's (`mlsan_edge.data.extract`: the clip cut by
the runtime's VAD, embedded by the device's `VoiceEncoder`), so these are the voices the device
sees. Five folds of four actors: the `VoiceScorer` is fitted on the other sixteen, and shuffled
streams of the four held-out actors go through a fresh `SpeakerCache` (the real code, in memory).
The same streams also run without auto-merge, and with plain cosine matching and no merging
(the cache before the scorer), for comparison.

Streams (per fold, seeded):
* tune: 3-4 actors x 10-30 clips each — the threshold is chosen here;
* 4x15: 4 actors x 15 clips (benchmarks/device_accuracy.py --clips 15);
* 4x60: 4 actors x all 60 clips (device_accuracy's default).

Per threshold, pooled over folds and streams:
* false-merge rate: of the pairs of clips by *different* actors, the fraction put in one speaker;
* false-split rate: of the pairs of clips by the *same* actor, the fraction put in different speakers;
* purity: fraction of clips whose speaker's majority actor is theirs;
* coverage: fraction of clips in their actor's largest speaker.

Chosen: the highest coverage on the tune streams among thresholds with purity >= 0.96 there and
>= 0.95 on every kind of stream (4 actors mix worse than 3: one tuned on `tune` alone fell to 0.92
purity on the 4-actor streams). `mlsan-edge train` stores it with the
scorer it fits (`mlsan_edge.features.voice_scorer.DEFAULT_SCORE_THRESHOLD`).

    python benchmarks/speaker_threshold.py [--data ../shared/data/ravdess] [--trials 30]

Writes benchmarks/results/speaker_threshold.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from mlsan_edge.features.voice_scorer import VoiceScorer
from mlsan_edge.metrics import purity_coverage
from mlsan_edge.runtime.speakers import SpeakerCache

REPO = Path(__file__).resolve().parents[1]  # the checkout: default data and results paths only

SCORE_THRESHOLDS = np.round(np.arange(-0.6, 2.01, 0.1), 2)
COSINE_THRESHOLDS = np.round(np.arange(0.55, 0.951, 0.025), 3)
MIN_PURITY = 0.96
MIN_PURITY_ALL = 0.95
PROTOCOLS = {"tune": ((3, 4), (10, 30)), "4x15": ((4, 4), (15, 15)), "4x60": ((4, 4), (60, 60))}
FOLDS = [list(range(1 + 4 * f, 5 + 4 * f)) for f in range(5)]


def voices(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256) VAD-cut voice embeddings of every clip and (n,) actor numbers (feature table)."""
    from mlsan_edge.data.extract import ravdess_table
    from mlsan_edge.training_job import encoder_paths

    enc = encoder_paths()
    t = ravdess_table(data, enc["text_encoder"], enc["voice_encoder"])
    return t.voice, t.group.astype(int)


def draw(actor: np.ndarray, pool: list[int], n: int, n_act: tuple[int, int], n_clip: tuple[int, int],
         seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        who = rng.choice(pool, size=int(rng.integers(n_act[0], n_act[1] + 1)), replace=False)
        idx = [rng.permutation(np.where(actor == a)[0])[:int(rng.integers(n_clip[0], n_clip[1] + 1))] for a in who]
        out.append(rng.permutation(np.concatenate(idx)))
    return out


def run_stream(emb: np.ndarray, idx: np.ndarray, threshold: float, scorer: VoiceScorer | None,
               auto_merge: bool = True) -> np.ndarray:
    """Speaker ids the cache emits for the clips `idx`, in order (later merges do not rewrite them)."""
    cache = SpeakerCache(":memory:", threshold=threshold, scorer=scorer, auto_merge=auto_merge)
    out = np.asarray([cache.identify(emb[i], now=float(k)).speaker_id for k, i in enumerate(idx)])
    cache.close()
    return out


def counts(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """[different pairs, merged, same pairs, split, clips, pure, covered, speakers, actors]."""
    same_t = truth[:, None] == truth[None, :]
    same_p = pred[:, None] == pred[None, :]
    off = ~np.eye(len(truth), dtype=bool)
    pur, cov = purity_coverage(truth, pred)
    n = len(truth)
    return np.array([(~same_t).sum(), (~same_t & same_p).sum(), (same_t & off).sum(), (same_t & ~same_p & off).sum(),
                     n, round(pur * n), round(cov * n), len(np.unique(pred)), len(np.unique(truth))], np.int64)


def rates(c: np.ndarray) -> dict[str, float]:
    return {"false_merge_rate": round(c[1] / max(c[0], 1), 4), "false_split_rate": round(c[3] / max(c[2], 1), 4),
            "purity": round(c[5] / c[4], 4), "coverage": round(c[6] / c[4], 4),
            "speakers_per_actor": round(c[7] / c[8], 2)}


def sweep(emb, actor, trials, thresholds, use_scorer: bool, auto_merge: bool) -> dict[str, dict[float, np.ndarray]]:
    """protocol -> threshold -> (5, 9) counts per fold."""
    res = {p: {float(t): np.zeros((len(FOLDS), 9), np.int64) for t in thresholds} for p in PROTOCOLS}
    for f, test in enumerate(FOLDS):
        train = ~np.isin(actor, test)
        scorer = VoiceScorer.fit(emb[train], actor[train]) if use_scorer else None
        for p in PROTOCOLS:
            for idx in trials[p][f]:
                for t in thresholds:
                    res[p][float(t)][f] += counts(actor[idx], run_stream(emb, idx, float(t), scorer, auto_merge))
    return res


def summarise(res) -> dict:
    out = {}
    for p, by_t in res.items():
        out[p] = [{"threshold": t, **rates(c.sum(0)),
                   "fold_purity": [round(r[5] / r[4], 3) for r in c], "fold_coverage": [round(r[6] / r[4], 3) for r in c]}
                  for t, c in by_t.items()]
    return out


def choose(rows: dict[str, list[dict]]) -> dict:
    """The tune row with the most coverage among thresholds with purity >= MIN_PURITY on the tune
    streams and >= MIN_PURITY_ALL on every stream kind (else the purest tune row)."""
    ok = [i for i, r in enumerate(rows["tune"]) if r["purity"] >= MIN_PURITY
          and all(rows[p][i]["purity"] >= MIN_PURITY_ALL for p in rows)]
    if not ok:
        return max(rows["tune"], key=lambda r: r["purity"])
    return max((rows["tune"][i] for i in ok), key=lambda r: (r["coverage"], r["purity"]))


def pairwise_eer(emb: np.ndarray, actor: np.ndarray, scorer: VoiceScorer | None) -> float:
    x = scorer.project(emb) if scorer is not None else emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = x @ x.T
    same = actor[:, None] == actor[None, :]
    iu = np.triu_indices(len(actor), 1)
    s, d = sims[iu][same[iu]], sims[iu][~same[iu]]
    ths = np.quantile(sims[iu], np.linspace(0, 1, 1001))
    far = np.array([(d >= t).mean() for t in ths])
    frr = np.array([(s < t).mean() for t in ths])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ravdess")
    ap.add_argument("--trials", type=int, default=30, help="streams per fold and protocol")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speaker_threshold.json")
    ap.add_argument("--reuse", action="store_true", help="take the sweeps from --out instead of recomputing them")
    args = ap.parse_args()

    emb, actor = voices(args.data)
    print(f"{len(emb)} clips of {len(np.unique(actor))} actors", flush=True)
    trials = {p: [draw(actor, test, args.trials if p != "4x60" else max(2, args.trials // 6), na, nc,
                       args.seed + 100 * f + k) for f, test in enumerate(FOLDS)]
              for k, (p, (na, nc)) in enumerate(PROTOCOLS.items())}
    t0 = time.time()
    modes = {"cosine_merge": (COSINE_THRESHOLDS, False, True), "cosine_no_merge": (COSINE_THRESHOLDS, False, False),
             "scorer_merge": (SCORE_THRESHOLDS, True, True)}
    if args.reuse:  # re-select and re-plot from a previous run's sweeps (the sweeps take ~25 min)
        sweeps = json.loads(args.out.read_text())["sweep"]
    else:
        sweeps = {m: summarise(sweep(emb, actor, trials, th, sc, mg)) for m, (th, sc, mg) in modes.items()}
    chosen = {}
    for m, rows in sweeps.items():
        best = choose(rows)
        chosen[m] = {"threshold": best["threshold"],
                     **{p: next(r for r in rows[p] if r["threshold"] == best["threshold"]) for p in PROTOCOLS}}
        print(f"{m}: threshold {best['threshold']}")
        for p in PROTOCOLS:
            r = chosen[m][p]
            print(f"  {p:5s} purity {r['purity']:.3f} coverage {r['coverage']:.3f} false-merge {r['false_merge_rate']:.4f} "
                  f"false-split {r['false_split_rate']:.3f}  folds purity {r['fold_purity']} coverage {r['fold_coverage']}")
    eer = {"cosine": [], "scorer": []}
    for test in FOLDS:
        tr, te = ~np.isin(actor, test), np.isin(actor, test)
        eer["cosine"].append(pairwise_eer(emb[te], actor[te], None))
        eer["scorer"].append(pairwise_eer(emb[te], actor[te], VoiceScorer.fit(emb[tr], actor[tr])))
    print(f"pairwise EER on held-out actors: cosine {np.mean(eer['cosine']):.3f}, scorer projection "
          f"{np.mean(eer['scorer']):.3f} ({time.time() - t0:.0f} s)")

    import onnxruntime

    result = {
        "what": "speaker-cache threshold, tuned on RAVDESS actors never seen by the scorer (5 folds of 4 actors)",
        "protocol": {"trials_per_fold": args.trials, "streams": {p: {"actors": na, "clips_per_actor": nc}
                                                                 for p, (na, nc) in PROTOCOLS.items()},
                     "order": "shuffled", "seed": args.seed, "selection": f"max tune coverage with tune purity >= {MIN_PURITY} "
                     f"and purity >= {MIN_PURITY_ALL} on every stream kind"},
        "chosen": chosen,
        "pairwise_eer_heldout": {k: round(float(np.mean(v)), 4) for k, v in eer.items()},
        "sweep": sweeps,
        "env": {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
                "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(sweeps, chosen, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(sweeps: dict, chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4))
    for ax, (mode, rows) in zip(axes, sweeps.items()):
        rows = rows["tune"]
        th = [r["threshold"] for r in rows]
        ax.plot(th, [r["purity"] for r in rows], "o-", label="purity")
        ax.plot(th, [r["coverage"] for r in rows], "s-", label="coverage")
        ax.plot(th, [r["false_merge_rate"] for r in rows], ":", label="false-merge rate (pairs)")
        ax.axhline(0.95, color="grey", lw=0.8, ls=":")
        ax.axhline(0.80, color="grey", lw=0.8, ls=":")
        c = chosen[mode]
        ax.axvline(c["threshold"], color="k", lw=0.8, ls="--")
        ax.set_xlabel("threshold (" + ("AS-norm score" if mode.startswith("scorer") else "cosine") + ")")
        ax.set_title(f"{mode}: {c['threshold']} -> purity {c['tune']['purity']:.2f}, coverage {c['tune']['coverage']:.2f}",
                     fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Speaker cache on shuffled streams of unseen RAVDESS actors (5 folds; 3-4 actors x 10-30 clips)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
