"""`load_runtime`, `mlsan-edge run` and `mlsan-edge eval` take every model from the bundle they are
given (encoders, VAD, stage graphs), and refuse a bundle whose feature contract differs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.feature_contract import FeatureContractError
from mlsan_edge.bundle import DEFAULT_BUNDLE_DIR, MANIFEST_NAME, BundleError, load_bundle, sha256_file
from mlsan_edge.features.audio import load_audio
from mlsan_edge.runtime import load as L

SAMPLE = DEFAULT_BUNDLE_DIR.parents[1] / "sample" / "ravdess_mini" / "audio16k" / "Actor_01"
CLIP = SAMPLE / "03-01-05-02-01-01-01.flac"
VOICE_FILE = "encoders/voice_encoder.onnx"


def copy_default_bundle(dest: Path, replace: dict[str, bytes] | None = None, contract: dict | None = None) -> Path:
    """The default bundle at `dest`: unchanged files symlinked (it is ~45 MB), files in `replace`
    written anew and re-hashed, `contract` merged into the manifest's feature_contract."""
    replace = replace or {}
    manifest = json.loads((DEFAULT_BUNDLE_DIR / MANIFEST_NAME).read_text())
    for rel in manifest["files"]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel in replace:
            target.write_bytes(replace[rel])
            manifest["files"][rel] = {"sha256": sha256_file(target), "size": target.stat().st_size}
        else:
            os.symlink(DEFAULT_BUNDLE_DIR / rel, target)
    manifest["feature_contract"].update(contract or {})
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dest


def other_voice_encoder() -> bytes:
    """A valid voice encoder that is not the default's: its first LSTM's input weights halved."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(DEFAULT_BUNDLE_DIR / VOICE_FILE))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "onnx::LSTM_274":  # (1, 1024, 40): the first layer's input weights
            w = numpy_helper.to_array(init) * 0.5
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
            break
    else:
        raise AssertionError("the default voice encoder's first LSTM weights were not found")
    return model.SerializeToString()


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory) -> Path:
    return copy_default_bundle(tmp_path_factory.mktemp("b") / "other", replace={VOICE_FILE: other_voice_encoder()})


def inside(path, root: Path) -> bool:
    """`path` names a file in `root` (links not followed: B's unchanged files link to the default's)."""
    return any(Path(os.path.abspath(path)).is_relative_to(r) for r in (Path(os.path.abspath(root)), root.resolve()))


def test_the_copy_is_a_valid_bundle_with_another_voice_encoder(other_bundle):
    b = load_bundle(other_bundle)  # hashes verified: the new file was re-hashed
    assert b.file_sha256(VOICE_FILE) != load_bundle("default", verify=False).file_sha256(VOICE_FILE)


def test_load_runtime_passes_every_front_end_of_its_bundle(other_bundle, monkeypatch):
    """What load_runtime hands the Runtime: B's voice encoder, text encoder + tokenizer and VAD."""
    seen = {}

    class Recorder:
        def __init__(self, stages, cache, config, voice=None, text_encoder=None, vad_model=None):
            seen.update(stages=stages, voice=voice, text_encoder=text_encoder, vad_model=vad_model)
            cache.close()

    monkeypatch.setattr(L, "Runtime", Recorder)
    L.load_runtime(other_bundle, backend="onnxruntime")
    root = load_bundle(other_bundle, verify=False).root
    assert seen["stages"].bundle.root == root
    assert seen["voice"].onnx_path == root / VOICE_FILE
    text = seen["text_encoder"]()  # built lazily, on the first text
    assert (text.onnx_path, text.tokenizer_path) == (root / "encoders/text_encoder.int8.onnx",
                                                     root / "encoders/tokenizer.json")
    assert Path(seen["vad_model"]) == root / "vad/silero_vad.onnx"


def test_runtime_embeds_voices_with_its_bundles_encoder(other_bundle):
    """Acceptance (issue #8): B's voice encoder differs from the default's, and the Runtime of B
    embeds with B's: another embedding of the same audio, from a file inside B."""
    wav = load_audio(CLIP)
    with L.load_runtime("default", backend="onnxruntime") as rt_default, \
            L.load_runtime(other_bundle, backend="onnxruntime") as rt_other:
        assert inside(rt_other.voice.onnx_path, other_bundle)
        assert not inside(rt_other.voice.onnx_path, DEFAULT_BUNDLE_DIR)
        e_default, e_other = rt_default.voice.embed(wav), rt_other.voice.embed(wav)
    assert e_default.shape == e_other.shape == (256,)
    assert float(e_default @ e_other) < 0.999  # unit vectors: a different encoder, a different voice
    assert np.abs(e_default - e_other).max() > 1e-3


def test_mlsan_edge_run_uses_the_bundles_voice_encoder_and_vad(other_bundle, tmp_path, monkeypatch):
    """`mlsan-edge run --bundle B` end to end: every voice embedding and the VAD come from B's files."""
    from mlsan_edge import cli
    from mlsan_edge.features import vad as vad_mod
    from mlsan_edge.features import voice as voice_mod

    used = {"voice": set(), "vad": set()}
    embed_partials, vad_init = voice_mod.VoiceEncoder.embed_partials, vad_mod.SileroVAD.__init__

    def spy_embed(self, mels):
        used["voice"].add(Path(self.onnx_path))
        return embed_partials(self, mels)

    def spy_vad(self, model_path=None, *a, **k):
        vad_init(self, model_path, *a, **k)
        used["vad"].add(Path(self.model_path))

    monkeypatch.setattr(voice_mod.VoiceEncoder, "embed_partials", spy_embed)
    monkeypatch.setattr(vad_mod.SileroVAD, "__init__", spy_vad)
    events = tmp_path / "events.jsonl"
    rc = cli.main(["run", "--audio", f"file://{CLIP}", "--bundle", str(other_bundle), "--events", str(events),
                   "--backend", "onnxruntime", "--no-face"])
    assert used["voice"] and all(inside(p, other_bundle) for p in used["voice"]), used
    assert used["vad"] and all(inside(p, other_bundle) for p in used["vad"]), used
    assert rc == 0 and events.read_text().strip(), "no event: the clip's speech was not found"


@pytest.mark.parametrize("field,value", [("hop_length", 320), ("audio_dim", 208), ("feature_version", 1),
                                         ("sample_rate", 8000), ("profile_version", 0)])
def test_run_refuses_a_bundle_whose_contract_differs(tmp_path, field, value):
    b = copy_default_bundle(tmp_path / "b", contract={field: value})
    with pytest.raises(FeatureContractError, match=rf"feature_contract\.{field} is {value} but this mlsan_edge computes \d+; "
                                          r"re-export the bundle"):
        L.load_runtime(b, backend="onnxruntime")


def test_eval_refuses_a_bundle_whose_contract_differs(tmp_path):
    from mlsan_edge.evaluate import evaluate

    b = copy_default_bundle(tmp_path / "b", contract={"n_mels": 40})
    for backend in ("onnxruntime", "auto"):
        with pytest.raises(FeatureContractError, match=r"feature_contract\.n_mels is 40 but this mlsan_edge computes 64"):
            evaluate(b, "ravdess", SAMPLE.parent, progress=False, backend=backend)


def test_speakers_enroll_refuses_it_too(tmp_path):
    from mlsan_edge.cli.device import enrollment_embeddings

    b = copy_default_bundle(tmp_path / "b", contract={"voice_dim": 192})
    with pytest.raises(FeatureContractError, match=r"feature_contract\.voice_dim is 192"):
        enrollment_embeddings(CLIP, bundle=b)


def test_enrollment_uses_the_bundles_voice_encoder(other_bundle):
    from mlsan_edge.cli.device import enrollment_embeddings

    mine, default = enrollment_embeddings(CLIP, bundle=other_bundle), enrollment_embeddings(CLIP)
    assert mine.shape == default.shape and np.abs(mine - default).max() > 1e-3


def test_eval_reads_the_bundles_encoders_and_vad(other_bundle, monkeypatch):
    """`mlsan-edge eval --bundle B` computes its features with B's encoders and VAD."""
    import mlsan_edge.data.extract as X
    from mlsan_edge.evaluate import evaluate

    seen = {}

    def fake_table(root, text_encoder, voice_encoder=None, actors=None, progress=True, vad=None, **k):
        seen.update(text=text_encoder, voice=voice_encoder, vad=vad)
        raise RuntimeError("stop: features are what this test checks")

    monkeypatch.setattr(X, "ravdess_table", fake_table)
    with pytest.raises(RuntimeError, match="stop"):
        evaluate(other_bundle, "ravdess", SAMPLE.parent, progress=False, backend="onnxruntime")
    assert seen and all(inside(p, other_bundle) for p in seen.values()), seen
    assert Path(seen["voice"]).name == "voice_encoder.onnx" and Path(seen["vad"]).name == "silero_vad.onnx"


def test_a_persistent_cache_drops_parameters_cached_by_another_bundle(other_bundle, tmp_path):
    """A speaker's FiLM/gate parameters are cached after each utterance; after a bundle update
    they would be the old model's, so the cache drops them (`params_owner`) and they are
    recomputed from the profile, which both models share."""
    db = tmp_path / "speakers.db"
    voice = np.abs(np.random.default_rng(0).standard_normal(256)).astype(np.float32)
    voice /= np.linalg.norm(voice)
    with L.load_runtime("default", backend="onnxruntime", cache=db) as rt:
        sid = rt.cache.enroll("Ann", voice[None])
        rt.cache.put_params(sid, b"computed by the default bundle", rt.cache.profile_version(sid))
    with L.load_runtime("default", backend="onnxruntime", cache=db) as rt:
        assert rt.cache.get_params(sid) == b"computed by the default bundle"  # the same model: kept
    with L.load_runtime(other_bundle, backend="onnxruntime", cache=db) as rt:
        assert rt.cache.get_params(sid) is None and rt.cache.get_profile(sid).voice_count == 1
