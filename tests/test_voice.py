"""GE2E voice embedding: numpy front-end vs librosa, ONNX vs torch, speaker separation on RAVDESS."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_data, requires_torch
from mlsan_edge.features.assets import default_asset
from mlsan_edge.features.voice import (
    GE2E_HOP,
    GE2E_N_FFT,
    PARTIAL_FRAMES,
    VoiceEncoder,
    mel_filterbank,
    mel_spectrogram,
    partial_slices,
    utterance_partials,
)

SR = 16_000
HAVE_LIBROSA = importlib.util.find_spec("librosa") is not None


def voiced_signal(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A vowel-like test signal: harmonics of a wobbling f0 with formant-ish weights, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / SR
    formants = lambda f: np.exp(-((f - 700) / 300) ** 2) + 0.6 * np.exp(-((f - 1200) / 400) ** 2)  # noqa: E731
    wav = sum(formants(k * f0) * np.sin(k * phase) for k in range(1, 30))
    wav = wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2) + 0.01 * rng.standard_normal(len(t))
    return (0.2 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def encoder() -> VoiceEncoder:
    if not default_asset("voice_encoder").exists():
        pytest.skip(f"{default_asset('voice_encoder')} missing: run python -m mlsan_edge.export.voice_encoder")
    return VoiceEncoder()


# --- front-end --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [SR, 12_345, 401])
def test_mel_matches_librosa(n):
    if not HAVE_LIBROSA:
        pytest.skip("librosa not installed (test reference only)")
    import librosa

    wav = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    # resemblyzer's call; reflect padding was librosa's default when resemblyzer was trained
    ref = librosa.feature.melspectrogram(y=wav, sr=SR, n_fft=400, hop_length=160, n_mels=40, pad_mode="reflect").T
    ours = mel_spectrogram(wav)
    assert ours.shape == ref.shape == (1 + n // GE2E_HOP, 40)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * ref.max())
    np.testing.assert_allclose(mel_filterbank(), librosa.filters.mel(sr=SR, n_fft=400, n_mels=40), atol=1e-8)


@requires_torch
def test_stft_power_matches_torch():
    """Independent of librosa: the mel is (|torch.stft|^2) @ filters.T with the same framing."""
    import torch

    wav = voiced_signal(0.7)
    spec = torch.stft(
        torch.from_numpy(wav).double(), n_fft=GE2E_N_FFT, hop_length=GE2E_HOP,
        window=torch.hann_window(GE2E_N_FFT, periodic=True, dtype=torch.float64),
        center=True, pad_mode="reflect", return_complex=True,
    )  # fmt: skip
    ref = (spec.abs() ** 2).numpy().T @ mel_filterbank().T
    np.testing.assert_allclose(mel_spectrogram(wav), ref, rtol=1e-5, atol=1e-7 * ref.max())


def test_mel_filterbank_shape():
    fb = mel_filterbank()
    assert fb.shape == (40, GE2E_N_FFT // 2 + 1)
    assert (fb >= 0).all() and (fb.max(axis=1) > 0).all()  # every band sees some FFT bin
    assert np.all(np.diff(fb.argmax(axis=1)) >= 0)  # bands rise in frequency


@pytest.mark.parametrize(
    ("seconds", "starts"),
    [(0.02, [0]), (1.9, [0]), (2.0, [0, 77]), (3.0, [0, 77, 154])],
)
def test_partial_slices_follow_resemblyzer(seconds, starts):
    # 1.9 s: the second partial would be 70.6 % covered (< 75 %) and is dropped; 2.0 s: 76.9 %, kept
    slices = partial_slices(int(seconds * SR))
    assert [s.start for s in slices] == starts
    assert all(s.stop - s.start == PARTIAL_FRAMES for s in slices)


# --- network ------------------------------------------------------------------------------------
@requires_torch
def test_onnx_matches_torch_lstm(encoder):
    """The packaged ONNX graph vs the network rebuilt from resemblyzer's pretrained.pt in torch."""
    import torch

    spec = importlib.util.find_spec("resemblyzer")
    if spec is None:
        pytest.skip("resemblyzer wheel (the reference weights) not installed")
    ckpt = torch.load(Path(spec.submodule_search_locations[0]) / "pretrained.pt", map_location="cpu", weights_only=True)
    state = ckpt["model_state"]
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
    linear = torch.nn.Linear(256, 256)
    linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})

    mels = np.concatenate(
        [utterance_partials(voiced_signal(2.5)), np.random.default_rng(1).exponential(0.5, (3, 160, 40))]
    ).astype(np.float32)
    with torch.no_grad():
        _, (hidden, _) = lstm(torch.from_numpy(mels))
        ref = torch.relu(linear(hidden[-1]))
        ref = (ref / ref.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(encoder.embed_partials(mels), ref, atol=1e-4)


# --- end to end -------------------------------------------------------------------------------
def test_embed_generated_signal(encoder):
    wav = voiced_signal(2.5)
    emb = encoder.embed(wav)
    assert emb.shape == (256,) and emb.dtype == np.float32
    assert np.isclose(np.linalg.norm(emb), 1.0, atol=1e-5) and (emb >= 0).all()
    # audio quieter than -30 dBFS is normalised up to it, so its level does not matter
    quiet = encoder.embed(0.02 * wav)
    np.testing.assert_allclose(encoder.embed(0.05 * wav), quiet, atol=1e-5)
    # batched partials give the same embeddings as one utterance at a time
    others = [voiced_signal(0.3, f0=220, seed=1), voiced_signal(4.0, f0=110, seed=2)]
    batch = encoder.embed_batch([wav, *others])
    assert batch.shape == (3, 256)
    np.testing.assert_allclose(batch[0], emb, atol=1e-5)
    np.testing.assert_allclose(batch[1], encoder.embed(others[0]), atol=1e-5)


def test_very_short_audio_is_padded(encoder):
    for n in (1, 100, 4000):  # 1 sample, 6 ms, 0.25 s: all far below one 1.6 s partial
        emb = encoder.embed(voiced_signal(0.5)[:n])
        assert emb.shape == (256,) and np.isfinite(emb).all()


def test_bad_audio_raises_clear_errors(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.embed(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="silence"):
        encoder.embed(np.zeros(SR, np.float32))
    with pytest.raises(ValueError, match="mono"):
        encoder.embed(np.zeros((SR, 2), np.float32))
    with pytest.raises(ValueError, match="int16"):
        encoder.embed(np.ones(SR, np.int16))
    assert encoder.embed_batch([]).shape == (0, 256)


def test_session_is_lazy_and_missing_file_is_explained(tmp_path):
    enc = VoiceEncoder(tmp_path / "nope.onnx")  # constructing does not touch the file
    with pytest.raises(FileNotFoundError, match="export.voice_encoder"):
        enc.embed(voiced_signal(0.5))


def _ravdess_embeddings(encoder, root: Path, names: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    import soundfile as sf

    embs, who = [], []
    for actor, files in names.items():
        for name in files:
            path = root / actor / name
            if not path.exists():
                pytest.skip(f"{path} missing")
            wav, sr = sf.read(path, dtype="float32")
            assert sr == SR
            embs.append(encoder.embed(wav if wav.ndim == 1 else wav.mean(axis=1)))
            who.append(actor)
    return np.stack(embs), np.array(who)


@requires_data
def test_same_actor_clips_are_closer(shared_data, encoder):
    """Neutral clips (both RAVDESS statements): every same-actor pair beats every cross-actor pair.

    Measured: same-actor cosine 0.88-0.94, cross-actor 0.50-0.83 (actors 1-4, two men, two women).
    """
    root = shared_data / "ravdess" / "audio16k"
    # 03-01-01-01-SS-01-AA: audio-only, speech, neutral, normal intensity, statement SS, repetition 1
    names = {f"Actor_{a:02d}": [f"03-01-01-01-{s:02d}-01-{a:02d}.flac" for s in (1, 2)] for a in (1, 2, 3, 4)}
    embs, who = _ravdess_embeddings(encoder, root, names)
    sim = embs @ embs.T
    same = (who[:, None] == who[None, :]) & ~np.eye(len(who), dtype=bool)
    diff = who[:, None] != who[None, :]
    assert sim[same].min() > sim[diff].max()


@requires_data
def test_same_actor_closer_across_emotions(shared_data, encoder):
    """With emotions mixed (neutral, sad, fearful) the speaker still dominates on average, though
    strong emotion moves a clip a long way (GE2E was trained on read, mostly neutral speech)."""
    root = shared_data / "ravdess" / "audio16k"
    names = {
        f"Actor_{a:02d}": [f"03-01-{e}-01-01-01-{a:02d}.flac" for e in ("01", "04", "06")] for a in (1, 2, 3)
    }
    embs, who = _ravdess_embeddings(encoder, root, names)
    sim = embs @ embs.T
    same = (who[:, None] == who[None, :]) & ~np.eye(len(who), dtype=bool)
    diff = who[:, None] != who[None, :]
    assert sim[same].mean() > sim[diff].mean() + 0.05
