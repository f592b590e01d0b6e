"""Turn corpora into `UtteranceTable`s with the device's own feature front-ends, cached on disk.

Audio is cut by `features.vad` and goes through `features.audio.utterance_features` and
`features.voice.VoiceEncoder`, text through `features.text.TextEncoder`: the ONNX models of the
bundle the caller names (`training_job.encoder_paths`), so training computes what a device
running that bundle computes. Visual action units are read as they are. Extraction of RAVDESS
takes ~1 min on 2 cores; the result is cached under `MLSAN_CACHE` (default ~/.cache/mlsan_edge)
keyed by the file list and the hashes of the encoders and VAD.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mlsan_edge.data.meld import load_meld
from mlsan_edge.data.ravdess import RavdessClip, load_ravdess
from mlsan_edge.data.table import UtteranceTable, cache_key, default_cache_dir, empty_table
from mlsan_edge.features.audio import AUDIO_DIM, load_audio, utterance_features

log = logging.getLogger(__name__)


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _audio_and_voice(path: str, voice_path: str | None, vad_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of the speech in a clip as the device cuts it (its VAD), not of the whole file:
    RAVDESS clips hold ~1 s of silence around the sentence, which the device never sees."""
    from mlsan_edge.features.vad import SileroVAD, speech_span

    if vad_path not in _VAD:
        _VAD[vad_path] = SileroVAD(vad_path)
    wav = speech_span(load_audio(path), vad=_VAD[vad_path])
    enc = _worker_voice(voice_path)
    return utterance_features(wav), enc.embed(wav)


_VOICE = {}  # one encoder per worker process
_VAD = {}  # and one VAD


def _worker_voice(path):
    from mlsan_edge.features.voice import VoiceEncoder

    if path not in _VOICE:
        _VOICE[path] = VoiceEncoder(path)
    return _VOICE[path]


def ravdess_table(root: str | Path, text_encoder: Path | None, voice_encoder: Path | None = None,
                  actors: list[int] | None = None, use_text: bool = True, workers: int = 2,
                  cache_dir: Path | None = None, progress: bool = True, vad: Path | None = None) -> UtteranceTable:
    """Features of every RAVDESS clip under `root` (streams grouped by actor, in file order).

    Args:
        text_encoder, voice_encoder, vad: a bundle's model files (`bundle.path(role)`); None
            means the default bundle's.
    """
    from mlsan_edge.features.assets import default_asset

    clips = load_ravdess(root, actors)
    vad = Path(vad) if vad is not None else default_asset("vad")
    key = cache_key("ravdess", [str(c.path) for c in clips], use_text,
                    text_encoder and file_sha(text_encoder), voice_encoder and file_sha(voice_encoder),
                    file_sha(vad))
    cache = (cache_dir or default_cache_dir()) / f"ravdess_{key}.npz"
    if cache.exists():
        return UtteranceTable.load(cache)
    t = _ravdess_features(clips, text_encoder, voice_encoder, use_text, workers, progress, vad)
    t.check()
    cache.parent.mkdir(parents=True, exist_ok=True)
    t.save(cache)
    return t


def _ravdess_features(clips: list[RavdessClip], text_encoder, voice_encoder, use_text, workers, progress, vad=None):
    n = len(clips)
    d = empty_table("ravdess", n, AUDIO_DIM)
    vpath = str(voice_encoder) if voice_encoder else None
    paths = [str(c.path) for c in clips]
    with ProcessPoolExecutor(workers) as ex:
        jobs = ex.map(_audio_and_voice, paths, [vpath] * n, [vad and str(vad)] * n, chunksize=8)
        results = list(_progress(jobs, progress, "RAVDESS audio features", total=n))
    for i, (a, v) in enumerate(results):
        d["audio"][i], d["voice"][i] = a, v
    d["mask_audio"][:] = d["mask_voice"][:] = True
    for i, c in enumerate(clips):
        if c.visual is not None:
            d["visual"][i], d["mask_visual"][i] = c.visual, True
    if use_text:
        from mlsan_edge.features.text import TextEncoder

        enc = TextEncoder(text_encoder) if text_encoder else TextEncoder()
        sentences = sorted({c.text for c in clips})
        emb = dict(zip(sentences, enc.embed_batch(sentences)))
        d["text"][:] = np.stack([emb[c.text] for c in clips])
        d["mask_text"][:] = True
    return UtteranceTable(**d, label=np.array([c.label for c in clips], np.int64),
                          speaker=np.array([c.speaker for c in clips]),
                          group=np.array([c.actor for c in clips], np.int64),
                          position=np.arange(n, dtype=np.int64))


def meld_table(root: str | Path, split: str, text_encoder: Path | None, cache_dir: Path | None = None,
               progress: bool = True) -> UtteranceTable:
    """Features of MELD `split`: text only; audio/visual/voice are marked missing."""
    root = Path(root)
    dialogues = load_meld(root, split)
    csv = root / f"{split}_sent_emo.csv"
    key = cache_key("meld", split, file_sha(csv), text_encoder and file_sha(text_encoder))
    cache = (cache_dir or default_cache_dir()) / f"meld_{split}_{key}.npz"
    if cache.exists():
        return UtteranceTable.load(cache)
    from mlsan_edge.features.text import TextEncoder

    utts = [u for d in dialogues for u in d]
    n = len(utts)
    d = empty_table("meld", n, AUDIO_DIM)
    enc = TextEncoder(text_encoder) if text_encoder else TextEncoder()
    nonempty = [i for i, u in enumerate(utts) if u.text.strip()]
    if len(nonempty) < n:
        log.warning("MELD %s: %d utterances have empty text: treated as text-missing", split, n - len(nonempty))
    texts = [utts[i].text for i in nonempty]
    emb = np.concatenate([enc.embed_batch(texts[i:i + 512]) for i in _progress(range(0, len(texts), 512), progress,
                                                                                  f"MELD {split} text")])
    d["text"][nonempty], d["mask_text"][nonempty] = emb, True
    t = UtteranceTable(**d, label=np.array([u.label for u in utts], np.int64),
                       speaker=np.array([f"meld:{u.speaker}" for u in utts]),
                       group=np.array([u.dialogue for u in utts], np.int64),
                       position=np.array([u.index for u in utts], np.int64))
    t.check()
    cache.parent.mkdir(parents=True, exist_ok=True)
    t.save(cache)
    return t


def _progress(it, enabled, desc, total=None):
    """`it` with a tqdm bar when enabled and tqdm is installed (the [train] extra; `mlsan-edge demo`
    runs without it), else `it` itself."""
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, total=total)
