"""Evaluate the device path on any labelled clips: `mlsan-edge eval --dataset clips --data LIST.csv`.

The clips of a list (`clip_list.py`) are joined into one stream with gaps of silence
(`clip_stream.py`; frames too, so the face path runs), and the stream goes through exactly what a
device runs: `load_runtime(bundle).stream(audio, video)` with a fresh in-memory speaker cache. Events
are matched to clips by time overlap: the event overlapping a clip most is the clip's prediction, and
a clip without one counts as wrong (it shows as "(no event)" in the confusion matrix).

Reported over clips: accuracy, weighted / macro F1, the share of answers that are neutral (and of
the truth), the mean confidence of right and of wrong answers (the event's `confidence` when it has
one, else its top probability), the expected calibration error (15 bins, over the clips that got an
answer), the share of answers out of distribution (`Event.ood` beyond 1.0, when the bundle measures
it), the confusion matrix, one row per clip and the accuracy per speaker. Device-side only:
numpy, the runtime and `mlsan_edge.metrics` (matplotlib, for the PNG, when installed).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS
from mlsan_edge.metrics import calibration_error, plot_confusion, purity_coverage, report
from mlsan_edge.runtime.clip_list import Clip, read_clip_list
from mlsan_edge.runtime.clip_stream import ClipStream, Segment, build_clip_stream

NO_EVENT = "(no event)"
CLASSES = (*EMOTIONS, NO_EVENT)  # confusion columns: the seven classes, then clips the device never answered
FACE_MODES = ("auto", "none")
ECE_BINS = 15
OOD_LIMIT = 1.0  # an answer is out of distribution when a modality lies beyond the training 99th percentile


def confidence(event) -> float:
    """How sure the device was: the event's `confidence` when it has one, else its top probability."""
    c = getattr(event, "confidence", None)
    return float(c) if c is not None else float(max(event.probs.values()))


def ood_score(event) -> float | None:
    """The event's largest per-modality out-of-distribution distance (`Event.ood`: 1.0 = the training
    data's 99th percentile), or None when it carries none."""
    o = getattr(event, "ood", None)
    if isinstance(o, dict):
        return float(max(o.values())) if o else None
    return float(o) if o is not None else None


def match(events, segments: list[Segment]) -> list[tuple[object | None, int]]:
    """Per segment: (the event overlapping it most, or None; how many events overlap it)."""
    out = []
    for s in segments:
        ov = [(min(e.end_s, s.end) - max(e.start_s, s.start), i) for i, e in enumerate(events)]
        ov = [(o, i) for o, i in ov if o > 0]
        out.append((events[max(ov)[1]] if ov else None, len(ov)))
    return out


def score(events, segments: list[Segment]) -> dict:
    """The metrics of `events` against the clips' `segments` (see the module docstring)."""
    matched = match(events, segments)
    truth = np.array([EMOTIONS.index(s.clip.emotion) for s in segments])
    pred = np.array([EMOTIONS.index(e.emotion) if e is not None else len(EMOTIONS) for e, _ in matched])
    answered = [(s, e) for s, (e, _) in zip(segments, matched) if e is not None]
    ok = [e.emotion == s.clip.emotion for s, e in answered]
    conf = [confidence(e) for _, e in answered]
    res = report(truth, pred, CLASSES)
    res["support"].pop(NO_EVENT)
    mean = lambda xs: round(float(np.mean(xs)), 3) if xs else None  # noqa: E731
    ood = [x for x in (ood_score(e) for _, e in answered) if x is not None]
    res.update(
        clips=len(segments), events=len(events), clips_with_event=len(answered), classes=list(CLASSES),
        neutral_rate=round(100 * sum(e.emotion == "neutral" for _, e in answered) / max(len(answered), 1), 1),
        truth_neutral_rate=round(100 * sum(s.clip.emotion == "neutral" for s in segments) / max(len(segments), 1), 1),
        confidence_right=mean([c for c, k in zip(conf, ok) if k]),
        confidence_wrong=mean([c for c, k in zip(conf, ok) if not k]),
        ece=round(calibration_error(conf, ok, ECE_BINS), 4),
        ood_rate=round(100 * sum(x > OOD_LIMIT for x in ood) / len(ood), 1) if ood else None,
        predicted=dict(sorted(Counter(e.emotion for _, e in answered).items())),
        face_used=sum(bool(getattr(e, "face_used", False)) for _, e in answered),
        modalities=dict(Counter("+".join(e.modalities) for _, e in answered)),
    )
    res["event_neutral_rate"] = round(100 * sum(e.emotion == "neutral" for e in events) / max(len(events), 1), 1)
    res["neutral_by_utterance"] = _neutral_by_utterance(segments, matched)
    res.update(_speakers(segments, matched))
    res["per_clip"] = [
        {"path": str(s.clip.path), "speaker": s.clip.speaker, "truth": s.clip.emotion,
         "predicted": e.emotion if e is not None else None, "p": round(confidence(e), 4) if e is not None else None,
         "speaker_id": e.speaker_id if e is not None else None, "ood": ood_score(e) if e is not None else None,
         "events": k, "start_s": round(s.start, 3),
         "end_s": round(s.end, 3),
         **({"span": [s.clip.start, s.clip.end]} if (s.clip.start, s.clip.end) != (None, None) else {})}
        for s, (e, k) in zip(segments, matched)]
    return res


def _neutral_by_utterance(segments, matched) -> dict:
    """How a speaker's calibration settles: for truly neutral clips, the share called neutral by
    the speaker's utterance number in the stream ("1" = their first; "5+" = fifth and later)."""
    seen: dict[str, int] = {}
    hits: dict[str, list[bool]] = {}
    for s, (e, _) in zip(segments, matched):
        seen[s.clip.speaker] = k = seen.get(s.clip.speaker, 0) + 1
        if s.clip.emotion == "neutral" and e is not None:
            hits.setdefault(str(k) if k < 5 else "5+", []).append(e.emotion == "neutral")
    return {k: {"clips": len(v), "neutral_rate": round(100 * sum(v) / len(v), 1)} for k, v in sorted(hits.items())}


def _speakers(segments, matched) -> dict:
    """Accuracy per true speaker, the speaker ids each got, and how the ids cluster the speakers."""
    per: dict[str, dict] = {}
    for s, (e, _) in zip(segments, matched):
        d = per.setdefault(s.clip.speaker, {"clips": 0, "right": 0, "speaker_ids": set()})
        d["clips"] += 1
        d["right"] += e is not None and e.emotion == s.clip.emotion
        if e is not None and e.speaker_id is not None:
            d["speaker_ids"].add(e.speaker_id)
    out = {sp: {"clips": d["clips"], "accuracy": round(100 * d["right"] / d["clips"], 1),
                "speaker_ids": sorted(d["speaker_ids"])} for sp, d in sorted(per.items())}
    pairs = [(s.clip.speaker, e.speaker_id) for s, (e, _) in zip(segments, matched) if e is not None]
    pur, cov = purity_coverage(*zip(*pairs)) if pairs else (None, None)
    return {"per_speaker": out, "speakers": len(out),
            "speaker_purity": None if pur is None else round(pur, 4),
            "speaker_coverage": None if cov is None else round(cov, 4)}


class _Status:
    """One status line on stderr: rewritten in place on a terminal, else a line every 25 %."""

    def __init__(self, on: bool, total_s: float, what: str) -> None:
        self.on, self.total, self.what, self.events = on, max(total_s, 1e-6), what, 0
        self.tty, self.last, self.step = on and sys.stderr.isatty(), 0.0, -1

    def chunk(self, chunk, _in_speech=None) -> None:
        if not self.on:
            return
        frac = min(1.0, (chunk.t + 0.032) / self.total)
        now = time.monotonic()
        if self.tty and now - self.last > 0.5:
            self.last = now
            print(f"\r{self.what}: {chunk.t:6.1f}/{self.total:.1f} s of stream ({100 * frac:3.0f} %), "
                  f"{self.events} events", end="", file=sys.stderr, flush=True)
        elif not self.tty and int(frac * 4) > self.step:
            self.step = int(frac * 4)
            print(f"{self.what}: {100 * frac:3.0f} % of {self.total:.1f} s, {self.events} events", file=sys.stderr)

    def event(self, _ev) -> None:
        self.events += 1

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def run_stream(runtime, stream: ClipStream, video: bool, progress: bool = False, what: str = "clips") -> list:
    """All events of `stream` through `runtime.stream` (audio only unless `video`)."""
    status = _Status(progress, stream.seconds, what)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budget overruns: a busy evaluation box is no device
        events = list(runtime.stream(audio=stream.audio_uri, video=stream.video_uri if video else None,
                                     on_event=status.event, on_chunk=status.chunk))
    status.done()
    return events


def evaluate_clips(data: str | Path | list[Clip], bundle: str = "default", backend: str = "auto",
                   precision: str = "auto", face: str = "auto", gap_s: float = 1.0, root: str | Path | None = None,
                   seed: int = 0, shuffle: bool = False, json_out: str | Path | None = None,
                   progress: bool = True, gain_db: float = 0.0, speaker_threshold: float | None = None) -> dict:
    """Run labelled clips through the device path and score them (also written as JSON, with a
    confusion-matrix PNG beside it when matplotlib is installed, when `json_out` is given).

    Args:
        data: a clip list (CSV, `clip_list.read_clip_list`) or the clips themselves.
        bundle, backend, precision: as `load_runtime` ("auto", "onnxruntime", "tensorrt").
        face: "auto" (video clips' frames go to the face path when the runtime has one) or "none"
            (audio only).
        gap_s: silence between clips (s); the VAD must see a pause to end an utterance.
        root: the folder the list's paths are relative to (default: the list's folder).
        seed, shuffle: with `shuffle`, the clips run in a seeded random order (else list order).
        gain_db: every clip's audio louder (> 0) or quieter (< 0) by this much, as another
            microphone's gain would make it.
        speaker_threshold: the speaker cache's match threshold (`RuntimeConfig.speaker_threshold`;
            None: the bundle's tuned one). A very low one (e.g. -1e9) files every voice under the
            first speaker: on a list of one person, the emotion figures with who-is-speaking
            known, apart from the voice matching's errors.
    """
    from mlsan_edge.runtime.config import RuntimeConfig
    from mlsan_edge.runtime.load import load_runtime

    if face not in FACE_MODES:
        raise ValueError(f"unknown face mode {face!r}; valid: {', '.join(FACE_MODES)}")
    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise ValueError(f"--dataset clips runs the device path: --backend auto, onnxruntime or tensorrt, "
                         f"not {backend!r}")
    clips = read_clip_list(data, root) if isinstance(data, (str, Path)) else list(data)
    if not clips:
        raise ValueError("no clips to evaluate")
    if shuffle:
        clips = [clips[i] for i in np.random.default_rng(seed).permutation(len(clips))]
    t_start = time.time()
    config = RuntimeConfig(speaker_threshold=speaker_threshold, **({"face": "none"} if face == "none" else {}))
    with load_runtime(bundle, backend=backend, precision=precision, config=config) as rt:
        faces = rt.face_analyzer() if face != "none" else None
        video = faces is not None and any(c.is_video for c in clips)
        landmarks = bool(video and faces.has_landmarks)
        with tempfile.TemporaryDirectory(prefix="mlsan-clips-") as tmp:
            say = _say(progress)
            say(f"joining {len(clips)} clips ({'audio + video' if video else 'audio only'}, {gap_s:g} s gaps)")
            if video and not landmarks:
                say("no face landmarks in this install (pip install 'mlsan-edge[face]'): faces are found, but no "
                    "visual features are computed")
            stream = build_clip_stream(clips, tmp, gap_s, video, progress=_joining if progress else None,
                                       gain_db=gain_db)
            say(f"running {stream.seconds:.1f} s of stream through the device path")
            events = run_stream(rt, stream, video, progress)
        stages = rt.stages
        res = {"dataset": "clips", "data": str(data) if isinstance(data, (str, Path)) else None,
               "root": str(root) if root is not None else None, "bundle": str(bundle),
               "backend": stages.backends["stage3"].name, "precision": dict(getattr(stages, "precisions", {})),
               "model": getattr(stages, "model", None), "face": face, "video": video,
               "face_landmarks": landmarks, "gap_s": gap_s, "gain_db": gain_db, "speaker_threshold": speaker_threshold,
               "shuffle": bool(shuffle), "seed": seed, "stream_seconds": round(stream.seconds, 2)}
    res.update(score(events, stream.segments))
    res["seconds"] = round(time.time() - t_start, 1)
    if json_out:
        write_json(res, json_out)
    return res


SUMMARY = ("dataset", "data", "video", "clips", "events", "clips_with_event", "accuracy", "weighted_f1", "macro_f1",
           "neutral_rate", "truth_neutral_rate", "confidence_right", "confidence_wrong", "ece", "ood_rate",
           "predicted", "per_speaker")


def summary(res: dict) -> dict:
    """The headline figures of an `evaluate_clips` result (what the CLI prints)."""
    return {k: res[k] for k in SUMMARY if k in res}


def _joining(i: int, n: int) -> None:
    if sys.stderr.isatty():
        print(f"\rjoining clip {i + 1}/{n}", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)


def _say(on: bool):
    return (lambda msg: print(msg, file=sys.stderr)) if on else (lambda msg: None)


def write_json(res: dict, json_out: str | Path) -> None:
    """`res` as JSON at `json_out`, and its confusion matrix as OUT.confusion.png (matplotlib)."""
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    png = json_out.with_suffix(".confusion.png")
    name = Path(res["data"]).stem if res.get("data") else "clips"
    try:
        plot_confusion(res["confusion"], CLASSES, png,
                       f"{name} ({'audio + video' if res.get('video') else 'audio'}): acc {res['accuracy']:.1f}%, "
                       f"neutral {res['neutral_rate']:.0f}% (truth {res['truth_neutral_rate']:.0f}%)")
        res["confusion_png"] = str(png)
    except ImportError as e:  # the device install has no matplotlib
        warnings.warn(f"{e}; writing {json_out} without the confusion-matrix PNG", RuntimeWarning, stacklevel=2)
    json_out.write_text(json.dumps(res, indent=2) + "\n")
