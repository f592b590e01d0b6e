"""Export resemblyzer's GE2E speaker encoder to ONNX (torch; run once, not on the device).

    python -m mlsan_edge.export.voice_encoder --out build/encoders/voice_encoder.onnx

The network is rebuilt here rather than imported (`import resemblyzer` fails with current
setuptools because of webrtcvad), and the weights come straight from the wheel's `pretrained.pt`
(Apache-2.0). The ONNX graph takes `mels` (B, 160, 40) float32 — one 1.6 s partial per row, as
`mlsan_edge.features.voice.utterance_partials` makes them — and returns `embeddings` (B, 256),
ReLU'd and L2-normalised inside the graph. The export is checked against torch on random and on
real mel spectrograms before it is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlsan_edge.features.voice import GE2E_N_MELS, PARTIAL_FRAMES, utterance_partials

log = logging.getLogger(__name__)

HIDDEN = 256  # LSTM width (resemblyzer model_hidden_size)
EMBED_DIM = 256  # resemblyzer model_embedding_size
N_LAYERS = 3
OPSET = 17
PARITY_ATOL = 1e-4


class GE2EEncoder(nn.Module):
    """resemblyzer.VoiceEncoder's network: LSTM(40, 256, 3) -> Linear(256, 256) -> ReLU -> L2 norm."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(GE2E_N_MELS, HIDDEN, N_LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBED_DIM)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # mels (B, T, 40) -> hidden (layers, B, 256)
        embeds = torch.relu(self.linear(hidden[-1]))  # (B, 256): the last layer's final state
        # eps only guards an all-zero ReLU output, which resemblyzer would turn into NaN
        return embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pretrained_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("resemblyzer is not installed: pip install --no-deps resemblyzer (only its weights are used)")
    return Path(spec.submodule_search_locations[0]) / "pretrained.pt"


def load_pretrained(path: str | Path | None = None) -> GE2EEncoder:
    """The GE2E encoder with resemblyzer's weights, in eval mode on the CPU."""
    ckpt = torch.load(path or pretrained_path(), map_location="cpu", weights_only=True)
    # the checkpoint also holds the GE2E loss's similarity_weight/bias, which inference ignores
    state = {k: v for k, v in ckpt["model_state"].items() if k.startswith(("lstm.", "linear."))}
    model = GE2EEncoder()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _real_mels(max_clips: int = 4) -> np.ndarray | None:
    """Partials of a few RAVDESS clips when ../shared/data is present, else None."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess" / "audio16k"
    files = sorted(root.glob("Actor_0[1-4]/*.flac"))[:: 30][:max_clips]
    if not files:
        return None
    import soundfile as sf

    parts = []
    for f in files:
        wav, sr = sf.read(f, dtype="float32")
        if sr != 16_000:
            raise ValueError(f"{f} is {sr} Hz, expected 16000")
        parts.append(utterance_partials(wav if wav.ndim == 1 else wav.mean(axis=1)))
    return np.concatenate(parts)


def check_parity(model: GE2EEncoder, onnx_path: Path, mels: np.ndarray) -> float:
    """Max |ORT - torch| over the (B, 160, 40) batch `mels`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["embeddings"], {"mels": mels.astype(np.float32)})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(mels.astype(np.float32))).numpy()
    return float(np.abs(got - want).max())


def export(out: Path, weights: Path | None = None) -> Path:
    """Export, simplify, check and write the encoder to `out`. Returns `out`."""
    import onnx
    import onnxslim

    model = load_pretrained(weights)
    dummy = torch.rand(2, PARTIAL_FRAMES, GE2E_N_MELS)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            model, (dummy,), str(raw), input_names=["mels"], output_names=["embeddings"],
            dynamic_axes={"mels": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip
        slim = onnxslim.slim(onnx.load(str(raw)))
    slim.doc_string = "GE2E speaker encoder (resemblyzer pretrained.pt, Apache-2.0): mels (B,160,40) -> (B,256)"
    onnx.checker.check_model(slim)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(slim, str(out))

    rng = np.random.default_rng(0)
    # random mels at the scale of real ones (power spectra of -30 dBFS speech: mostly 0..few)
    checks = {"random": rng.exponential(0.5, (5, PARTIAL_FRAMES, GE2E_N_MELS)).astype(np.float32)}
    real = _real_mels()
    if real is not None:
        checks["ravdess"] = real
    for name, mels in checks.items():
        diff = check_parity(model, out, mels)
        log.info("parity %s (%d partials): max |ORT - torch| = %.2e", name, len(mels), diff)
        if diff > PARITY_ATOL:
            out.unlink()
            raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} > {PARITY_ATOL} on {name} input")
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build") / "encoders" / "voice_encoder.onnx",
                        help="where to write the ONNX file (`mlsan-edge export` packs it into a bundle)")
    parser.add_argument("--weights", type=Path, default=None, help="resemblyzer checkpoint (default: the wheel's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export(args.out, args.weights)


if __name__ == "__main__":
    main()
