"""GE2E voice embedding (resemblyzer's speaker encoder) with numpy + onnxruntime only.

The network is the 3-layer LSTM of Wan et al., "Generalized End-to-End Loss for Speaker
Verification" (ICASSP 2018), as trained and shipped by resemblyzer (Apache-2.0). Its weights
are a bundle's `voice_encoder` (`encoders/voice_encoder.onnx`), written by `python -m mlsan_edge.export.voice_encoder`.

This module reimplements resemblyzer's front-end so the device needs neither torch nor librosa:

1. `normalize_volume`: gain up to -30 dBFS RMS (never down), as `resemblyzer.audio.normalize_volume`.
2. resemblyzer also trims long silences with webrtcvad; we skip that on purpose: the runtime's
   VAD already cuts utterances, and the training features go through the same function, so
   training and device agree (ARCHITECTURE.md invariant 4).
3. `mel_spectrogram`: `librosa.feature.melspectrogram(sr=16000, n_fft=400, hop_length=160,
   n_mels=40)` — power spectrum of a centred, reflect-padded STFT with a periodic Hann window,
   Slaney-normalised Slaney-scale mel filters, *not* log. Reflect padding is what librosa did
   (< 0.10) when resemblyzer was trained; librosa >= 0.10 pads with zeros by default, which only
   changes the first and last two frames.
4. `partial_slices` + mean of partial embeddings: resemblyzer's `embed_utterance` — 160-frame
   (1.6 s) partials every 77 frames (1.3 partials per second), the last partial kept when it is at
   least 75 % covered by audio, the utterance embedding the L2-normalised mean of the partials.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mlsan_edge.config import SAMPLE_RATE, VOICE_DIM
from mlsan_edge.features.assets import default_asset
from mlsan_edge.features.mel import mel_filterbank, power_spectrogram

log = logging.getLogger(__name__)

# --- resemblyzer/hparams.py, with the derivations written out -----------------------------------
GE2E_WINDOW_MS = 25
GE2E_HOP_MS = 10
GE2E_N_FFT = SAMPLE_RATE * GE2E_WINDOW_MS // 1000  # 400 samples; also the window length
GE2E_HOP = SAMPLE_RATE * GE2E_HOP_MS // 1000  # 160 samples per mel frame
GE2E_N_MELS = 40
PARTIAL_FRAMES = 160  # frames per partial utterance = 1.6 s
PARTIAL_RATE = 1.3  # partials per second
PARTIAL_STEP = int(round(SAMPLE_RATE / PARTIAL_RATE / GE2E_HOP))  # 77 frames between partials
MIN_COVERAGE = 0.75  # keep the last partial when >= 75 % of it is real audio
TARGET_DBFS = -30.0  # volume normalisation target (increase only)
INT16_MAX = 2**15 - 1
MAX_PARTIALS_PER_RUN = 64  # bounds the memory of one ONNX call in embed_batch


# --- front-end --------------------------------------------------------------------------------
def normalize_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise the RMS level of `wav` to `target_dbfs` dB full scale; louder audio is left alone.

    Args:
        wav: (N,) float samples in [-1, 1].
        target_dbfs: target RMS level in dBFS.

    Returns:
        (N,) float32.

    Raises:
        ValueError: when `wav` is digitally silent (all zeros): no gain can make it speech.
    """
    wav = np.asarray(wav, np.float32)
    rms = float(np.sqrt(np.mean((wav.astype(np.float64) * INT16_MAX) ** 2)))
    if rms == 0.0:
        raise ValueError("audio is all zeros (digital silence); pass a speech segment, or treat the voice as missing")
    change_db = target_dbfs - 20.0 * np.log10(rms / INT16_MAX)
    if change_db < 0:
        return wav
    return (wav * 10.0 ** (change_db / 20.0)).astype(np.float32)


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """GE2E mel power spectrogram (resemblyzer's `wav_to_mel_spectrogram`, not log-scaled).

    Args:
        wav: (N,) float samples at 16 kHz, N >= 1.

    Returns:
        (1 + N // 160, 40) float32: one frame per 10 ms hop, centred on sample `t * 160`.
    """
    power = power_spectrogram(wav, GE2E_N_FFT, GE2E_HOP)  # (T, 201)
    return (power @ mel_filterbank(SAMPLE_RATE, GE2E_N_FFT, GE2E_N_MELS).T).astype(np.float32)  # (T, 40)


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame ranges of the 1.6 s partials resemblyzer's `compute_partial_slices` returns.

    Always at least one slice; slices may run past the audio, which is then zero-padded.

    Args:
        n_samples: utterance length in samples (16 kHz).

    Returns:
        `slice(start, start + 160)` over mel frames, starts every 77 frames.
    """
    n_frames = int(np.ceil((n_samples + 1) / GE2E_HOP))
    steps = max(1, n_frames - PARTIAL_FRAMES + PARTIAL_STEP + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, PARTIAL_STEP)]
    last = slices[-1]
    coverage = (n_samples - last.start * GE2E_HOP) / (PARTIAL_FRAMES * GE2E_HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


def _check_wav(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio of shape (N,), got shape {wav.shape}; average or pick a channel first")
    if wav.size == 0:
        raise ValueError("audio is empty (0 samples); pass at least one sample of 16 kHz speech")
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {wav.dtype}; divide int16 PCM by 32768")
    if not np.all(np.isfinite(wav)):
        raise ValueError("audio contains NaN or inf samples")
    return wav.astype(np.float32, copy=False)


def utterance_partials(wav: np.ndarray) -> np.ndarray:
    """Front-end of `embed`: normalised, padded audio cut into partial mel spectrograms.

    Args:
        wav: (N,) float32 mono speech at 16 kHz.

    Returns:
        (P, 160, 40) float32, P >= 1.
    """
    wav = normalize_volume(_check_wav(wav))
    slices = partial_slices(len(wav))
    needed = slices[-1].stop * GE2E_HOP
    if needed >= len(wav):  # resemblyzer pads with zeros up to the end of the last partial
        wav = np.pad(wav, (0, needed - len(wav)))
    mel = mel_spectrogram(wav)
    return np.stack([mel[s] for s in slices])


# --- encoder ----------------------------------------------------------------------------------
class VoiceEncoder:
    """GE2E speaker embedding of one utterance: (N,) 16 kHz audio -> (256,) unit vector.

    The ONNX session is created on first use, so constructing one is cheap.

    Args:
        onnx_path: exported encoder (input `mels` (B, 160, 40), output `embeddings` (B, 256)),
            normally `bundle.path("voice_encoder")`; None: the default bundle's.
        providers: onnxruntime execution providers; default CPU.
        num_threads: intra-op threads of the session (the LSTM gains little beyond 2).
    """

    def __init__(
        self, onnx_path: str | Path | None = None, providers: Sequence[str] | None = None, num_threads: int = 2
    ):
        self.onnx_path = Path(onnx_path) if onnx_path is not None else default_asset("voice_encoder")
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.num_threads = max(1, min(num_threads, os.cpu_count() or 1))
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            if not self.onnx_path.exists():
                raise FileNotFoundError(
                    f"voice encoder not found at {self.onnx_path}; build it with `python -m mlsan_edge.export.voice_encoder`"
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.onnx_path), opts, providers=self.providers)
            log.info("loaded voice encoder %s (%s)", self.onnx_path, self._session.get_providers()[0])
        return self._session

    @staticmethod
    def mel(wav: np.ndarray) -> np.ndarray:
        """(N,) float 16 kHz audio -> (1 + N // 160, 40) float32 mel power spectrogram."""
        return mel_spectrogram(_check_wav(wav))

    def embed_partials(self, mels: np.ndarray) -> np.ndarray:
        """(B, 160, 40) float32 partial mels -> (B, 256) float32 unit-norm partial embeddings."""
        mels = np.ascontiguousarray(mels, np.float32)
        out = [
            self.session.run(["embeddings"], {"mels": mels[i : i + MAX_PARTIALS_PER_RUN]})[0]
            for i in range(0, len(mels), MAX_PARTIALS_PER_RUN)
        ]
        return np.concatenate(out)

    def embed(self, wav: np.ndarray) -> np.ndarray:
        """Embedding of one utterance.

        Args:
            wav: (N,) float32 mono speech at 16 kHz, N >= 1 (shorter than 1.6 s is zero-padded).

        Returns:
            (256,) float32, L2 norm 1, entries >= 0.

        Raises:
            ValueError: empty, silent, multi-channel, integer or non-finite audio.
        """
        return self.embed_batch([wav])[0]

    def embed_batch(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of several utterances, their partials run through the network together.

        Args:
            wavs: list of (N_i,) float32 mono 16 kHz utterances.

        Returns:
            (len(wavs), 256) float32, each row unit norm.
        """
        if len(wavs) == 0:
            return np.zeros((0, VOICE_DIM), np.float32)
        parts = [utterance_partials(w) for w in wavs]
        partial_embeds = self.embed_partials(np.concatenate(parts))  # (sum P_i, 256)
        bounds = np.cumsum([0] + [len(p) for p in parts])
        means = np.stack([partial_embeds[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
