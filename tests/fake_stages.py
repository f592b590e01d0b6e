"""A stand-in for `mlsan_edge.backends.stages.Stages` with the same API and no model file:
deterministic numpy arithmetic, so runtime tests need no bundle."""

from __future__ import annotations

import io

import numpy as np

from mlsan_edge.config import EMOTIONS, MODALITIES, TEXT_DIM, VISUAL_DIM
from mlsan_edge.profile import GlobalStats
from mlsan_edge.features.audio import AUDIO_DIM


class FakeHistory:
    def __init__(self, length: int, hidden: int) -> None:
        self.values = np.zeros((length, hidden), np.float32)
        self.n = 0

    def reset(self) -> None:
        self.values[:] = 0
        self.n = 0

    def push(self, x) -> None:
        self.values = np.roll(self.values, -1, axis=0)
        self.values[-1] = x
        self.n = min(self.n + 1, len(self.values))

    def __len__(self) -> int:
        return self.n


class FakeStages:
    history_len, hidden, classes, audio_dim = 4, 8, EMOTIONS, AUDIO_DIM

    def __init__(self, delay_s: float = 0.0) -> None:
        dims = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
        self.global_stats = GlobalStats({m: np.zeros(d) for m, d in dims.items()},
                                        {m: np.ones(d) for m, d in dims.items()})
        self.calls = {"speaker_params": 0, "stage1": 0, "stage2": 0, "stage3": 0}
        self.delay_s = delay_s
        self.seen_same_prev: list[bool] = []

    def new_history(self) -> FakeHistory:
        return FakeHistory(self.history_len, self.hidden)

    def speaker_params(self, profile_row, voice):
        self.calls["speaker_params"] += 1
        v = np.zeros(8, np.float32) if voice is None else np.asarray(voice, np.float32)[:8]
        return {"film": v.copy(), "conf": np.asarray(profile_row["profile_conf"], np.float32)}

    @staticmethod
    def params_to_bytes(params) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **params)
        return buf.getvalue()

    @staticmethod
    def params_from_bytes(b: bytes) -> dict:
        with np.load(io.BytesIO(b)) as z:
            return {k: z[k] for k in z.files}

    def stage1(self, audio, visual, params):
        import time

        self.calls["stage1"] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"audio": None if audio is None else np.tanh(audio[:8]),
                "visual": None if visual is None else np.tanh(visual[:8])}

    def stage2(self, text, calibrated, params):
        self.calls["stage2"] += 1
        parts = [v for v in (calibrated["audio"], calibrated["visual"]) if v is not None]
        if text is not None:
            parts.append(np.asarray(text[:8]))
        fused = np.mean(parts, axis=0).astype(np.float32)
        present = {"text": text is not None, "audio": calibrated["audio"] is not None,
                   "visual": calibrated["visual"] is not None}
        w = np.array([float(present[m]) for m in MODALITIES])
        return fused, dict(zip(MODALITIES, (w / max(w.sum(), 1)).tolist()))

    def stage3(self, fused, same_speaker_prev, history):
        self.calls["stage3"] += 1
        self.seen_same_prev.append(bool(same_speaker_prev))
        logits = np.concatenate([fused[:7], np.zeros(max(0, 7 - len(fused)))])[:7] + 0.1 * len(history)
        p = np.exp(logits - logits.max())
        history.push(fused)
        return (p / p.sum()).astype(np.float32), fused.astype(np.float32)
