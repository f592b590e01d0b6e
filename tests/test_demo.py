"""`mlsan-edge demo`: the headless run on the embedded sample end to end (events, agreement, the
annotated mp4 with audio), the agreement arithmetic, the timeline, the window's keys, and the
one-line errors for missing devices."""

import json
from types import SimpleNamespace

import pytest

from mlsan_edge.cli import main
from mlsan_edge.demo.sample import SAMPLE_TRUTH, SAMPLE_VIDEO, agreement, load_truth


def ev(start, end, emotion, sid, track=None):
    return SimpleNamespace(start_s=start, end_s=end, emotion=emotion, speaker_id=sid, speaker_name=None,
                           face={"track": track}, timings_ms={"total_after_end": 50.0})


def test_sample_ships_with_truth_and_notice():
    truth = load_truth()
    assert SAMPLE_VIDEO.stat().st_size < 3e6
    assert (SAMPLE_VIDEO.parent / "NOTICE.md").read_text().count("CC BY 4.0") >= 1
    assert len({s.speaker for s in truth}) >= 2 and len({s.emotion for s in truth}) >= 3
    assert all(a.end_s <= b.start_s for a, b in zip(truth, truth[1:]))


def test_agreement_counts_emotions_and_speakers():
    truth = load_truth()
    perfect = [ev(s.start_s, s.end_s, s.emotion, s.speaker) for s in truth]
    res = agreement(perfect, truth)
    assert res["emotion_agreement"] == 1.0 and res["speaker_purity"] == 1.0 and res["speaker_coverage"] == 1.0
    assert res["returning_speaker_recognised"] == 1.0
    one_id = [ev(s.start_s, s.end_s, "anger", 1) for s in truth[:3]]  # three of seven, everyone merged
    res = agreement(one_id, truth)
    assert res["detected"] == 3 and res["rows"][3]["event_emotion"] is None
    assert res["speaker_purity"] < 1.0 and res["speaker_coverage"] == 1.0
    assert res["emotion_agreement"] == sum(s.emotion == "anger" for s in truth[:3]) / len(truth)


def test_timeline_shows_events_when_they_were_ready():
    from mlsan_edge.demo.timeline import Timeline

    tl = Timeline()
    tl.on_chunk(SimpleNamespace(t=0.0, samples=[0.0] * 512), False)
    tl.on_chunk(SimpleNamespace(t=1.0, samples=[0.1] * 512), True)
    tl.on_frame(SimpleNamespace(t=1.0, image=None),
                SimpleNamespace(t=1.0, faces=[SimpleNamespace(track=3, box=(1, 2, 3, 4))]))
    tl.add_event(ev(0.5, 2.0, "joy", 7, track=3))  # ready at 2.05 s
    assert tl.state_at(0.5).in_speech is False and tl.state_at(1.5).in_speech is True
    assert tl.state_at(2.0).event is None
    st = tl.state_at(2.1)
    assert st.event.emotion == "joy" and st.speaker_track == 3 and st.faces == [(3, (1, 2, 3, 4))]
    assert st.recent == [("#7", "joy")] and st.vu_db == pytest.approx(-20.0, abs=0.01)


def test_window_keys_enrol_forget_pause_quit():
    from mlsan_edge.demo.timeline import Timeline
    from mlsan_edge.demo.window import Keys

    calls = []
    cache = SimpleNamespace(rename=lambda sid, name: calls.append(("rename", sid, name)),
                            forget=lambda sid: calls.append(("forget", sid)))
    tl = Timeline()
    keys = Keys(cache, tl)
    keys.press(ord("e"))
    assert not keys.typing and "nobody" in keys.message
    tl.add_event(ev(0.0, 1.0, "joy", 4))
    for c in [ord("e"), *map(ord, "Ann"), 8, ord("a"), 13]:
        keys.press(c)
    keys.press(ord("f"))
    keys.press(ord("p"))
    assert calls == [("rename", 4, "Ana"), ("forget", 4)] and keys.paused and "paused" in keys.banner()
    assert keys.press(ord("q")) == "quit"


def test_missing_camera_is_one_line(monkeypatch, capsys):
    from mlsan_edge.runtime import sources

    def no_camera(uri, t0=None):
        raise sources.SourceError(f"cannot open camera {uri!r}; no /dev/video* device exists")

    monkeypatch.setattr(sources, "open_video", no_camera)
    assert main(["demo", "--video", "camera://0", "--audio", "file://" + str(SAMPLE_VIDEO)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "camera://0" in err[0] and "/dev/video" in err[0]


def test_missing_portaudio_is_one_line(monkeypatch, capsys):
    from mlsan_edge.runtime import sources

    def no_portaudio(uri, t0=None):
        raise sources.SourceError("cannot load the PortAudio library; install it with "
                                  "`sudo apt-get install libportaudio2`")

    monkeypatch.setattr(sources, "open_audio", no_portaudio)
    assert main(["demo", "--audio", "mic://default", "--headless"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "libportaudio2" in err[0]


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    out, js = d / "demo.mp4", d / "demo.json"
    rc = main(["demo", "--headless", "--out", str(out), "--json", str(js)])
    return rc, out, json.loads(js.read_text())


@pytest.mark.slow
def test_headless_demo_on_the_sample(headless_run, capsys):
    rc, _, res = headless_run
    assert rc == 0
    truth = load_truth(SAMPLE_TRUTH)
    a = res["agreement"]
    # every utterance of the sample is heard; the figures themselves are printed, not asserted
    assert a["utterances"] == len(truth) and a["detected"] >= len(truth) - 1
    assert 0.0 <= a["emotion_agreement"] <= 1.0 and a["speaker_purity"] is not None
    assert all(e["face_used"] for e in res["events"])
    assert "total_after_end" in res["latency_ms"]


@pytest.mark.slow
def test_headless_demo_writes_annotated_mp4_with_audio(headless_run):
    import av
    import numpy as np

    _, out, _ = headless_run
    with av.open(str(out)) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"]
        v = c.streams.video[0]
        assert (v.width, v.height) == (640, 480)
        frames = [f.to_ndarray(format="bgr24") for _, f in zip(range(60), c.decode(video=0))]
    with av.open(str(SAMPLE_VIDEO)) as c:
        src = [f.to_ndarray(format="bgr24") for _, f in zip(range(60), c.decode(video=0))]
    # the status bar at the top is drawn over the (enlarged) picture
    import cv2

    top = np.abs(frames[50][:25].astype(int) - cv2.resize(src[50], (640, 480))[:25].astype(int)).mean()
    assert top > 10
