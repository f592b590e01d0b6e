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
from mlsan_edge.data.ravdess import load_ravdess
from mlsan_edge.data.table import UtteranceTable, cache_key, default_cache_dir, empty_table
from mlsan_edge.features.audio import AUDIO_DIM, load_audio, utterance_features

log = logging.getLogger(__name__)


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _audio_and_voice(path: str, voice_path: str | None, vad_path: str | None = None,
                     aug: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of the speech in a clip as the device cuts it (its VAD), not of the whole file:
    RAVDESS clips hold ~1 s of silence around the sentence, which the device never sees.

    `aug` = (Channel, per-clip seed, babble file paths): the cut speech is first passed through
    that channel (`data.augment`), so the features are those of another microphone and room."""
    from mlsan_edge.features.vad import SileroVAD, speech_span

    if vad_path not in _VAD:
        _VAD[vad_path] = SileroVAD(vad_path)
    wav = speech_span(load_audio(path), vad=_VAD[vad_path])
    if aug is not None:
        from mlsan_edge.data.augment import augment

        channel, seed, babble_paths = aug
        babble = [_babble(p) for p in babble_paths if p != path]
        wav = augment(wav, channel, np.random.default_rng(seed), babble)
    enc = _worker_voice(voice_path)
    try:
        return utterance_features(wav), enc.embed(wav)
    except ValueError as e:  # a silent or broken recording: left out of the table (logged by the caller)
        return None, str(e)


_VOICE = {}  # one encoder per worker process
_VAD = {}  # and one VAD
_BABBLE = {}  # and the babble sources it has read


def _babble(path: str) -> np.ndarray:
    if path not in _BABBLE:
        _BABBLE[path] = load_audio(path)
    return _BABBLE[path]


def _worker_voice(path):
    from mlsan_edge.features.voice import VoiceEncoder

    if path not in _VOICE:
        _VOICE[path] = VoiceEncoder(path)
    return _VOICE[path]


AUGMENT_VERSION = 1  # bump when data.augment changes what it produces (cache keys)
GROUP_STRIDE = 1000  # augmented copy k of group g is group g + k * GROUP_STRIDE


def ravdess_table(root: str | Path, text_encoder: Path | None, voice_encoder: Path | None = None,
                  actors: list[int] | None = None, use_text: bool = True, workers: int = 2,
                  cache_dir: Path | None = None, progress: bool = True, vad: Path | None = None,
                  augment_copies: int = 0) -> UtteranceTable:
    """Features of every RAVDESS clip under `root` (streams grouped by actor, in file order).

    Args:
        text_encoder, voice_encoder, vad: a bundle's model files (`bundle.path(role)`); None
            means the default bundle's.
        augment_copies: also this many copies of every actor through a random channel each
            (`data.augment`); copy k of actor a is speaker `ravdess_actor_aa~chk`, group
            a + k * GROUP_STRIDE, without action units (a different camera is not simulated).
    """
    clips = load_ravdess(root, actors)
    spec = [{"path": c.path, "speaker": c.speaker, "label": c.label, "group": c.actor, "visual": c.visual,
             "text": c.text} for c in clips]
    return _cached_table("ravdess", spec, text_encoder, voice_encoder, vad, use_text, workers, progress,
                         cache_dir, augment_copies)


def emospeech_table(root: str | Path, text_encoder: Path | None, voice_encoder: Path | None = None,
                    split: str | None = "train", workers: int = 2, cache_dir: Path | None = None,
                    progress: bool = True, vad: Path | None = None, augment_copies: int = 0) -> UtteranceTable:
    """Features of the EmoSpeech clips of `split` ("train", "calibration", "eval" or None for all):
    one stream per user, the spoken command as text (CC BY-NC-SA 4.0)."""
    from mlsan_edge.data.emospeech import load_emospeech

    clips = load_emospeech(root, split)
    users = {s: i for i, s in enumerate(sorted({c.speaker for c in clips}))}
    spec = [{"path": c.path, "speaker": c.speaker_key, "label": c.label, "group": users[c.speaker], "visual": None,
             "text": c.keyword} for c in clips]
    return _cached_table(f"emospeech_{split or 'all'}", spec, text_encoder, voice_encoder, vad, True, workers,
                         progress, cache_dir, augment_copies)


def _cached_table(corpus, spec, text_encoder, voice_encoder, vad, use_text, workers, progress, cache_dir,
                  augment_copies) -> UtteranceTable:
    from mlsan_edge.features.assets import default_asset

    vad = Path(vad) if vad is not None else default_asset("vad")
    key = cache_key(corpus, [str(c["path"]) for c in spec], use_text,
                    text_encoder and file_sha(text_encoder), voice_encoder and file_sha(voice_encoder),
                    file_sha(vad), *((augment_copies, AUGMENT_VERSION) if augment_copies else ()))
    cache = (cache_dir or default_cache_dir()) / f"{corpus}_{key}.npz"
    if cache.exists():
        return UtteranceTable.load(cache)
    t = _acted_features(corpus, spec, text_encoder, voice_encoder, use_text, workers, progress, vad, augment_copies)
    t.check()
    cache.parent.mkdir(parents=True, exist_ok=True)
    t.save(cache)
    return t


def _copies(spec: list[dict], k: int) -> tuple[list[dict], list]:
    """Copy k >= 1 of `spec` through one random channel per speaker -> (rows, aug arguments)."""
    from mlsan_edge.data.augment import random_channel, seed_of

    speakers = sorted({c["speaker"] for c in spec})
    channels = {s: random_channel(np.random.default_rng(seed_of(s, k))) for s in speakers}
    rows, augs = [], []
    for i, c in enumerate(spec):
        others = [x for x in spec[:: max(1, len(spec) // 64)] if x["speaker"] != c["speaker"]]
        rng = np.random.default_rng(seed_of(c["path"], k))
        babble = [str(others[j]["path"]) for j in rng.choice(len(others), size=min(6, len(others)), replace=False)]
        rows.append({**c, "speaker": f"{c['speaker']}~ch{k}", "group": c["group"] + k * GROUP_STRIDE, "visual": None})
        augs.append((channels[c["speaker"]], seed_of(c["path"], k, "clip"), babble))
    return rows, augs


def _acted_features(corpus, spec, text_encoder, voice_encoder, use_text, workers, progress, vad=None,
                    augment_copies: int = 0) -> UtteranceTable:
    """One row per clip of `spec` (path, speaker, label, group, visual, text), then the copies."""
    rows, augs = list(spec), [None] * len(spec)
    for k in range(1, augment_copies + 1):
        r, a = _copies(spec, k)
        rows += r
        augs += a
    n = len(rows)
    d = empty_table(corpus, n, AUDIO_DIM)
    vpath = str(voice_encoder) if voice_encoder else None
    paths = [str(c["path"]) for c in rows]
    with ProcessPoolExecutor(workers) as ex:
        jobs = ex.map(_audio_and_voice, paths, [vpath] * n, [vad and str(vad)] * n, augs, chunksize=8)
        results = list(_progress(jobs, progress, f"{corpus} audio features", total=n))
    bad = [i for i, (a, _) in enumerate(results) if a is None]
    for i in bad:
        log.warning("%s: %s left out (%s)", corpus, paths[i], results[i][1])
    for i, (a, v) in enumerate(results):
        if a is not None:
            d["audio"][i], d["voice"][i] = a, v
    d["mask_audio"][:] = d["mask_voice"][:] = True
    for i, c in enumerate(rows):
        if c["visual"] is not None:
            d["visual"][i], d["mask_visual"][i] = c["visual"], True
    if use_text:
        from mlsan_edge.features.text import TextEncoder

        enc = TextEncoder(text_encoder) if text_encoder else TextEncoder()
        sentences = sorted({c["text"] for c in rows})
        emb = dict(zip(sentences, enc.embed_batch(sentences)))
        d["text"][:] = np.stack([emb[c["text"]] for c in rows])
        d["mask_text"][:] = True
    position = np.zeros(n, np.int64)
    seen: dict[int, int] = {}
    for i, c in enumerate(rows):  # file order within each stream
        position[i] = seen.get(c["group"], 0)
        seen[c["group"]] = position[i] + 1
    t = UtteranceTable(**d, label=np.array([c["label"] for c in rows], np.int64),
                       speaker=np.array([c["speaker"] for c in rows]),
                       group=np.array([c["group"] for c in rows], np.int64), position=position)
    return t.subset(np.setdiff1d(np.arange(n), bad)) if bad else t


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
