"""ML-SAN on the device, one utterance at a time, as four separately timed graphs (no torch).

    stages = Stages("default")                        # onnxruntime or TensorRT, best precision
    history = stages.new_history()                    # one per dialogue / stream
    params = stages.speaker_params(profile_row(profile, stages.global_stats), voice_centroid)
    cal = stages.stage1(audio, visual, params)        # input-level calibration (FiLM)
    fused, trust = stages.stage2(text, cal, params)   # speaker-conditioned gating
    probs, latent = stages.stage3(fused, same_speaker_prev, history)

`speaker_params` depends only on the speaker's profile and voice centroid: the speaker cache
stores it (`params_to_bytes`) and recomputes it only when the profile changes. Feeding the
inputs as `mlsan_edge.data.replay.profile_inputs` replays them reproduces `train.predict`
(tests/test_stages.py). The graphs are `mlsan_edge.model.stages`, exported by `export/onnx_export.py`.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Mapping

import numpy as np

from mlsan_edge.backends.select import create_backend
from mlsan_edge.bundle import Bundle, load_bundle
from mlsan_edge.config import MODALITIES
from mlsan_edge.confidence import CONFIDENCE_FILE, Confidence
from mlsan_edge.profile import GlobalStats

log = logging.getLogger(__name__)

PARAMS_MAGIC = b"MLSP1"  # the speaker cache's parameter blobs (params_to_bytes)

GRAPHS: tuple[str, ...] = ("speaker", "stage1", "stage2", "stage3")
MODELS: tuple[str, ...] = ("student", "teacher")  # preference when the bundle holds both
GLOBAL_STATS_FILE = "global_stats.json"


class ContextHistory:
    """The context inputs of the last `length` utterances of one stream, oldest first.

    Args:
        length: W, `Stages.history_len`.
        hidden: H, `Stages.hidden`.
    """

    def __init__(self, length: int, hidden: int):
        self.values = np.zeros((length, hidden), np.float32)  # (W, H)
        self.mask = np.zeros(length, np.float32)  # (W,) 1 where an utterance is held

    def reset(self) -> None:
        """Forget everything (a new dialogue or stream)."""
        self.values[:] = 0
        self.mask[:] = 0

    def push(self, context_in: np.ndarray) -> None:
        """Append the newest utterance's context input (H,), dropping the oldest."""
        self.values[:-1], self.mask[:-1] = self.values[1:].copy(), self.mask[1:].copy()
        self.values[-1], self.mask[-1] = np.asarray(context_in, np.float32).reshape(-1), 1.0

    def __len__(self) -> int:
        return int(self.mask.sum())


def _row(x: np.ndarray | None, dim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(1, dim) float32 features and a (1, 1) presence mask; None = absent (zeros, mask 0)."""
    if x is None:
        return np.zeros((1, dim), np.float32), np.zeros((1, 1), np.float32)
    x = np.asarray(x, np.float32).reshape(1, -1)
    if x.shape[1] != dim:
        raise ValueError(f"{what} has {x.shape[1]} values, the bundle expects {dim} (see its feature contract)")
    return x, np.ones((1, 1), np.float32)


class Stages:
    """The four stage graphs of one model of a bundle.

    Args:
        bundle: a bundle folder, a loaded Bundle, or "default".
        backend: "auto", "onnxruntime" or "tensorrt" (see `mlsan_edge.backends.select`).
        precision: "auto", "fp32", "fp16" or "int8". A graph the bundle lacks at that precision
            (stage 1 has no weights, so it ships fp32 only) runs at its best available one;
            `precisions` says what each graph got.
        model: "auto" (student when present, else teacher), "student" or "teacher".
        threads: onnxruntime intra-op threads per graph (None = library default).

    Attributes:
        history_len: W, utterances of context stage 3 takes.
        hidden: H, width of fused/latent/context vectors.
        classes: class names in probability order.
        audio_dim: size of the audio feature vector.
        global_stats: the training corpus statistics (`profile_row`'s prior).
    """

    def __init__(self, bundle: str | Bundle = "default", backend: str = "auto", precision: str = "auto",
                 model: str = "auto", threads: int | None = None):
        self.bundle = load_bundle(bundle)
        self.model = self._pick_model(model)
        self.backends, self.precisions = {}, {}
        for g in GRAPHS:
            base = f"{self.model}.{g}"
            try:
                b = create_backend(self.bundle, base, backend, precision, threads=threads)
            except ValueError:
                if precision == "auto":
                    raise
                log.info("%s has no %s variant; using its best available precision", base, precision)
                b = create_backend(self.bundle, base, backend, "auto", threads=threads)
            self.backends[g], self.precisions[g] = b, b.precision
        spec = {g: self.bundle.model_spec(self._role(g)) for g in GRAPHS}
        hist = next(t for t in spec["stage3"].inputs if t.name == "history")
        self.history_len, self.hidden = int(hist.shape[1]), int(hist.shape[2])
        self.classes = tuple(self.bundle.manifest.classes)
        self.audio_dim = int(next(t for t in spec["stage1"].inputs if t.name == "audio").shape[1])
        self.visual_dim = int(next(t for t in spec["stage1"].inputs if t.name == "visual").shape[1])
        self.text_dim = int(next(t for t in spec["stage2"].inputs if t.name == "text").shape[1])
        sp = {t.name: t for t in spec["speaker"].inputs}
        self.voice_dim = int(sp["voice"].shape[1]) if "voice" in sp else 0
        path = self.bundle.root / GLOBAL_STATS_FILE
        if GLOBAL_STATS_FILE not in self.bundle.manifest.files:
            raise ValueError(f"bundle {self.bundle.root} has no {GLOBAL_STATS_FILE}: re-export it with `mlsan-edge export`")
        self.global_stats = GlobalStats.from_dict(json.loads(path.read_text()))
        # temperature and training distances (identity for a bundle exported before issue #9)
        self.confidence = Confidence.load(self.bundle.root / CONFIDENCE_FILE) \
            if CONFIDENCE_FILE in self.bundle.manifest.files else Confidence()

    def _pick_model(self, model: str) -> str:
        have = [m for m in MODELS if self.bundle.variants(f"{m}.stage3")]
        if model == "auto":
            if not have:
                raise ValueError(f"bundle {self.bundle.root} holds no stage graphs (roles {self.bundle.roles}); "
                                 "re-export it with `mlsan-edge export`")
            return have[0]
        if model not in have:
            raise ValueError(f"bundle has no {model!r} stage graphs; it has {have or 'none'}")
        return model

    def _role(self, graph: str) -> str:
        variants = self.bundle.variants(f"{self.model}.{graph}")
        return variants.get(self.precisions[graph]) or variants.get("fp32") or next(iter(variants.values()))

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = self.backends[graph]
        return b.run({n: feeds[n] for n in b.input_names})  # ablated graphs may take fewer inputs

    # --- the four stages ------------------------------------------------------------------------
    def speaker_params(self, profile_row: Mapping[str, np.ndarray], voice: np.ndarray | None) -> dict[str, np.ndarray]:
        """Speaker representation and FiLM parameters for the speaker's next utterance.

        Args:
            profile_row: `mlsan_edge.data.replay.profile_row(profile, stages.global_stats)`.
            voice: the speaker's voice-embedding centroid including this utterance (D_s,), or
                None when this utterance has no voice embedding.

        Returns:
            name -> float32 1-D array: speaker (S,), gamma/beta/shift/scale per calibrated modality.
        """
        feeds = {k: np.asarray(v, np.float32).reshape(1, -1) for k, v in profile_row.items()}
        feeds["voice"], feeds["voice_mask"] = _row(voice, self.voice_dim, "voice embedding")
        return {k: v[0] for k, v in self._run("speaker", feeds).items()}

    @staticmethod
    def params_to_bytes(params: Mapping[str, np.ndarray]) -> bytes:
        """Serialise `speaker_params` output for the speaker cache: b"MLSP1", a 4-byte header
        length, a JSON header [[name, shape], ...] and the float32 arrays back to back. It is read
        on every utterance, on the latency path: ~20x cheaper to read than an .npz."""
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
        header = json.dumps([[k, list(v.shape)] for k, v in arrays.items()]).encode()
        return b"".join([PARAMS_MAGIC, len(header).to_bytes(4, "little"), header, *(v.tobytes() for v in arrays.values())])

    @staticmethod
    def params_from_bytes(data: bytes) -> dict[str, np.ndarray]:
        """The inverse of `params_to_bytes` (and of the .npz blobs older caches hold)."""
        if not data.startswith(PARAMS_MAGIC):  # written by an earlier version: np.savez
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        start = len(PARAMS_MAGIC) + 4
        end = start + int.from_bytes(data[len(PARAMS_MAGIC):start], "little")
        out, pos = {}, end
        for name, shape in json.loads(data[start:end]):
            n = int(np.prod(shape))
            out[name] = np.frombuffer(data, np.float32, n, pos).reshape(shape)
            pos += 4 * n
        if pos != len(data):
            raise ValueError(f"speaker parameters blob has {len(data) - pos} bytes left over: the cache is corrupt")
        return out

    def stage1(self, audio: np.ndarray | None, visual: np.ndarray | None, params: Mapping[str, np.ndarray]) -> dict:
        """Calibrate raw audio (A,) and visual (V,) features (None = absent) with the speaker's
        FiLM parameters -> {"audio": (A,) or None, "visual": (V,) or None}."""
        feeds = {k: np.asarray(v, np.float32).reshape(1, -1) for k, v in params.items() if k != "speaker"}
        feeds["audio"], feeds["mask_audio"] = _row(audio, self.audio_dim, "audio features")
        feeds["visual"], feeds["mask_visual"] = _row(visual, self.visual_dim, "visual features")
        out = self._run("stage1", feeds)
        return {"audio": out["audio_cal"][0] if audio is not None else None,
                "visual": out["visual_cal"][0] if visual is not None else None}

    def stage2(self, text: np.ndarray | None, calibrated: Mapping, params: Mapping[str, np.ndarray]):
        """Gate the modalities -> fused (H,), trust {modality: weight} (0 for absent ones)."""
        t, t_mask = _row(text, self.text_dim, "text embedding")
        a, a_mask = _row(calibrated.get("audio"), self.audio_dim, "calibrated audio")
        v, v_mask = _row(calibrated.get("visual"), self.visual_dim, "calibrated visual")
        masks = {"text": t_mask, "audio": a_mask, "visual": v_mask}
        feeds = {"text": t, "audio_cal": a, "visual_cal": v, "speaker": np.asarray(params["speaker"], np.float32)[None],
                 "modality_mask": np.concatenate([masks[m] for m in MODALITIES], axis=1)}
        out = self._run("stage2", feeds)
        return out["fused"][0], {m: float(out["trust"][0, i]) for i, m in enumerate(MODALITIES)}

    def stage3(self, fused: np.ndarray, same_speaker_prev: bool, history: ContextHistory):
        """Context over `history` and the head -> probs (C,), latent (H,); pushes this
        utterance's context input into `history`."""
        if history.values.shape != (self.history_len, self.hidden):
            raise ValueError(f"history holds {history.values.shape}, the model needs ({self.history_len}, {self.hidden}): "
                             "create it with stages.new_history()")
        feeds = {"fused": np.asarray(fused, np.float32).reshape(1, -1),
                 "same_speaker_prev": np.full((1, 1), float(bool(same_speaker_prev)), np.float32),
                 "history": history.values[None], "history_mask": history.mask[None]}
        out = self._run("stage3", feeds)
        history.push(out["context_in"][0])
        return out["probs"][0], out["latent"][0]

    def new_history(self) -> ContextHistory:
        return ContextHistory(self.history_len, self.hidden)

    def close(self) -> None:
        for b in self.backends.values():
            b.close()

    def __repr__(self) -> str:
        return f"Stages({self.model!r}, {self.bundle.root}, precisions={self.precisions})"


__all__ = ["Stages", "ContextHistory", "GRAPHS", "GLOBAL_STATS_FILE"]
