"""The embedded talking-face sample, its truth, and how a run's events agree with it.

The sample (`mlsan_edge/assets/demo/`, built by `make_sample.py`) is seven clips of three
speakers (CREMA-D actor 1001 in four emotions; GRID speakers s1 twice and s2) with 1 s pauses.
`agreement` matches events to the truth by time overlap and reports:

- emotion agreement: share of truth utterances whose best-overlapping event has their emotion;
- speaker agreement: purity and coverage (`metrics.purity_coverage`) of the event speaker ids
  against the true speakers, over the matched utterances, and whether the returning speaker got
  the id they had before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlsan_edge.metrics import purity_coverage

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
SAMPLE_VIDEO = SAMPLE_DIR / "talking_sample.mp4"
SAMPLE_TRUTH = SAMPLE_DIR / "talking_sample.json"


@dataclass(frozen=True)
class Segment:
    """One true utterance: its speech span (s), speaker and emotion."""

    start_s: float
    end_s: float
    speaker: str
    emotion: str
    corpus: str = ""


def load_truth(path: str | Path = SAMPLE_TRUTH) -> list[Segment]:
    """The truth segments of a sample JSON (`talking_sample.json` layout: segments with `speech`
    [start, end] or `start`/`end`, `speaker`, `emotion`)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for s in d["segments"]:
        a, b = s.get("speech") or (s["start"], s["end"])
        out.append(Segment(float(a), float(b), str(s["speaker"]), str(s["emotion"]), s.get("corpus", "")))
    return out


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def match(events, truth: list[Segment]) -> list[tuple[Segment, object | None]]:
    """Each truth segment with the event overlapping its speech most (None: no event overlaps)."""
    out = []
    for seg in truth:
        best = max(events, key=lambda e: _overlap(seg.start_s, seg.end_s, e.start_s, e.end_s), default=None)
        if best is not None and _overlap(seg.start_s, seg.end_s, best.start_s, best.end_s) <= 0:
            best = None
        out.append((seg, best))
    return out


def agreement(events, truth: list[Segment]) -> dict:
    """How `events` (anything with start_s, end_s, emotion, speaker_id) agree with `truth`.

    Returns:
        dict with `utterances` (truth segments), `detected` (segments with an overlapping event),
        `events`, `emotion_agreement` (share of all truth segments, 0-1), `speaker_purity`,
        `speaker_coverage` (over detected segments; None when none), `returning_speaker_recognised`
        (share of repeat appearances whose event id equals the one given at the speaker's first
        appearance; None when nobody returns) and `rows` (per segment).
    """
    events = list(events)
    pairs = match(events, truth)
    rows, hits = [], 0
    first_id: dict[str, object] = {}
    returns, recognised = 0, 0
    for seg, ev in pairs:
        ok = ev is not None and ev.emotion == seg.emotion
        hits += ok
        row = {"start_s": seg.start_s, "end_s": seg.end_s, "speaker": seg.speaker, "emotion": seg.emotion,
               "event_emotion": None if ev is None else ev.emotion,
               "event_speaker": None if ev is None else ev.speaker_id, "emotion_ok": bool(ok)}
        if ev is not None:
            if seg.speaker in first_id:
                returns += 1
                recognised += first_id[seg.speaker] == ev.speaker_id
            else:
                first_id[seg.speaker] = ev.speaker_id
        rows.append(row)
    det = [(s, e) for s, e in pairs if e is not None]
    purity = coverage = None
    if det:
        purity, coverage = purity_coverage([s.speaker for s, _ in det], [str(e.speaker_id) for _, e in det])
    return {"utterances": len(truth), "detected": len(det), "events": len(events),
            "emotion_agreement": hits / len(truth) if truth else None,
            "speaker_purity": purity, "speaker_coverage": coverage,
            "returning_speaker_recognised": recognised / returns if returns else None, "rows": rows}


def format_agreement(res: dict) -> str:
    """A few lines for the console."""
    lines = [f"{'truth':>13s}  {'speaker':12s} {'emotion':8s} -> {'event':9s} {'id':>4s}"]
    for r in res["rows"]:
        got = r["event_emotion"] or "(none)"
        sid = "-" if r["event_speaker"] is None else str(r["event_speaker"])
        lines.append(f"{r['start_s']:5.2f}-{r['end_s']:5.2f} s  {r['speaker']:12s} {r['emotion']:8s} -> "
                     f"{got:9s} {sid:>4s}  {'ok' if r['emotion_ok'] else ''}")
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"
    lines.append(f"emotion agreement {pct(res['emotion_agreement'])} ({sum(r['emotion_ok'] for r in res['rows'])}"
                 f"/{res['utterances']} utterances; {res['detected']} detected, {res['events']} events)")
    lines.append(f"speaker agreement: purity {pct(res['speaker_purity'])}, coverage {pct(res['speaker_coverage'])}, "
                 f"returning speaker given their earlier id {pct(res['returning_speaker_recognised'])}")
    return "\n".join(lines)
