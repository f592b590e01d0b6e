"""The demo's overlay: what the model sees, drawn on a video frame with OpenCV (Hershey fonts).

`draw_overlay(image, state)` is a pure function of the frame and an `OverlayState`: the face box
of the attributed speaker (other faces thin), speaker id / name and similarity, the emotion with
bars over the 7 probabilities, the stage-2 trust as three bars (text / audio / visual), a latency
HUD per step coloured against its budget, a strip with the last utterances, and a VU meter with
the VAD's 'listening / speech' indicator. Sizes scale with the frame height (designed at 480 px;
readable at 640x480 and 1280x720); frames smaller than `MIN_HEIGHT` are enlarged first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlsan_edge.config import EMOTIONS

MIN_HEIGHT = 480  # smaller frames are enlarged so the text stays legible
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
HUD_STEPS = ("vad", "embedding", "cache", "audio_features", "face", "text", "stage1", "stage2", "stage3",
             "total_after_end")
HUD_LABELS = {"audio_features": "audio", "total_after_end": "TOTAL", "embedding": "embed"}
# BGR per emotion
COLOURS = {"neutral": (190, 190, 190), "joy": (0, 210, 255), "surprise": (0, 150, 255), "fear": (200, 90, 170),
           "sadness": (220, 130, 40), "disgust": (70, 170, 70), "anger": (50, 50, 230)}
TRUST_COLOURS = {"text": (200, 160, 60), "audio": (80, 200, 120), "visual": (60, 160, 230)}
GOOD, WARN, BAD = (90, 200, 90), (0, 190, 255), (60, 60, 240)
WHITE, GREY, DARK = (245, 245, 245), (150, 150, 150), (25, 25, 25)


@dataclass
class OverlayState:
    """Everything the overlay shows at one instant.

    Attributes:
        t: stream time of the frame, s.
        faces: [(track, (x, y, w, h))] in the frame's pixels, from the latest analysed frame.
        speaker_track: the face track the latest utterance was attributed to (None: none).
        event: the latest event (a `runtime.events.Event` or anything with its fields), or None.
        recent: the last utterances, oldest first: [(speaker label, emotion)].
        vu_db: audio level of the latest chunk, dBFS; in_speech: the VAD is inside an utterance.
        budgets: step -> budget in ms (the latency HUD's colours).
        banner: a line shown at the top (e.g. 'paused', 'name: Ann_').
        title: source name shown in the status bar.
    """

    t: float = 0.0
    faces: list = field(default_factory=list)
    speaker_track: int | None = None
    event: object | None = None
    recent: list = field(default_factory=list)
    vu_db: float = -90.0
    in_speech: bool = False
    budgets: dict = field(default_factory=dict)
    banner: str = ""
    title: str = ""


def speaker_label(event) -> str:
    """'Ann (#2)' or '#2' (or '?' without a speaker)."""
    if event is None or event.speaker_id is None:
        return "?"
    return f"{event.speaker_name} (#{event.speaker_id})" if event.speaker_name else f"#{event.speaker_id}"


def prepare(image: np.ndarray) -> np.ndarray:
    """A copy of the frame, enlarged to at least MIN_HEIGHT pixels high."""
    import cv2

    h, w = image.shape[:2]
    if h >= MIN_HEIGHT:
        return image.copy()
    s = MIN_HEIGHT / h
    return cv2.resize(image, (int(round(w * s)), MIN_HEIGHT), interpolation=cv2.INTER_LINEAR)


class _Pen:
    """Drawing helpers at a scale (1.0 = 480 px high)."""

    def __init__(self, img: np.ndarray) -> None:
        import cv2

        self.cv2, self.img = cv2, img
        self.s = img.shape[0] / 480.0

    def px(self, v: float) -> int:
        return int(round(v * self.s))

    def text(self, x, y, s, scale=0.42, colour=WHITE, thick=1) -> None:
        cv2, sc = self.cv2, scale * self.s
        th = max(1, self.px(thick))
        cv2.putText(self.img, s, (int(x), int(y)), FONT, sc, DARK, th + max(1, self.px(2)), cv2.LINE_AA)
        cv2.putText(self.img, s, (int(x), int(y)), FONT, sc, colour, th, cv2.LINE_AA)

    def shade(self, x0, y0, x1, y1, alpha=0.55) -> None:
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        roi = self.img[y0:int(y1), x0:int(x1)]
        roi[:] = (roi * (1 - alpha)).astype(np.uint8)

    def bar(self, x, y, w, h, frac, colour) -> None:
        cv2 = self.cv2
        cv2.rectangle(self.img, (int(x), int(y)), (int(x + w), int(y + h)), (70, 70, 70), -1)
        fw = int(round(w * float(np.clip(frac, 0, 1))))
        if fw > 0:
            cv2.rectangle(self.img, (int(x), int(y)), (int(x + fw), int(y + h)), colour, -1)


def _status_bar(p: _Pen, st: OverlayState) -> int:
    """VU meter, listening/speech indicator, time and title; returns the bar's height."""
    cv2, img = p.cv2, p.img
    W = img.shape[1]
    h = p.px(30)
    p.shade(0, 0, W, h, 0.6)
    y = p.px(21)
    colour = (60, 60, 235) if st.in_speech else GOOD
    cv2.circle(img, (p.px(14), p.px(15)), p.px(7), colour, -1, cv2.LINE_AA)
    p.text(p.px(26), y, "SPEECH" if st.in_speech else "listening", 0.5, colour)
    x = p.px(118)
    p.text(x, y, "VU", 0.4, GREY)
    vx, vw = x + p.px(24), p.px(120)
    frac = (np.clip(st.vu_db, -60.0, 0.0) + 60.0) / 60.0
    p.bar(vx, p.px(9), vw, p.px(12), frac, (60, 60, 235) if st.vu_db > -6 else GOOD if st.vu_db > -45 else GREY)
    p.text(vx + vw + p.px(6), y, f"{max(st.vu_db, -90.0):4.0f} dB", 0.4, GREY)
    right = f"{st.title}  {st.t:6.1f} s" if st.title else f"{st.t:6.1f} s"
    (tw, _), _ = cv2.getTextSize(right, FONT, 0.42 * p.s, max(1, p.px(1)))
    p.text(W - tw - p.px(8), y, right, 0.42, GREY)
    return h


def _faces(p: _Pen, st: OverlayState) -> None:
    cv2, img = p.cv2, p.img
    ev = st.event
    for track, (x, y, w, h) in st.faces:
        if track == st.speaker_track and ev is not None:
            colour = COLOURS.get(ev.emotion, WHITE)
            cv2.rectangle(img, (x, y), (x + w, y + h), colour, max(2, p.px(3)), cv2.LINE_AA)
            label = f"{speaker_label(ev)}  {ev.emotion}"
            p.text(x, max(p.px(44), y - p.px(8)), label, 0.55, colour, 1)
        else:
            cv2.rectangle(img, (x, y), (x + w, y + h), GREY, max(1, p.px(1)), cv2.LINE_AA)


def _panel(p: _Pen, st: OverlayState, top: int, bottom: int) -> None:
    """Speaker, emotion bars, trust bars and latency HUD in a shaded column on the right."""
    W = p.img.shape[1]
    pw = max(p.px(210), int(W * 0.30))
    x0 = W - pw
    p.shade(x0, top, W, bottom, 0.6)
    x, y, lh = x0 + p.px(8), top + p.px(18), p.px(15)
    ev = st.event
    if ev is None:
        p.text(x, y, "waiting for speech...", 0.45, GREY)
        return
    sim = getattr(ev, "speaker_similarity", None)
    p.text(x, y, f"speaker {speaker_label(ev)}", 0.48, WHITE)
    y += lh
    extra = " (new)" if getattr(ev, "new_speaker", False) else ""
    p.text(x, y, f"similarity {sim:.2f}{extra}" if sim is not None else f"similarity -{extra}", 0.4, GREY)
    y += lh + p.px(6)
    conf = float(ev.probs.get(ev.emotion, 0.0))
    p.text(x, y, f"{ev.emotion.upper()}  {conf:.0%}", 0.6, COLOURS.get(ev.emotion, WHITE), 1)
    y += p.px(8)
    label_w, bar_w = p.px(62), pw - p.px(62) - p.px(52)
    for cls in EMOTIONS:
        v = float(ev.probs.get(cls, 0.0))
        p.text(x, y + p.px(10), cls, 0.36, WHITE if cls == ev.emotion else GREY)
        p.bar(x + label_w, y + p.px(2), bar_w, p.px(9), v, COLOURS.get(cls, WHITE))
        p.text(x + label_w + bar_w + p.px(4), y + p.px(10), f"{v:.2f}", 0.34, GREY)
        y += p.px(13)
    y += p.px(12)
    p.text(x, y, "trust (stage 2)", 0.4, WHITE)
    y += p.px(4)
    for m in ("text", "audio", "visual"):
        v = ev.trust.get(m)
        p.text(x, y + p.px(10), m, 0.36, GREY)
        p.bar(x + label_w, y + p.px(2), bar_w, p.px(9), v or 0.0, TRUST_COLOURS[m])
        p.text(x + label_w + bar_w + p.px(4), y + p.px(10), "-" if v is None else f"{v:.2f}", 0.34, GREY)
        y += p.px(13)
    y += p.px(12)
    p.text(x, y, "latency ms vs budget", 0.4, WHITE)
    y += p.px(2)
    col_w = (pw - p.px(12)) // 2
    for i, step in enumerate(HUD_STEPS):
        ms = ev.timings_ms.get(step)
        budget = st.budgets.get(step)
        if ms is None:
            colour = GREY
        elif budget is None or ms <= 0.5 * budget:
            colour = GOOD
        elif ms <= budget:
            colour = WARN
        else:
            colour = BAD
        cx, cy = x + (i % 2) * col_w, y + p.px(12) + (i // 2) * p.px(13)
        val = "-" if ms is None else f"{ms:.0f}"
        p.text(cx, cy, f"{HUD_LABELS.get(step, step)} {val}", 0.35, colour)


def _strip(p: _Pen, st: OverlayState) -> int:
    """The last utterances along the bottom; returns the strip's top y."""
    H, W = p.img.shape[:2]
    h = p.px(28)
    y0 = H - h
    p.shade(0, y0, W, H, 0.6)
    x = p.px(8)
    p.text(x, H - p.px(9), "last:", 0.4, GREY)
    x += p.px(40)
    for label, emotion in st.recent[-6:]:
        s = f"{label} {emotion}"
        (tw, _), _ = p.cv2.getTextSize(s, FONT, 0.4 * p.s, max(1, p.px(1)))
        if x + tw > W - p.px(8):
            break
        p.text(x, H - p.px(9), s, 0.4, COLOURS.get(emotion, WHITE))
        x += tw + p.px(14)
    return y0


def draw_overlay(image: np.ndarray, state: OverlayState) -> np.ndarray:
    """The annotated frame: a new BGR uint8 image (the input is not modified).

    Args:
        image: (H, W, 3) uint8 BGR; face boxes in `state` are in its pixels (they are rescaled
            when the frame is enlarged to MIN_HEIGHT).
        state: what to show.
    """
    h0 = image.shape[0]
    img = prepare(image)
    scale = img.shape[0] / h0
    if scale != 1.0:
        state = OverlayState(**{**state.__dict__, "faces": [(k, tuple(int(round(v * scale)) for v in b))
                                                             for k, b in state.faces]})
    p = _Pen(img)
    _faces(p, state)
    top = _status_bar(p, state)
    bottom = _strip(p, state)
    _panel(p, state, top, bottom)
    if state.banner:
        p.text(p.px(10), top + p.px(24), state.banner, 0.6, WARN, 1)
    return img
