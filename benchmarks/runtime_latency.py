"""Processing after the end of an utterance, through the whole runtime (no ASR).

A stream of RAVDESS clips (several actors, in a seeded shuffled order) joined with 1 s of
silence is written to a temporary FLAC and played through `Runtime.stream` *paced in real time*
(`file://...?realtime=1`), so the VAD sees it as a live microphone: voice partials are embedded
while the clip plays, and `total_after_end` runs from the VAD chunk that closed the utterance to
the event being ready (voice tail, speaker cache, audio features, stages 1-3). Warm-up: the
first `--warmup` utterances are left out of the statistics.

Stages: the real `mlsan_edge.backends.stages.Stages` of `--bundle` (it must have stage graphs,
as the default bundle does). Runs against the installed package (editable or not):

    python benchmarks/runtime_latency.py [--data ../shared/data/ravdess/audio16k] [--clips 24]

Writes benchmarks/results/runtime_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from mlsan_edge.backends.stages import Stages
from mlsan_edge.config import TEXT_DIM, VISUAL_DIM
from mlsan_edge.features.audio import AUDIO_DIM, load_audio
from mlsan_edge.runtime.events import STEPS
from mlsan_edge.runtime.load import bundle_voice_scorer, has_voice_scorer
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.session import Runtime
from mlsan_edge.runtime.speakers import SpeakerCache

REPO = Path(__file__).resolve().parents[1]  # the checkout: default data and results paths only


def build_stream(data: Path, actors: list[int], clips: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    files = [f for a in actors for f in sorted((data / f"Actor_{a:02d}").glob("*.flac"))]
    pick = [files[i] for i in rng.choice(len(files), size=min(clips, len(files)), replace=False)]
    gap = np.zeros(16000, np.float32)
    parts = [gap]
    for f in pick:
        parts += [load_audio(f), gap]
    return np.concatenate(parts), [f.name for f in pick]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ravdess" / "audio16k"))
    p.add_argument("--actors", default="17,18,19,20")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", default="default")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "runtime_latency.json"))
    a = p.parse_args()
    wav, names = build_stream(Path(a.data), [int(x) for x in a.actors.split(",")], a.clips, a.seed)
    stages, which = Stages(a.bundle), f"real ({a.bundle})"
    dims = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.flac"
        sf.write(path, wav, 16000)
        bundle = stages.bundle  # the bundle's voice scorer, as load_runtime uses it
        scorer = bundle_voice_scorer(bundle) if has_voice_scorer(bundle) else None
        rt = Runtime(stages, SpeakerCache(":memory:", dims=dims, scorer=scorer), RuntimeConfig(face="none"))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            events = list(rt.stream(audio=f"file://{path}?realtime=1"))
        wall = time.perf_counter() - t0
        rt.close()
    used = events[a.warmup:]
    steps = {}
    for s in list(STEPS) + ["profile_update"]:
        v = np.array([e.timings_ms[s] for e in used if s in e.timings_ms])
        if v.size:
            steps[s] = {"min": float(v.min()), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                        "p99": float(np.percentile(v, 99)), "max": float(v.max()), "n": int(v.size)}
    import onnxruntime

    res = {
        "what": "processing after the end of each utterance (total_after_end) and per step, ms; "
                "RAVDESS clips joined by 1 s silence, paced in real time, audio only, no ASR",
        "stages": which, "clips": len(names), "events": len(events), "warmup_excluded": a.warmup,
        "stream_s": round(len(wav) / 16000, 2), "wall_s": round(wall, 2),
        "total_after_end": steps.get("total_after_end"), "steps": steps,
        "dropped": events[-1].dropped if events else {},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "onnxruntime": onnxruntime.__version__, "note": "shared 2-core VM: other tenants may load it"},
        "actors": a.actors, "seed": a.seed,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    t = res["total_after_end"]
    print(f"{len(events)} events from {len(names)} clips; total_after_end p50 {t['p50']:.1f} p95 {t['p95']:.1f} "
          f"p99 {t['p99']:.1f} ms ({which})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
