"""examples/ros2_node.py without ROS 2 (it cannot be installed here): the node's logic,
`EmotionBridge`, at our own interface with a fake publisher."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlsan_edge.runtime.events import Event

NODE = Path(__file__).resolve().parents[1] / "examples" / "ros2_node.py"


@pytest.fixture(scope="module")
def node():
    spec = importlib.util.spec_from_file_location("ros2_node", NODE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # must not need rclpy at import
    return mod


def event(sid=3, emotion="anger"):
    probs = dict.fromkeys(("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"), 0.05)
    probs[emotion] = 0.7
    return Event(start_s=1.0, end_s=2.5, speaker_id=sid, speaker_name=None, speaker_similarity=0.9, emotion=emotion,
                 probs=probs, trust={"text": 0.0, "audio": 0.7, "visual": 0.3}, modalities=["audio", "visual"],
                 timings_ms={"total_after_end": 41.0}, over_budget=[], face_used=True, face={"track": 2})


class FakeCache:
    def __init__(self):
        self.names = {3: None}

    def rename(self, sid, name):
        if sid not in self.names:
            raise KeyError(sid)
        self.names[sid] = name

    def list(self):
        return [SimpleNamespace(to_dict=lambda k=k, v=v: {"id": k, "name": v}) for k, v in self.names.items()]


def test_events_are_published_as_json_and_expressions(node):
    sent = []
    bridge = node.EmotionBridge(FakeCache(), lambda topic, payload: sent.append((topic, payload)), clock=lambda: 12.5)
    bridge.on_event(event())
    (t1, p1), (t2, p2) = sent
    assert t1 == "/mlsan/events"
    msg = json.loads(p1)
    assert msg["schema"] == 1 and msg["stamp"] == 12.5 and msg["emotion"] == "anger" and msg["confidence"] == 0.7
    assert msg["speaker"] == {"id": 3, "name": None, "new": False, "similarity": 0.9}
    assert set(msg["probs"]) == {"neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"}
    assert msg["face"] == {"used": True, "track": 2} and msg["latency_ms"] == 41.0
    assert t2 == "/humans/faces/mlsan_3/expression"
    assert p2["expression"] == "angry" and p2["confidence"] == 0.7 and -1 <= p2["valence"] <= 1


def test_every_class_maps_to_a_rep155_expression(node):
    rep155 = {"neutral", "happy", "sad", "angry", "surprised", "disgusted", "scared"}
    assert {v[0] for v in node.EXPRESSIONS.values()} <= rep155 and len(node.EXPRESSIONS) == 7


def test_enrol_names_the_last_speaker_and_lists(node):
    cache = FakeCache()
    bridge = node.EmotionBridge(cache, lambda *a: None)
    assert bridge.enrol("Ann") == (False, "nobody has spoken yet")
    bridge.on_event(event(sid=3))
    ok, msg = bridge.enrol(" Ann ")
    assert ok and cache.names[3] == "Ann"
    assert json.loads(bridge.speakers_json()) == [{"id": 3, "name": "Ann"}]
    bridge.on_event(event(sid=99))
    assert bridge.enrol("Bob")[0] is False
