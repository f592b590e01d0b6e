"""The whole runtime on a stream played in real time: what a person waits for after they stop.

A stream of real clips (each cut to its speech, `bench.data`) joined by 1 s of silence is
written to a temporary FLAC and played through `Runtime.stream("file://...?realtime=1")`, so the
VAD sees it as a microphone: voice partials are embedded while the clip plays. Two numbers per
utterance:

    end_to_end           the event's `timings_ms["total_after_end"]`: from the VAD chunk that
                         closed the utterance to the event (voice tail, speaker cache, audio
                         features, text, stages 1-3); no ASR, the sentence is given as text.
                         The voice tail, audio features and text start during the VAD hangover
                         (`runtime/speculation.py`); `speculate=False` measures without that
    speech_end_to_event  wall clock from the clip's true end of speech (known from how the
                         stream was built) to the event reaching the caller: the VAD hangover
                         (`VADConfig.min_silence_ms`, 500 ms by default) + end_to_end + queueing.
                         The stream's time 0 is taken when `stream()` is called; the source
                         starts its clock at its first read, a few ms later, so this slightly
                         over-states the wait. Events whose utterance the VAD closed before the
                         clip's speech ended (it dropped the tail) are counted, not timed.

`hangover_sweep` replays the same stream faster than real time with shorter hangovers and
reports what they cost: utterances split or merged, and the emotion accuracy on the clips.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from mlsan_edge.bench.data import build_stream
from mlsan_edge.bench.stats import summarize

HANGOVERS_MS = (500, 300, 200, 150)  # the first is VADConfig's default: the sweep's reference
EARLY_TOLERANCE_S = 0.05  # an utterance's end may fall this much before the clip's (the VAD's 32 ms chunks)


def _runtime(bundle, min_silence_ms: int | None = None, precision: str = "auto", speculate: bool = True):
    from mlsan_edge.features.vad import VADConfig
    from mlsan_edge.runtime import RuntimeConfig, load_runtime

    vad = VADConfig() if min_silence_ms is None else VADConfig(min_silence_ms=int(min_silence_ms))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_runtime(bundle, config=RuntimeConfig(face="none", vad=vad, speculate=speculate),
                            precision=precision)


def _match(events, spans) -> list[int | None]:
    """For each event, the clip its [start_s, end_s] overlaps most (None: no overlap)."""
    out = []
    for e in events:
        ov = [min(e.end_s, b) - max(e.start_s, a) for a, b in spans]
        k = int(np.argmax(ov)) if ov else 0
        out.append(k if ov and ov[k] > 0 else None)
    return out


def play(clips, bundle, realtime: bool = True, min_silence_ms: int | None = None, runtime=None) -> dict:
    """Play the clips as one stream -> events, per-event arrival (s after start) and the clip spans."""
    import soundfile as sf

    from mlsan_edge.config import SAMPLE_RATE

    wav, spans = build_stream(clips)
    segments = [(a, b, c.sentence) for (a, b), c in zip(spans, clips)]  # text, matched by overlap
    rt = runtime or _runtime(bundle, min_silence_ms)
    events, arrivals = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.flac"
        sf.write(path, wav, SAMPLE_RATE)
        uri = f"file://{path}" + ("?realtime=1" if realtime else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # budget overruns on a loaded CPU
            t0 = time.monotonic()
            for e in rt.stream(audio=uri, text=segments):
                arrivals.append(time.monotonic() - t0)
                events.append(e)
    if runtime is None:
        rt.close()
    return {"events": events, "arrivals": arrivals, "spans": spans, "stream_s": len(wav) / SAMPLE_RATE}


def bench_end_to_end(clips, bundle, warmup: int = 2, speculate: bool = True) -> dict:
    """Real-time stream: stats of total_after_end, of each step and of speech end -> event
    (`speculate`: work starts during the VAD hangover, `RuntimeConfig.speculate`)."""
    from mlsan_edge.runtime.events import STEPS

    t = time.perf_counter()
    rt = _runtime(bundle, speculate=speculate)
    load_s = time.perf_counter() - t
    r = play(clips, bundle, realtime=True, runtime=rt)
    stats = rt.stats()
    rt.close()
    events, match = r["events"], _match(r["events"], r["spans"])
    used = [i for i in range(len(events)) if i >= warmup]
    if not used:
        raise RuntimeError(f"the stream gave {len(events)} events, not more than the {warmup} warm-up ones: "
                           "use more clips")
    steps = {}
    for s in list(STEPS) + ["profile_update", "speculative"]:
        v = [events[i].timings_ms[s] for i in used if s in events[i].timings_ms]
        if v:
            steps[s] = summarize(v)
    # an event whose utterance ends before its clip's speech does (the VAD dropped the tail) is
    # counted, not timed: "speech end -> event" is undefined for it
    wait, early = [], 0
    for i in used:
        if match[i] is None:
            continue
        end = r["spans"][match[i]][1]
        if events[i].end_s + EARLY_TOLERANCE_S >= end:
            wait.append(r["arrivals"][i] * 1e3 - end * 1e3)
        else:
            early += 1
    return {
        "end_to_end": steps["total_after_end"], "steps": steps,
        "speech_end_to_event": summarize(wait) if wait else None,
        "events": len(events), "clips": len(clips), "warmup_events": warmup,
        "matched_events": sum(m is not None for m in match), "stream_s": round(r["stream_s"], 2),
        "events_ending_before_speech": early,
        "dropped": events[-1].dropped if events else {}, "load_runtime_s": round(load_s, 3),
        "vad_min_silence_ms": rt.config.vad.min_silence_ms, "runtime_budgets": stats["budgets"], "speculate": speculate,
        "speculated_events": sum("speculative" in events[i].timings_ms for i in used),
        "what": "total_after_end from the VAD chunk that closed the utterance to the event; speech_end_to_event "
                "from the clip's true end of speech (stream construction) to the event reaching the caller",
    }


def _accuracy(events, spans, clips) -> dict:
    match = _match(events, spans)
    per_clip: dict[int, list] = {}
    for e, m in zip(events, match):
        if m is not None:
            per_clip.setdefault(m, []).append(e)
    labelled = [k for k, c in enumerate(clips) if c.emotion is not None]
    right = 0
    for k in labelled:
        evs = per_clip.get(k, [])
        if evs:
            best = max(evs, key=lambda e: min(e.end_s, spans[k][1]) - max(e.start_s, spans[k][0]))
            right += best.emotion == clips[k].emotion
    return {"events": len(events), "clips": len(clips),
            "clips_split": sum(len(v) > 1 for v in per_clip.values()),
            "clips_missed": len(clips) - len(per_clip),
            "events_spanning_clips": sum(sum(min(e.end_s, b) > max(e.start_s, a) for a, b in spans) > 1 for e in events),
            "accuracy": round(right / len(labelled), 4) if labelled else None}


def hangover_sweep(clips, bundle, hangovers=HANGOVERS_MS, end_to_end_median_ms: float | None = None) -> list[dict]:
    """Each VAD hangover on the same stream (faster than real time) -> segmentation and accuracy."""
    rows = []
    for h in hangovers:
        r = play(clips, bundle, realtime=False, min_silence_ms=h)
        row = {"min_silence_ms": h, **_accuracy(r["events"], r["spans"], clips)}
        if end_to_end_median_ms is not None:
            row["expected_wait_ms"] = round(h + end_to_end_median_ms, 1)  # hangover + processing
        rows.append(row)
    base = rows[0]["accuracy"]
    for row in rows:
        row["accuracy_cost"] = None if base is None or row["accuracy"] is None else round(base - row["accuracy"], 4)
    return rows


def bench_session(clips, bundle, runs: int, warmup: int, progress=None) -> dict:
    """The device pipeline on whole utterances (push API: `Session.process`), no streaming credit:
    the voice is embedded after the end, as the naive pipeline must."""
    rt = _runtime(bundle)
    ms, steps = [], {}
    with rt.session() as s:
        for i in range(warmup + runs):
            c = clips[i % len(clips)]
            e = s.process(c.audio, 16000, text=c.sentence)
            if i >= warmup:
                ms.append(e.timings_ms["total_after_end"])
                for k, v in e.timings_ms.items():
                    steps.setdefault(k, []).append(v)
            if progress is not None:
                progress(1)
    rt.close()
    return {"total": summarize(ms), "steps": {k: summarize(v) for k, v in steps.items()}}


COLD_START = """
import json, resource, time
t0 = time.perf_counter()
from mlsan_edge.runtime import load_runtime, RuntimeConfig
t1 = time.perf_counter()
rt = load_runtime({bundle!r}, config=RuntimeConfig(face="none"))
t2 = time.perf_counter()
import numpy as np
with rt.session() as s:
    s.process(np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, 16000, text="hello")
t3 = time.perf_counter()
try:  # VmHWM: ru_maxrss survives exec on Linux and would report the parent's peak
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    peak = int(hwm) / 1024
except (OSError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"import_s": t1 - t0, "load_runtime_s": t2 - t1, "first_utterance_s": t3 - t2,
                  "peak_rss_mb": peak}}))
"""


def cold_start(bundle: str) -> dict:
    """A fresh interpreter: import, `load_runtime`, and the first utterance (lazy sessions load then)."""
    code = COLD_START.format(bundle=str(bundle))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    d = json.loads(p.stdout.strip().splitlines()[-1])
    d = {k: round(v, 3) for k, v in d.items()}
    d["process_wall_s"] = round(wall, 3)
    return d
