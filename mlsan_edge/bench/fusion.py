"""The fusion stages (1, 2, 3) of one utterance on every backend present, on the same inputs.

Backends (each skipped, with the reason recorded, when it is not available here):

    onnxruntime-int8   the bundle's student graphs, INT8 where the bundle has them (stage 1 has
                       no weights and ships FP32 only), via `mlsan_edge.backends.stages.Stages`
    onnxruntime-fp32   the same graphs at FP32
    torch-teacher      the bundle's PyTorch teacher (`teacher/`, an ensemble: every member runs
                       and their probabilities are averaged, as `MLSANEnsemble` does), eager,
                       through the per-utterance modules of `mlsan_edge.model.stages`
    torch-student      the student checkpoint (`student/`), eager
    torch-cuda-*       the two above on a CUDA device (host and CUDA-event device time)
    tensorrt-fp16/int8 `Stages(backend="tensorrt")` when TensorRT and the engines are present

What is timed per utterance: stage 1 + stage 2 + stage 3 ("fusion"). The speaker graph (FiLM and
gate parameters) depends only on the speaker's profile; the device caches it and recomputes it
after the event, off the latency path, so it is timed separately ("speaker") and not in "fusion".
Inputs: real audio features and sentence embeddings of the benchmark clips, a profile built
from the earlier clips, no visual features (audio + text, as a RAVDESS stream without a camera).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsan_edge.bench.stats import summarize, time_calls, time_cuda_calls

log = logging.getLogger(__name__)

FUSION_STEPS = ("stage1", "stage2", "stage3")
CPU_BACKENDS = ("onnxruntime-int8", "onnxruntime-fp32", "torch-teacher", "torch-student")
GPU_BACKENDS = ("torch-cuda-teacher", "torch-cuda-student", "tensorrt-fp16", "tensorrt-int8")


@dataclass
class StageInput:
    """One utterance's inputs to the fusion stages (float32; None = modality absent)."""

    audio: np.ndarray  # (A,) utterance_features
    text: np.ndarray | None  # (T,) sentence embedding
    visual: np.ndarray | None  # (V,)
    voice: np.ndarray  # (D_s,) the speaker's voice centroid
    profile_row: dict  # profile_row(profile, global_stats)
    same_prev: bool  # the previous utterance had the same speaker


def stage_inputs(clips, bundle, text_encoder=None, voice=None) -> list[StageInput]:
    """Real inputs for each clip: one profile per sentence's speaker, built from the earlier clips."""
    import json

    from mlsan_edge.config import TEXT_DIM, VISUAL_DIM
    from mlsan_edge.features.audio import AUDIO_DIM, utterance_features
    from mlsan_edge.profile import GlobalStats, SpeakerProfile, profile_row, speaker_voice

    if voice is None:
        from mlsan_edge.features.voice import VoiceEncoder

        voice = VoiceEncoder(num_threads=1)
    if text_encoder is None:
        from mlsan_edge.features.text import TextEncoder

        text_encoder = TextEncoder(num_threads=1)
    gs = GlobalStats.from_dict(json.loads((bundle.root / "global_stats.json").read_text()))
    dims = {"audio": AUDIO_DIM, "visual": VISUAL_DIM, "text": TEXT_DIM}
    profiles: dict[str, SpeakerProfile] = {}
    texts: dict[str, np.ndarray] = {}
    out, prev = [], None
    for c in clips:
        who = c.name.split("-")[-1]  # RAVDESS actor; any other name is one speaker per file
        p = profiles.setdefault(who, SpeakerProfile(dims))
        a = utterance_features(c.audio)
        e = voice.embed(c.audio)
        if c.sentence not in texts:
            texts[c.sentence] = text_encoder.embed(c.sentence)
        out.append(StageInput(a, texts[c.sentence], None, speaker_voice(p, e), profile_row(p, gs), prev == who))
        p.update({"audio": a, "text": texts[c.sentence]}, voice=e)
        prev = who
    return out


# --- backends -----------------------------------------------------------------------------------
class OrtFusion:
    """The bundle's graphs through `Stages` (onnxruntime or TensorRT)."""

    def __init__(self, bundle, backend: str, precision: str, model: str, threads: int) -> None:
        from mlsan_edge.backends.stages import Stages

        self.stages = Stages(bundle, backend=backend, precision=precision, model=model, threads=threads)
        self.history = self.stages.new_history()
        self.precisions = dict(self.stages.precisions)
        self.device = "cpu" if backend == "onnxruntime" else "cuda"

    def params(self, x: StageInput):
        return self.stages.speaker_params(x.profile_row, x.voice)

    def stage1(self, x: StageInput, params):
        return self.stages.stage1(x.audio, x.visual, params)

    def stage2(self, x: StageInput, cal, params):
        return self.stages.stage2(x.text, cal, params)[0]

    def stage3(self, x: StageInput, fused):
        return self.stages.stage3(fused, x.same_prev, self.history)[0]

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.stages.close()


class TorchFusion:
    """A PyTorch checkpoint (teacher ensemble or student), eager, one utterance at a time."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        import torch

        from mlsan_edge.model.stages import history_len, stage_modules
        from mlsan_edge.train import load_checkpoint

        self.torch = torch
        model, _, _ = load_checkpoint(checkpoint)
        members = list(model.members) if hasattr(model, "members") else [model]
        self.device = device
        # .to() after wrapping: Stage3Graph builds its attention-mask buffers on the CPU
        self.mods = [{g: mod.to(device) for g, mod in stage_modules(m).items()} for m in members]
        W, H = history_len(members[0]), members[0].cfg.hidden
        self.history = [torch.zeros(1, W, H, device=device) for _ in members]
        self.history_mask = [torch.zeros(1, W, device=device) for _ in members]
        self.precisions = {g: "fp32" for g in ("speaker", *FUSION_STEPS)}
        self.members = len(members)

    def _t(self, x) -> "torch.Tensor":
        return self.torch.as_tensor(np.asarray(x, np.float32)).reshape(1, -1).to(self.device)

    def params(self, x: StageInput):
        torch = self.torch
        row = x.profile_row
        feeds = [self._t(x.voice), torch.ones(1, 1, device=self.device)] + [
            self._t(row[k]) for k in ("profile_audio_mean", "profile_audio_var", "profile_visual_mean",
                                      "profile_visual_var", "profile_text_mean", "profile_conf")]
        with torch.inference_mode():
            return [m["speaker"](*feeds) for m in self.mods]  # per member: (speaker, γ/β/shift/scale x 2)

    def stage1(self, x: StageInput, params):
        torch = self.torch
        with torch.inference_mode():
            audio = self._t(x.audio)
            visual = torch.zeros(1, params[0][5].shape[1], device=self.device) if x.visual is None else self._t(x.visual)
            ma = torch.ones(1, 1, device=self.device)
            mv = torch.full((1, 1), float(x.visual is not None), device=self.device)
            return [m["stage1"](audio, visual, ma, mv, *p[1:]) for m, p in zip(self.mods, params)]

    def stage2(self, x: StageInput, cal, params):
        torch = self.torch
        with torch.inference_mode():
            text = self._t(x.text) if x.text is not None else None
            mask = torch.tensor([[float(text is not None), 1.0, float(x.visual is not None)]], device=self.device)
            if text is None:
                text = torch.zeros(1, self.mods[0]["stage2"].m.cfg.text_dim, device=self.device)
            return [m["stage2"](text, c[0], c[1], mask, p[0])[0] for m, c, p in zip(self.mods, cal, params)]

    def stage3(self, x: StageInput, fused):
        torch = self.torch
        with torch.inference_mode():
            same = torch.full((1, 1), float(x.same_prev), device=self.device)
            probs = []
            for i, (m, f) in enumerate(zip(self.mods, fused)):
                p, _, ctx = m["stage3"](f, same, self.history[i], self.history_mask[i])
                self.history[i] = torch.cat([self.history[i][:, 1:], ctx[:, None]], dim=1)
                self.history_mask[i] = torch.cat([self.history_mask[i][:, 1:], torch.ones_like(same)], dim=1)
                probs.append(p)
            return (sum(probs) / len(probs)).cpu().numpy()[0]  # the ensemble's mean probabilities

    def sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def close(self) -> None:
        pass


def available_backends(bundle, threads: int, wanted=None) -> tuple[dict, dict]:
    """Build every backend that works here -> ({name: backend}, {name: why skipped})."""
    makers = {
        "onnxruntime-int8": lambda: OrtFusion(bundle, "onnxruntime", "int8", "student", threads),
        "onnxruntime-fp32": lambda: OrtFusion(bundle, "onnxruntime", "fp32", "student", threads),
        "torch-teacher": lambda: TorchFusion(bundle.root / "teacher"),
        "torch-student": lambda: TorchFusion(bundle.root / "student"),
        "torch-cuda-teacher": lambda: TorchFusion(bundle.root / "teacher", "cuda"),
        "torch-cuda-student": lambda: TorchFusion(bundle.root / "student", "cuda"),
        "tensorrt-fp16": lambda: OrtFusion(bundle, "tensorrt", "fp16", "student", threads),
        "tensorrt-int8": lambda: OrtFusion(bundle, "tensorrt", "int8", "student", threads),
    }
    have, skipped = {}, {}
    for name, make in makers.items():
        if wanted is not None and name not in wanted:
            continue
        why = _unavailable(name)
        if why:
            skipped[name] = why
            continue
        try:
            have[name] = make()
        except Exception as e:  # a backend that cannot load here is reported, not fatal
            skipped[name] = f"{type(e).__name__}: {e}"
            log.info("fusion backend %s skipped: %s", name, e)
    return have, skipped


def _unavailable(name: str) -> str | None:
    if name.startswith("torch"):
        try:
            import torch
        except ImportError:
            return "torch is not installed (pip install mlsan-edge[train])"
        if "cuda" in name and not torch.cuda.is_available():
            return "no CUDA device"
    if name.startswith("tensorrt"):
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed"
    return None


# --- the measurement ------------------------------------------------------------------------------
def bench_backend(be, inputs: list[StageInput], runs: int, warmup: int, progress=None) -> dict:
    """Per-step and whole-fusion statistics of one backend (ms); CUDA backends add device_ms."""
    n = len(inputs)
    params = [be.params(x) for x in inputs]  # cached on the device; the speaker graph is timed below
    cuda = getattr(be, "device", "cpu") != "cpu" and isinstance(be, TorchFusion)
    per = {s: np.empty(runs + warmup) for s in FUSION_STEPS}
    k = [0]  # calls so far: warm-up first, then the measured runs
    clock = time.perf_counter

    def utterance(i: int) -> None:
        x, p = inputs[i % n], params[i % n]
        t0 = clock()
        cal = be.stage1(x, p)
        be.sync()
        t1 = clock()
        fused = be.stage2(x, cal, p)
        be.sync()
        t2 = clock()
        be.stage3(x, fused)
        be.sync()
        t3 = clock()
        j, k[0] = k[0], k[0] + 1
        per["stage1"][j], per["stage2"][j], per["stage3"][j] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    out = {"precisions": be.precisions, "device": getattr(be, "device", "cpu")}
    if cuda:
        host, dev = time_cuda_calls(utterance, runs, warmup, progress)
        out["fusion"], out["fusion_device"] = summarize(host), summarize(dev)
    else:
        # the loop's own timings of the chain; per-step times come from inside it
        host = time_calls(utterance, runs, warmup, progress)
        out["fusion"] = summarize(host)
    out["_fusion_ms"] = host  # raw samples for the plots (not serialised)
    for s in FUSION_STEPS:
        out[s] = summarize(per[s][warmup:])
    sp = time_calls(lambda i: be.params(inputs[i % n]), max(3, runs // 4), max(1, warmup // 4))
    out["speaker"] = summarize(sp)
    if isinstance(be, TorchFusion):
        out["members"] = be.members
    return out


def bench_fusion(bundle, inputs: list[StageInput], runs: int, warmup: int, threads: int, wanted=None,
                 progress=None) -> tuple[dict, dict]:
    """All available backends -> ({backend: stats}, {backend: why skipped})."""
    results, (have, skipped) = {}, available_backends(bundle, threads, wanted)
    if any(isinstance(be, TorchFusion) for be in have.values()):
        import torch

        torch.set_num_threads(threads)  # the same thread count as onnxruntime's intra-op pool
    for name, be in have.items():
        if progress is not None:
            progress.describe(f"fusion {name}")
        try:
            results[name] = bench_backend(be, inputs, runs, warmup, progress.update if progress else None)
        finally:
            be.close()
    return results, skipped
