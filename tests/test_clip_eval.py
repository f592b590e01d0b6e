"""runtime/clip_eval: labelled clips through the device path (`mlsan-edge eval --dataset clips`)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlsan_edge.cli import SAMPLE_DIR, main
from mlsan_edge.config import EMOTIONS
from mlsan_edge.runtime.clip_eval import CLASSES, NO_EVENT, confidence, evaluate_clips, match, ood_score, score
from mlsan_edge.runtime.clip_list import Clip
from mlsan_edge.runtime.clip_stream import Segment

ACTOR = SAMPLE_DIR / "audio16k" / "Actor_01"  # RAVDESS: 01 neutral, 02 calm, 03 happy, 05 angry, ...
SHAPE = {"dataset", "clips", "events", "clips_with_event", "accuracy", "weighted_f1", "macro_f1", "per_class_f1",
         "neutral_rate", "truth_neutral_rate", "confidence_right", "confidence_wrong", "ece", "confusion", "classes",
         "per_clip", "per_speaker", "speaker_purity", "speaker_coverage", "backend", "video", "stream_seconds"}


@dataclass
class Ev:
    start_s: float
    end_s: float
    emotion: str
    p: float = 0.8
    speaker_id: int | None = 1
    modalities: list = field(default_factory=lambda: ["audio"])

    @property
    def probs(self):
        rest = (1 - self.p) / (len(EMOTIONS) - 1)
        return {e: self.p if e == self.emotion else rest for e in EMOTIONS}


@dataclass
class CalibratedEv(Ev):
    confidence: float = 0.3
    ood: dict = field(default_factory=lambda: {"audio": 1.4, "visual": 0.2})


def _seg(start, end, emotion, speaker="s"):
    return Segment(Clip(Path(f"{start}.wav"), speaker, emotion), start, end)


def test_the_event_overlapping_a_clip_most_is_its_answer():
    segs = [_seg(1, 3, "neutral"), _seg(4, 6, "anger"), _seg(7, 9, "joy")]
    events = [Ev(0.9, 1.5, "anger"), Ev(1.5, 3.2, "neutral"), Ev(4.5, 5.0, "fear"), Ev(9.5, 10, "joy")]
    assert [(e.emotion if e else None, k) for e, k in match(events, segs)] == [("neutral", 2), ("fear", 1), (None, 0)]


def test_score_counts_a_clip_without_event_as_wrong():
    segs = [_seg(1, 3, "neutral", "a"), _seg(4, 6, "anger", "a"), _seg(7, 9, "joy", "b")]
    r = score([Ev(1.2, 2.8, "neutral", 0.9), Ev(4.2, 5.8, "neutral", 0.6, speaker_id=2)], segs)
    assert (r["clips"], r["events"], r["clips_with_event"]) == (3, 2, 2)
    assert r["accuracy"] == pytest.approx(100 / 3, abs=0.01)
    assert r["neutral_rate"] == 100.0 and r["truth_neutral_rate"] == pytest.approx(33.3)
    assert r["confidence_right"] == 0.9 and r["confidence_wrong"] == 0.6
    assert r["ece"] == pytest.approx((0.1 + 0.6) / 2, abs=1e-4)  # over the two answered clips
    assert r["classes"] == list(CLASSES) and r["confusion"][EMOTIONS.index("joy")][CLASSES.index(NO_EVENT)] == 1
    assert NO_EVENT not in r["support"] and r["ood_rate"] is None
    assert r["per_speaker"] == {"a": {"clips": 2, "accuracy": 50.0, "speaker_ids": [1, 2]},
                                "b": {"clips": 1, "accuracy": 0.0, "speaker_ids": []}}
    assert r["per_clip"][2] == {"path": "7.wav", "speaker": "b", "truth": "joy", "predicted": None, "p": None,
                                "speaker_id": None, "ood": None, "events": 0, "start_s": 7, "end_s": 9}


def test_an_events_own_confidence_and_ood_flag_are_used():
    ev = CalibratedEv(1, 2, "neutral", p=0.9)
    assert confidence(ev) == 0.3 and confidence(Ev(1, 2, "joy", p=0.7)) == pytest.approx(0.7)
    assert ood_score(ev) == 1.4 and ood_score(Ev(1, 2, "joy")) is None
    assert ood_score(CalibratedEv(1, 2, "joy", ood={})) is None  # a bundle that measures nothing
    r = score([ev, CalibratedEv(3, 4, "joy", ood={"audio": 0.5})], [_seg(1, 2, "neutral"), _seg(3, 4, "joy")])
    assert r["confidence_right"] == 0.3 and r["ood_rate"] == 50.0 and r["per_clip"][0]["ood"] == 1.4


def _ravdess_list(tmp_path, emotion3="Angry"):
    (tmp_path / "clips.csv").write_text(
        "# three RAVDESS clips of actor 1 (CC BY-NC-SA 4.0), labels as aliases\npath,speaker,emotion,start,end\n"
        f"03-01-01-01-01-01-01.flac,a01,neutral,,\n03-01-03-02-01-01-01.flac,a01,happy,0.2,\n"
        f"03-01-05-02-01-01-01.flac,a01,{emotion3},,3.5\n")
    return tmp_path / "clips.csv"


def test_cli_writes_the_json_and_png(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["eval", "--dataset", "clips", "--data", str(_ravdess_list(tmp_path)), "--root", str(ACTOR),
               "--face", "none", "--gap", "0.8", "--json", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    r = json.loads(out.read_text())
    assert SHAPE <= set(r) and r["clips"] == printed["clips"] == 3 and r["video"] is False and r["gap_s"] == 0.8
    assert [c["truth"] for c in r["per_clip"]] == ["neutral", "joy", "anger"]
    assert r["per_clip"][1]["span"] == [0.2, None]
    assert r["per_clip"][2]["end_s"] - r["per_clip"][2]["start_s"] == pytest.approx(3.5, abs=2e-3)
    assert r["clips_with_event"] >= 2 and 0 <= r["ece"] <= 1 and len(r["confusion"]) == len(CLASSES)
    assert all(c["predicted"] in EMOTIONS and 0 < c["p"] <= 1 for c in r["per_clip"] if c["predicted"])
    if "confusion_png" in r:  # matplotlib installed
        assert Path(r["confusion_png"]).stat().st_size > 0


def test_speaker_threshold_reaches_the_speaker_cache(tmp_path):
    """-1e9 files every voice under one speaker (a one-person list with who-is-speaking known);
    +1e9 makes every utterance somebody new."""
    ids = {}
    for t in (-1e9, 1e9):
        r = evaluate_clips(_ravdess_list(tmp_path), root=ACTOR, face="none", gap_s=0.8, progress=False,
                           speaker_threshold=t)
        assert r["speaker_threshold"] == t and r["clips_with_event"] == 3
        ids[t] = [c["speaker_id"] for c in r["per_clip"]]
    assert len(set(ids[-1e9])) == 1 and len(set(ids[1e9])) == 3


def test_cli_names_a_wrong_label(tmp_path, capsys):
    rc = main(["eval", "--dataset", "clips", "--data", str(_ravdess_list(tmp_path, "grumpy")), "--root", str(ACTOR)])
    err = capsys.readouterr().err
    assert rc == 2 and "clips.csv line 5: unknown emotion 'grumpy'; accepted: neutral" in err and "calm->neutral" in err


def test_arguments_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="device path: --backend auto, onnxruntime or tensorrt"):
        evaluate_clips(tmp_path / "none.csv", backend="torch")
    with pytest.raises(ValueError, match="face mode"):
        evaluate_clips(tmp_path / "none.csv", face="always")
    with pytest.raises(FileNotFoundError, match="clip list not found"):
        evaluate_clips(tmp_path / "none.csv")


@pytest.mark.requires_data
def test_shipped_grid_list_runs_audio_only(shared_data):
    """The 13 GRID sentences of the shipped list through the device path, audio only (a few seconds)."""
    if not (shared_data / "talking" / "grid").is_dir():
        pytest.skip(f"no talking/grid under {shared_data}")
    r = evaluate_clips("talking_grid13", root=shared_data / "talking", face="none", progress=False)
    assert r["clips"] == 13 and r["truth_neutral_rate"] == 100.0 and r["clips_with_event"] >= 12
    assert set(r["per_speaker"]) == {"s1", "s2", "s5", "s20", "s22", "s26"}
    assert sum(r["confusion"][0]) == 13  # every truth is neutral


@pytest.mark.requires_data
def test_out_of_domain_benchmark_measures_the_shipped_lists(shared_data):
    """benchmarks/out_of_domain.py runs this module on GRID-13, GRID words, CREMA-D 1001 and 150 EmoSpeech eval clips."""
    from conftest import load_script

    if not (shared_data / "talking" / "grid").is_dir() or not (shared_data / "emospeech" / "labels.csv").exists():
        pytest.skip(f"no talking/ or emospeech/ under {shared_data}")
    from mlsan_edge.data.emospeech import emospeech_eval_speaker

    c = load_script("out_of_domain").corpora(shared_data, 150, 0)
    sizes = {" ".join(name.split(" ")[:2]): (len(clips), conds) for name, (clips, conds) in c.items()}
    assert sizes == {"GRID-13 (neutral": (13, ("audio", "audio+video")), "GRID words": (48, ("audio", "audio+video")),
                     "CREMA-D 1001": (6, ("audio", "audio+video")),
                     "EmoSpeech eval": (150, ("audio",))}
    emo = next(clips for name, (clips, _) in c.items() if name.startswith("EmoSpeech"))
    assert len({x.speaker for x in emo}) == 24 and all(emospeech_eval_speaker(x.speaker) for x in emo)
