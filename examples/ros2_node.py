"""A ROS 2 node (rclpy) that runs the mlsan_edge runtime and publishes each utterance's emotion.

    python3 examples/ros2_node.py --ros-args -p audio:=mic://default -p video:=csi://0 \
        -p cache:=/var/lib/mlsan/speakers.db

Interface (JSON schema of `/mlsan/events`: README, "Robot integration"):

    /mlsan/events           std_msgs/String   one JSON object per utterance (`event_message`)
    /mlsan/enrol            std_msgs/String   a name: enrol the most recent speaker under it
    ~/list_speakers         std_srvs/Trigger  the speaker cache as JSON in `message`
    ~/enrol_name            parameter         setting it enrols the most recent speaker too
    /humans/faces/<id>/expression   hri_msgs/Expression (REP 155), when ROS4HRI's hri_msgs is installed

The ROS-free part, `EmotionBridge`, holds all the logic (message building, enrolment, speaker
list) behind a `publish(topic, payload)` callable, so it is tested without ROS
(tests/test_ros2_node.py, with a fake publisher); the node only wires it to rclpy. ROS 2 itself
was not available where this was written: the rclpy wiring is untested.
"""

from __future__ import annotations

import json
import threading
from typing import Callable

EVENTS_TOPIC = "/mlsan/events"
ENROL_TOPIC = "/mlsan/enrol"
SCHEMA_VERSION = 1

# our 7 classes -> REP 155 / hri_msgs Expression constants, with (valence, arousal) in [-1, 1]
# (circumplex placements after Russell 1980; rough, for consumers that want the continuous form)
EXPRESSIONS = {
    "neutral": ("neutral", 0.0, 0.0), "joy": ("happy", 0.8, 0.5), "surprise": ("surprised", 0.2, 0.8),
    "fear": ("scared", -0.6, 0.7), "sadness": ("sad", -0.7, -0.4), "disgust": ("disgusted", -0.6, 0.3),
    "anger": ("angry", -0.7, 0.8),
}


def event_message(ev, stamp_s: float | None = None) -> dict:
    """The JSON object published on /mlsan/events for one `Event` (schema version 1)."""
    return {
        "schema": SCHEMA_VERSION,
        "stamp": stamp_s,  # ROS time (s) when published; None outside ROS
        "start_s": round(float(ev.start_s), 3), "end_s": round(float(ev.end_s), 3),
        "speaker": {"id": ev.speaker_id, "name": ev.speaker_name, "new": bool(getattr(ev, "new_speaker", False)),
                    "similarity": None if ev.speaker_similarity is None else round(float(ev.speaker_similarity), 4)},
        "emotion": ev.emotion,
        "confidence": round(float(ev.probs[ev.emotion]), 4),
        "probs": {k: round(float(v), 4) for k, v in ev.probs.items()},
        "trust": {k: round(float(v), 4) for k, v in ev.trust.items()},
        "modalities": list(ev.modalities),
        "face": {"used": bool(ev.face_used), "track": (ev.face or {}).get("track")},
        "latency_ms": round(float(ev.timings_ms.get("total_after_end", 0.0)), 2),
        "over_budget": list(ev.over_budget),
        "degraded": list(ev.degraded),
    }


def expression_fields(ev) -> dict:
    """The fields of an hri_msgs/Expression for the speaking person (REP 155)."""
    name, valence, arousal = EXPRESSIONS.get(ev.emotion, ("neutral", 0.0, 0.0))
    return {"expression": name, "valence": valence, "arousal": arousal,
            "confidence": float(ev.probs[ev.emotion])}


class EmotionBridge:
    """What the node does, without ROS: events in, messages out; enrolment and the speaker list.

    Args:
        cache: the runtime's `SpeakerCache` (`Runtime.cache`).
        publish: `fn(topic, payload)`; payload is a JSON string for /mlsan/events and a dict of
            `expression_fields` for expression topics.
        clock: returns the ROS time in seconds (None: no stamp).
    """

    def __init__(self, cache, publish: Callable[[str, object], None], clock: Callable[[], float] | None = None) -> None:
        self.cache, self.publish, self.clock = cache, publish, clock
        self.last_speaker: int | None = None
        self._lock = threading.Lock()

    def on_event(self, ev) -> None:
        with self._lock:
            self.last_speaker = ev.speaker_id
        self.publish(EVENTS_TOPIC, json.dumps(event_message(ev, self.clock() if self.clock else None)))
        if ev.speaker_id is not None:
            self.publish(f"/humans/faces/mlsan_{ev.speaker_id}/expression", expression_fields(ev))

    def enrol(self, name: str) -> tuple[bool, str]:
        """Name the most recent speaker `name`; (success, message)."""
        name = name.strip()
        with self._lock:
            sid = self.last_speaker
        if not name:
            return False, "empty name"
        if sid is None:
            return False, "nobody has spoken yet"
        try:
            self.cache.rename(sid, name)
        except (KeyError, ValueError) as e:
            return False, f"cannot name speaker {sid}: {e}"
        return True, f"speaker {sid} is now {name!r}"

    def speakers_json(self) -> str:
        return json.dumps([s.to_dict() for s in self.cache.list()])


def main(args: list[str] | None = None) -> None:  # pragma: no cover - needs ROS 2
    import rclpy
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    try:
        from hri_msgs.msg import Expression  # ROS4HRI (REP 155)
    except ImportError:
        Expression = None

    from mlsan_edge.runtime import load_runtime

    class MlsanNode(Node):
        def __init__(self) -> None:
            super().__init__("mlsan_edge")
            p = {k: self.declare_parameter(k, v).value for k, v in
                 (("audio", "mic://default"), ("video", ""), ("cache", ""), ("bundle", "default"))}
            self.declare_parameter("enrol_name", "")
            self.rt = load_runtime(p["bundle"], cache=p["cache"] or None)
            self.events_pub = self.create_publisher(String, EVENTS_TOPIC, 10)
            self.expr_pubs: dict = {}
            self.bridge = EmotionBridge(self.rt.cache, self._publish,
                                        clock=lambda: self.get_clock().now().nanoseconds / 1e9)
            self.create_service(Trigger, "~/list_speakers", self._list)
            self.create_subscription(String, ENROL_TOPIC, lambda m: self._enrol(m.data), 10)
            self.add_on_set_parameters_callback(self._params)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._run, args=(p["audio"], p["video"] or None), daemon=True)
            self.thread.start()

        def _run(self, audio, video) -> None:
            try:
                for ev in self.rt.stream(audio=audio, video=video, stop=self.stop):
                    self.bridge.on_event(ev)
            except Exception as e:  # a device error ends the node with its message
                self.get_logger().error(f"runtime stopped: {e}")

        def _publish(self, topic: str, payload) -> None:
            if topic == EVENTS_TOPIC:
                self.events_pub.publish(String(data=payload))
            elif Expression is not None:
                pub = self.expr_pubs.get(topic) or self.expr_pubs.setdefault(
                    topic, self.create_publisher(Expression, topic, 10))
                msg = Expression()
                msg.header.stamp = self.get_clock().now().to_msg()
                msg.expression, msg.valence = payload["expression"], payload["valence"]
                msg.arousal, msg.confidence = payload["arousal"], payload["confidence"]
                pub.publish(msg)

        def _list(self, request, response):
            response.success, response.message = True, self.bridge.speakers_json()
            return response

        def _enrol(self, name: str) -> None:
            ok, msg = self.bridge.enrol(name)
            (self.get_logger().info if ok else self.get_logger().warning)(msg)

        def _params(self, params):
            for prm in params:
                if prm.name == "enrol_name" and prm.value:
                    ok, msg = self.bridge.enrol(str(prm.value))
                    return SetParametersResult(successful=ok, reason=msg)
            return SetParametersResult(successful=True)

        def destroy_node(self) -> None:
            self.stop.set()
            self.thread.join(timeout=10.0)
            self.rt.close()  # commits the speaker cache
            super().destroy_node()

    rclpy.init(args=args)
    node = MlsanNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
