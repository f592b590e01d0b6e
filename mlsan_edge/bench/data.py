"""Real speech for the benchmarks: RAVDESS clips trimmed to their speech, with sentence and label.

Where the clips come from, first found wins: `--data` (a RAVDESS `audio16k` folder, default
../shared/data/ravdess/audio16k beside a checkout), the 8 clips packaged in
`mlsan_edge/assets/sample/ravdess_mini`, then the test fixture `tests/fixtures/speech_ravdess_a01.flac`.

Each clip is cut to its speech (`trim_speech`), so the *true end of speech* of a test stream is
known from how the stream was built: the end of each clip, followed by digital silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsan_edge.config import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[2]
SHARED_RAVDESS = REPO.parent / "shared" / "data" / "ravdess" / "audio16k"
SAMPLE_RAVDESS = REPO / "mlsan_edge" / "assets" / "sample" / "ravdess_mini" / "audio16k"
FIXTURE = REPO / "tests" / "fixtures" / "speech_ravdess_a01.flac"
SHARED_FACES = REPO.parent / "shared" / "data" / "ravdess" / "faces"

FRAME = SAMPLE_RATE // 100  # 10 ms frames for the speech trim
SPEECH_DB = 35.0  # a frame is speech when within 35 dB of the clip's loudest frame ...
FLOOR_DB = 15.0  # ... and 15 dB above its noise floor (10th percentile frame: the clips open with silence)
KEEP_PAD_S = 0.05  # kept around the trimmed speech, so onsets and releases are not clipped
GAP_S = 1.0  # silence between clips in a test stream (> the VAD's 500 ms hangover)
SENTENCES = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}  # RAVDESS statements
RAVDESS_TO_EMOTION = {1: "neutral", 2: "neutral", 3: "joy", 4: "sadness", 5: "anger", 6: "fear", 7: "disgust",
                      8: "surprise"}  # as mlsan_edge.data.ravdess (calm folds into neutral)


@dataclass
class Clip:
    """One utterance of real speech.

    Attributes:
        name: file name.
        audio: (n,) float32 16 kHz, trimmed to speech (+ KEEP_PAD_S each side).
        sentence: what is said (RAVDESS statement), for the text encoder.
        emotion: the label, one of mlsan_edge.config.EMOTIONS, or None when unknown.
    """

    name: str
    audio: np.ndarray
    sentence: str
    emotion: str | None

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE


def find_clips(data: str | Path | None = None) -> tuple[list[Path], str]:
    """FLAC files of the first source that exists -> (paths sorted, description of the source)."""
    for root, what in ((data, "--data"), (SHARED_RAVDESS, "shared RAVDESS"), (SAMPLE_RAVDESS, "packaged sample")):
        if root is not None and Path(root).is_dir():
            files = sorted(Path(root).rglob("*.flac"))
            if files:
                return files, f"{what}: {root}"
    if FIXTURE.exists():
        return [FIXTURE], f"test fixture: {FIXTURE}"
    raise FileNotFoundError(f"no speech found: pass --data pointing at RAVDESS audio16k (looked in {SHARED_RAVDESS}, "
                            f"{SAMPLE_RAVDESS}, {FIXTURE})")


def trim_speech(wav: np.ndarray, vad=None) -> np.ndarray:
    """`wav` cut from KEEP_PAD_S before its first to the end of its last speech chunk.

    Speech chunks are the 32 ms chunks silero VAD scores >= 0.5 on the clip alone (the
    model's per-chunk decision, without the segmenter's hangover that the benchmark measures);
    an energy rule is the fallback without a VAD. The cut ends exactly at the last speech chunk,
    so in a stream built from cut clips the true end of speech is the end of each clip.
    """
    if vad is None:
        try:
            from mlsan_edge.features.vad import SileroVAD

            vad = SileroVAD()
        except (ImportError, FileNotFoundError):
            return _trim_energy(wav)
    from mlsan_edge.features.vad import CHUNK_SAMPLES

    vad.reset()
    n = wav.shape[0] // CHUNK_SAMPLES
    probs = np.array([vad(wav[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES]) for i in range(n)])
    idx = np.flatnonzero(probs >= 0.5)
    if idx.size == 0:
        return _trim_energy(wav)
    pad = int(KEEP_PAD_S * SAMPLE_RATE)
    return wav[max(0, idx[0] * CHUNK_SAMPLES - pad):(idx[-1] + 1) * CHUNK_SAMPLES]


def _trim_energy(wav: np.ndarray) -> np.ndarray:
    """Fallback: frames within SPEECH_DB of the loudest and FLOOR_DB above the noise floor."""
    n = wav.shape[0] // FRAME
    if n < 3:
        return wav
    db = 10 * np.log10(np.square(wav[: n * FRAME].reshape(n, FRAME)).mean(axis=1) + 1e-12)
    idx = np.flatnonzero(db >= max(db.max() - SPEECH_DB, np.percentile(db, 10) + FLOOR_DB))
    pad = int(KEEP_PAD_S * SAMPLE_RATE)
    return wav[max(0, idx[0] * FRAME - pad): (idx[-1] + 1) * FRAME]


def _describe(path: Path) -> tuple[str, str | None]:
    parts = path.stem.split("-")
    if len(parts) == 7 and all(p.isdigit() for p in parts):
        return SENTENCES.get(int(parts[4]), SENTENCES[1]), RAVDESS_TO_EMOTION.get(int(parts[2]))
    return SENTENCES[1], None


def load_clips(data: str | Path | None = None, n: int = 24, seed: int = 0) -> tuple[list[Clip], str]:
    """`n` clips (a seeded choice across speakers; repeated when the source has fewer), trimmed."""
    from mlsan_edge.features.audio import load_audio

    files, source = find_clips(data)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    pick = [files[order[i % len(files)]] for i in range(n)]
    cache: dict[Path, np.ndarray] = {}
    clips, vad = [], None
    for f in pick:
        if f not in cache:
            if vad is None:
                from mlsan_edge.features.vad import SileroVAD

                vad = SileroVAD()
            cache[f] = trim_speech(load_audio(f), vad)
        sentence, emotion = _describe(f)
        clips.append(Clip(f.name, cache[f], sentence, emotion))
    return clips, source


def build_stream(clips: list[Clip], gap_s: float = GAP_S) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips joined by silence (and framed by it) -> (audio (n,) float32, [(start_s, end_s)] of each clip's speech)."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    parts, spans, pos = [gap], [], gap.shape[0]
    for c in clips:
        spans.append((pos / SAMPLE_RATE, (pos + c.audio.shape[0]) / SAMPLE_RATE))
        parts += [c.audio, gap]
        pos += c.audio.shape[0] + gap.shape[0]
    return np.concatenate(parts), spans


def face_image() -> tuple[np.ndarray, str]:
    """A BGR frame with one face (a RAVDESS still) or, without ../shared, a mid-grey 640x360 frame."""
    stills = sorted(SHARED_FACES.glob("*.png")) if SHARED_FACES.is_dir() else []
    if stills:
        import cv2

        img = cv2.imread(str(stills[0]))
        if img is not None:
            return img, f"RAVDESS still {stills[0].name} ({img.shape[1]}x{img.shape[0]})"
    return np.full((360, 640, 3), 128, np.uint8), "synthetic grey 640x360 frame (no face: detection cost only)"
