"""One utterance through the model, synchronously: `Pipeline.process(conversation, job, ...) -> Event`.

Data flows one way per utterance: voice embedding -> speaker cache (identify) -> FiLM/gate
parameters (read from the cache) -> audio features -> face features -> text -> stage 1 ->
stage 2 -> stage 3 -> event -> profile update and the speaker's parameters for their next
utterance (after the prediction, as in training).

A `Pipeline` holds what is loaded once (stages, encoders, speaker cache, face analysis, budgets);
a `Conversation` holds one dialogue's context history. `step.py` drives it chunk by chunk,
`live.py` from threads, `session.py` utterance by utterance.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mlsan_edge.config import EMOTIONS, MODALITIES, SAMPLE_RATE, TEXT_DIM, VISUAL_DIM
from mlsan_edge.confidence import VISUAL_OOD_MAX
from mlsan_edge.runtime.budgets import BudgetTracker
from mlsan_edge.runtime.config import RuntimeConfig
from mlsan_edge.runtime.events import Event
from mlsan_edge.runtime.face_features import VisualBaselines, attribute, track_descriptor, visual_features
from mlsan_edge.runtime.speculation import Speculation
from mlsan_edge.runtime.text_source import TextSource

log = logging.getLogger(__name__)

# face_frames() -> (the analysed frames inside the utterance, ms spent waiting for them)
FaceFrames = Callable[[], tuple[list, float]]


@dataclass
class Job:
    """An utterance waiting for the model."""

    audio: np.ndarray  # (n,) float32 at 16 kHz
    start_s: float  # stream time of the first sample, s
    end_s: float  # stream time one past the last sample, s
    t_end: float  # perf_counter when its end was known
    vad_ms: float = 0.0  # the slowest VAD chunk of the utterance
    embedding: np.ndarray | None = None  # (256,) from the streaming embedder, when it ran
    embed_ms: float = 0.0  # embedding work left after the end (set by whoever finishes it)
    text: str | None = None  # what was said, when the caller knows
    exclude_wait: bool = False  # recorded video: waiting for frames is not counted as processing
    notes: list[str] = field(default_factory=list)  # what was repaired in its audio (-> Event.degraded)
    speculation: Speculation | None = None  # its work started during the VAD hangover (speculation.py)


class Conversation:
    """Per-dialogue state: the context history and who spoke last."""

    def __init__(self, stages) -> None:
        self.history = stages.new_history()
        self.prev_speaker: int | None = None
        self.degraded: set[str] = set()  # persistent conditions, e.g. the camera failed
        self.lock = threading.Lock()

    def reset(self) -> None:
        self.history.reset()
        self.prev_speaker = None


def notify(callbacks: Iterable[Callable[[Event], None]], event: Event) -> None:
    """Call each callback with `event`; one that raises is logged and the others still run."""
    for cb in callbacks:
        try:
            cb(event)
        except Exception:  # a caller's bug must not stop the pipeline
            log.exception("event callback %r failed", cb)


class Pipeline:
    """Everything loaded once, and the per-utterance path through it.

    Args:
        stages: a `mlsan_edge.backends.stages.Stages` (or anything with its API, `new_history()` included).
        cache: a `SpeakerCache`.
        config: behaviour (VAD, budgets, queues, face).
        voice: a `VoiceEncoder` (default: the default bundle's, one thread).
        text_encoder: a `TextEncoder`, or a zero-argument callable returning one (called on the
            first text); None: the default bundle's, loaded on the first text.
        vad_model: the silero VAD ONNX file the VAD runs (None: the default one).
    """

    def __init__(self, stages, cache, config: RuntimeConfig = RuntimeConfig(), voice=None, text_encoder=None,
                 vad_model: str | Path | None = None) -> None:
        from mlsan_edge.features.audio import utterance_features
        from mlsan_edge.features.voice import VoiceEncoder

        self.stages, self.cache, self.config = stages, cache, config
        self.classes = tuple(getattr(stages, "classes", EMOTIONS))
        self.voice = voice if voice is not None else VoiceEncoder(num_threads=1)
        self._text_encoder = text_encoder
        self._text_lock = threading.Lock()
        self.vad_model = vad_model
        self._audio_features = utterance_features
        self.budgets = BudgetTracker(config.budgets, config.budget_policy, config.budget_patience)
        self._pool = ThreadPoolExecutor(max(1, config.feature_threads), thread_name_prefix="mlsan-feat")
        self._model_lock = threading.Lock()  # stages may hold non-reentrant sessions
        self._face = None
        self._face_lock = threading.Lock()
        self.baselines = VisualBaselines()
        gs = stages.global_stats
        self._visual_fill = np.asarray(gs.mean.get("visual", np.zeros(VISUAL_DIM)), np.float32)
        self.dims = {"audio": int(stages.audio_dim), "visual": VISUAL_DIM, "text": TEXT_DIM}
        self.callbacks: list[Callable[[Event], None]] = []

    # --- parts made on demand -------------------------------------------------------------------
    @property
    def text_encoder(self):
        """The `TextEncoder` (loaded on first use)."""
        with self._text_lock:
            enc = self._text_encoder
            if enc is None:
                from mlsan_edge.features.text import TextEncoder

                enc = self._text_encoder = TextEncoder(num_threads=1)
            elif not hasattr(enc, "embed"):  # a factory
                enc = self._text_encoder = enc()
            return enc

    def face_analyzer(self):
        """The shared `FaceAnalyzer` (None when config.face == "none")."""
        with self._face_lock:
            if self._face is None and self.config.face != "none":
                from mlsan_edge.runtime.face_tracking import FaceAnalyzer

                from mlsan_edge.runtime.face_identity import describer_or_none

                self._face = FaceAnalyzer(self.config.face, self.config.face_max_width,
                                          describer=describer_or_none(self.config.face_id),
                                          refresh_s=self.config.face_id_refresh_s)
            return self._face

    def segmenter(self):
        """A new VAD `Segmenter` (one per stream) running `vad_model`."""
        from mlsan_edge.features.vad import Segmenter

        return Segmenter(self.config.vad, self.vad_model)

    def conversation(self) -> Conversation:
        """A new conversation: an empty context history, no previous speaker."""
        conv = Conversation(self.stages)
        conv.reset()
        return conv

    # --- the per-utterance path -----------------------------------------------------------------
    def process(self, conv: Conversation, job: Job, face_frames: FaceFrames | None = None,
                text_source: TextSource | None = None, dropped: dict[str, int] | None = None) -> Event:
        """Run one utterance through the model; returns its event (profile updated afterwards).

        Args:
            conv: the conversation it belongs to (its history advances by one).
            job: the utterance.
            face_frames: returns the analysed frames inside the utterance and the ms spent
                waiting for them; None for no video.
            text_source: asked for the text when `job.text` is None.
            dropped: what the caller's queues dropped so far (copied into the event).
        """
        tm: dict[str, float] = {"vad": job.vad_ms}
        degraded: list[str] = sorted(conv.degraded) + list(job.notes)
        clock = time.perf_counter

        # audio features and text (transcriber + encoder) in parallel with the voice tail and the
        # speaker cache: none of them depends on who is speaking (onnxruntime and numpy release the GIL)
        def afeat():
            t = clock()
            return self._audio_features(job.audio), (clock() - t) * 1000

        spec = job.speculation  # started during the VAD hangover: what is left is waiting for it
        fut_a = spec.features if spec is not None else self._pool.submit(afeat)
        text_tm: dict[str, float] = {}
        text_notes: list[str] = []
        fut_t = self._pool.submit(self._text, job, text_source, text_tm, text_notes)
        t = clock()
        emb = job.embedding if job.embedding is not None else self.voice.embed(job.audio)
        tm["embedding"] = (clock() - t) * 1000 + job.embed_ms

        # the speaking face first: its identity descriptor (computed off this path, with the
        # frames) is the person's key whenever a face is in view (README "Speaker cache")
        frames, att = self._faces(job, face_frames, tm, degraded)
        face_key = track_descriptor(frames, att.track) if att is not None else None

        t = clock()
        voice_s = len(job.audio) / SAMPLE_RATE
        match = self.cache.identify(emb, face=face_key, voice_s=voice_s)
        sid = match.speaker_id
        if match.note:
            degraded.append(match.note)
        # FiLM/gate parameters come from the speaker's earlier utterances (`speaker_voice`), so
        # they were computed and cached after the speaker's previous utterance; only a new (or
        # enrolled, imported, merged) speaker needs them computed now. A speaker too short to tell
        # (sid None) gets the parameters of an empty profile: the training population's.
        blob = self.cache.get_params(sid) if sid is not None else None
        params_cached = blob is not None
        params = self.stages.params_from_bytes(blob) if params_cached else (
            self.compute_params(sid, emb) if sid is not None else self.unknown_params(emb))
        tm["cache"] = (clock() - t) * 1000

        t = clock()
        visual, face_info, face_used = self._visual(job, sid, frames, att, degraded)
        tm["face"] = tm.pop("face_frames", 0.0) + (clock() - t) * 1000
        text_vec, text = fut_t.result()
        tm.update(text_tm)
        degraded += text_notes
        t = clock()
        audio_vec, tm["audio_features"] = fut_a.result()
        if spec is not None:
            tm["audio_features"], tm["speculative"] = (clock() - t) * 1000, spec.work_ms()
        visual, ood = self._ood(audio_vec, visual, degraded)
        face_used = face_used and visual is not None

        with self._model_lock:
            t = clock()
            calibrated = self.stages.stage1(audio_vec, visual, params)
            tm["stage1"] = (clock() - t) * 1000
            t = clock()
            fused, trust = self.stages.stage2(text_vec, calibrated, params)
            tm["stage2"] = (clock() - t) * 1000
            t = clock()
            probs, latent = self.stages.stage3(fused, sid is not None and conv.prev_speaker == sid, conv.history)
            tm["stage3"] = (clock() - t) * 1000
        conv.prev_speaker = sid
        # waiting for a recorded video's decoder to catch up is not processing: leave it out
        tm["total_after_end"] = (clock() - job.t_end) * 1000 - (tm.get("face_wait", 0.0) if job.exclude_wait else 0.0)
        over = self.budgets.record(tm)

        probs = self._calibrate(np.asarray(probs, np.float64).reshape(-1), ood.get("audio"), visual is not None)
        present = [m for m, v in zip(MODALITIES, (text_vec, audio_vec, visual)) if v is not None]
        similarity = float(match.similarity) if np.isfinite(match.similarity) else None  # None: first voice
        event = Event(
            start_s=float(job.start_s), end_s=float(job.end_s), speaker_id=sid,
            speaker_name=None if sid is None else self.cache.name(sid),
            speaker_similarity=similarity, new_speaker=bool(match.is_new), identified_by=match.identified_by,
            voice_similarity=match.voice_similarity, face_distance=match.face_distance,
            emotion=self.classes[int(np.argmax(probs))], probs=dict(zip(self.classes, map(float, probs))),
            trust={k: float(v) for k, v in dict(trust).items()}, modalities=present,
            timings_ms={k: float(v) for k, v in tm.items()}, over_budget=over, face_used=face_used,
            face=face_info, degraded=degraded, dropped=dict(dropped or {}), text=text,
            confidence=float(probs.max()), ood=ood)
        event.params_cached = params_cached  # not serialised: for tests and benchmarks

        # after the prediction, as in training (mlsan_edge.data.replay.profile_inputs); the
        # parameters for the speaker's next utterance are computed now, off the latency path.
        # An unknown speaker has no profile to update; nor does an utterance too short to tell a
        # voice by (under the cache's min_voice_s: a word or two), even when a face named the
        # speaker (as with the voice alone, where such a voice names nobody): a profile made of
        # single words pulled GRID's words off neutral (README "Out of domain": 81.2 -> 89.6 %)
        t = clock()
        if sid is not None and voice_s >= self.cache.min_voice_s:
            self.cache.update_profile(sid, {"audio": audio_vec, "visual": visual, "text": text_vec},
                                      latent=np.asarray(latent))
            self.compute_params(sid)
        event.timings_ms["profile_update"] = (clock() - t) * 1000
        notify(self.callbacks, event)
        return event

    def _faces(self, job: Job, face_frames: FaceFrames | None, tm: dict, degraded: list):
        """The analysed frames inside the utterance and which face speaks (None, None without video)."""
        if face_frames is None:
            return None, None
        if self.budgets.should_skip("face"):
            degraded.append("face: skipped after repeated budget overruns")
            return None, None
        t = time.perf_counter()
        frames, wait_ms = face_frames()
        if wait_ms:
            tm["face_wait"] = wait_ms
        att = attribute(frames, job.audio, job.start_s)
        tm["face_frames"] = (time.perf_counter() - t) * 1000 - (wait_ms if job.exclude_wait else 0.0)
        return frames, att

    def _visual(self, job: Job, sid: int | None, frames, att, degraded: list):
        """The utterance's visual vector (or None), what the event reports of it, and whether it was used."""
        visual, face_info, face_used = None, {}, False
        if frames is not None:
            res = visual_features(frames, job.audio, job.start_s, sid, self.baselines, att)
            a = res.attribution
            face_info = {"faces": a.n_faces, "method": a.method, "track": a.track, "frames": res.frames,
                         "correlation": None if a.correlation is None else round(a.correlation, 3),
                         "analysed_frames": len(frames)}
            if res.vector is not None:
                visual = np.where(np.isfinite(res.vector), res.vector, self._visual_fill).astype(np.float32)
                face_used = True
            elif res.reason:
                degraded.append(f"visual: {res.reason}")
                face_info["reason"] = res.reason
        return visual, face_info, face_used

    def _ood(self, audio_vec, visual, degraded: list) -> tuple[np.ndarray | None, dict[str, float]]:
        """Distances of the features to the training data (`mlsan_edge.confidence`); a visual
        vector farther than VISUAL_OOD_MAX is dropped: a face the model cannot read must not
        out-vote the voice (issue #9: MediaPipe proxies on real faces were not what training saw)."""
        conf = getattr(self.stages, "confidence", None)
        if conf is None:
            return visual, {}
        gs, ood = self.stages.global_stats, {}
        for m, x in (("audio", audio_vec), ("visual", visual)):
            d = conf.ood(x, m, gs.mean[m], gs.var[m]) if m in gs.mean else None
            if d is not None:
                ood[m] = d
        if ood.get("visual", 0.0) > VISUAL_OOD_MAX:
            degraded.append(f"visual: unlike the training faces (ood {ood['visual']:.1f} > {VISUAL_OOD_MAX}), not used")
            visual = None
        return visual, ood

    def _calibrate(self, probs: np.ndarray, ood_audio: float | None, face_used: bool) -> np.ndarray:
        """The bundle's temperature (`mlsan_edge.confidence`): a live face is a landmark proxy."""
        conf = getattr(self.stages, "confidence", None)
        return probs if conf is None else np.asarray(
            conf.calibrate(probs, ood_audio, audio_only=not face_used, live_face=face_used), np.float64)

    def unknown_params(self, current_voice: np.ndarray | None) -> dict[str, np.ndarray]:
        """FiLM/gate parameters for a speaker the cache could not tell (a voice too short, no face):
        an empty profile, i.e. the training population's statistics (not cached)."""
        from mlsan_edge.profile import ModalityStats, SpeakerProfile, profile_row, speaker_voice

        profile = SpeakerProfile(dims=dict(self.dims), voice_dim=int(np.asarray(current_voice).size))
        for m, d in self.dims.items():
            profile.stats.setdefault(m, ModalityStats(d))
        with self._model_lock:
            return self.stages.speaker_params(profile_row(profile, self.stages.global_stats),
                                              speaker_voice(profile, current_voice))

    def _text(self, job: Job, text_source: TextSource | None, tm: dict, degraded: list):
        """The utterance's text embedding (or None) and its text."""
        t = time.perf_counter()
        text_vec, text = None, job.text
        # asked ahead (speculation.py): the future was submitted before this task, so it runs or ran
        ahead = job.speculation.text_for(text_source) if job.speculation is not None and text is None else None
        if text is None and text_source is not None:
            text = ahead[0] if ahead is not None else text_source(job.audio, job.start_s, job.end_s)
        if text and self.budgets.should_skip("text"):
            degraded.append("text: skipped after repeated budget overruns")
            text = None
        if text:
            text_vec = ahead[1] if ahead is not None and ahead[0] == text else self.text_encoder.embed(text)
        tm["text"] = (time.perf_counter() - t) * 1000
        return text_vec, text

    def speculate(self, utt, text_source: TextSource | None = None) -> Speculation:
        """Start an utterance's audio features (and text, when the source is `pure`) before the
        VAD closes it (`speculation.py`); pass the result as `Job.speculation`."""
        return Speculation.start(self._pool, self._audio_features, lambda: self.text_encoder, utt, text_source)

    def compute_params(self, sid: int, current_voice: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """FiLM/gate parameters for the speaker's next utterance from their profile as it stands;
        cached in the speaker cache under the profile version they were computed from."""
        from mlsan_edge.profile import ModalityStats, profile_row, speaker_voice

        version = self.cache.profile_version(sid)
        profile = self.cache.get_profile(sid)
        for m, d in self.dims.items():
            profile.stats.setdefault(m, ModalityStats(d))  # e.g. a speaker enrolled with voice only
        with self._model_lock:
            params = self.stages.speaker_params(profile_row(profile, self.stages.global_stats),
                                                speaker_voice(profile, current_voice))
        self.cache.put_params(sid, self.stages.params_to_bytes(params), version)
        return params

    def close(self) -> None:
        """Wait for the feature threads to finish and release them."""
        self._pool.shutdown(wait=True)
