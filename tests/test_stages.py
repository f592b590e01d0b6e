"""Per-utterance stage graphs: exact parity with MLSAN.forward (torch) and with train.predict
through the onnxruntime runtime (`mlsan_edge.backends.stages`), including ablations, missing
modalities and multi-layer context."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import HAVE_TORCH, SHARED_DATA, requires_torch
from mlsan_edge.config import MODALITIES
from mlsan_edge.data.replay import pack, profile_inputs, replay_table, stream_order
from mlsan_edge.profile import GlobalStats
from mlsan_edge.data.table import UtteranceTable

pytestmark = requires_torch

if HAVE_TORCH:
    import torch

    from mlsan_edge import train
    from mlsan_edge.model.mlsan import MLSAN
    from mlsan_edge.model.stages import graph_io, history_len, stage_macs, stage_modules

D = {"audio": 6, "visual": 4, "text": 5}
VOICE = 8


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Every test here runs torch on one thread (conftest.torch_one_thread)."""


def tiny(config: str, **overrides):
    cfg = replace(train.CONFIGS[config], audio_dim=D["audio"], visual_dim=D["visual"], text_dim=D["text"],
                  voice_dim=VOICE, context_window=3, dropout=0.0)
    cfg = replace(cfg, hidden=16, speaker_dim=8, context_heads=2) if config == "teacher" else \
        replace(cfg, hidden=8, speaker_dim=4, context_heads=2)
    return replace(cfg, **overrides)


def make_table(n_groups=3, length=11, seed=0) -> UtteranceTable:
    """Dialogues of two alternating speakers; every modality pattern occurs, incl. all-missing."""
    rng = np.random.default_rng(seed)
    n = n_groups * length
    group = np.repeat(np.arange(n_groups), length).astype(np.int64)
    position = np.tile(np.arange(length), n_groups).astype(np.int64)
    spk = (position // 2 + group) % 3
    feats = {m: (rng.normal(size=(n, d)) * 2 + 1).astype(np.float32) for m, d in D.items()}
    masks = {m: rng.random(n) > 0.3 for m in D}
    for m in D:
        feats[m][~masks[m]] = 0
    voice = rng.normal(size=(3, VOICE))[spk] + rng.normal(0, 0.1, (n, VOICE))
    return UtteranceTable("synthetic", **feats, voice=voice.astype(np.float32), **{f"mask_{m}": v for m, v in masks.items()},
                          mask_voice=rng.random(n) > 0.2, label=rng.integers(0, 7, n).astype(np.int64),
                          speaker=np.array([f"s{s}" for s in spk]), group=group, position=position)


def make_model(cfg, table: UtteranceTable, seed=0) -> "MLSAN":
    torch.manual_seed(seed)
    m = MLSAN(cfg)
    stats = GlobalStats.fit(table)
    m.set_normalisation({k: (torch.tensor(stats.mean[k], dtype=torch.float32),
                             torch.tensor(np.sqrt(stats.var[k]), dtype=torch.float32)) for k in MODALITIES})
    with torch.no_grad():  # FiLM starts at identity and the flag embedding matters: perturb both
        for p in m.calib.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def stream_probs(model, batch: dict) -> np.ndarray:
    """Run every stream of a packed batch one utterance at a time through the four wrappers."""
    with torch.no_grad():
        return _stream_probs(model, batch)


def _stream_probs(model, batch: dict) -> np.ndarray:
    mods = stage_modules(model)
    W, H = history_len(model), model.cfg.hidden
    B, T = batch["valid"].shape
    probs = np.zeros((B, T, model.cfg.n_classes), np.float32)
    f = lambda k, b, t: torch.as_tensor(np.asarray(batch[k][b, t], np.float32)).reshape(1, -1)  # noqa: E731
    for b in range(B):
        hist, hmask = torch.zeros(1, W, H), torch.zeros(1, W)
        for t in range(T):
            if not batch["valid"][b, t]:
                continue
            sp = mods["speaker"](f("voice", b, t), f("mask_voice", b, t), f("profile_audio_mean", b, t),
                                 f("profile_audio_var", b, t), f("profile_visual_mean", b, t),
                                 f("profile_visual_var", b, t), f("profile_text_mean", b, t), f("profile_conf", b, t))
            a_cal, v_cal = mods["stage1"](f("audio", b, t), f("visual", b, t), f("mask_audio", b, t),
                                          f("mask_visual", b, t), *sp[1:])
            mm = torch.cat([f(f"mask_{m}", b, t) for m in MODALITIES], dim=1)
            fused, _ = mods["stage2"](f("text", b, t), a_cal, v_cal, mm, sp[0])
            p, _, ctx_in = mods["stage3"](fused, f("same_speaker_prev", b, t), hist, hmask)
            hist = torch.cat([hist[:, 1:], ctx_in[:, None]], 1)
            hmask = torch.cat([hmask[:, 1:], torch.ones(1, 1)], 1)
            probs[b, t] = p[0].numpy()
    return probs


ABLATIONS = [{}, {"use_stage1": False}, {"use_stage2": False}, {"use_speaker": False},
             {"use_stage1": False, "use_stage2": False, "use_speaker": False},
             {"stage1_max_gain": None}, {"stage1_max_gain": 0.5}]  # unbounded; a bound that binds


@pytest.mark.parametrize("config", ["teacher", "student"])
@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: ",".join(a) or "full")
def test_torch_stages_match_full_forward(config, ablation):
    table = make_table()
    model = make_model(tiny(config, **ablation), table)
    order = stream_order(table)
    batch = pack(table, order, profile_inputs(table, order, GlobalStats.fit(table)))
    with torch.no_grad():
        ref = torch.softmax(model(train.to_torch({k: v for k, v in batch.items() if k != "index"}))["logits"], -1).numpy()
    got = stream_probs(model, batch)
    v = batch["valid"]
    assert np.abs(got[v] - ref[v]).max() <= 1e-5
    if config == "teacher":
        assert history_len(model) == 6 and batch["valid"].shape[1] > history_len(model) + 1  # the window slides


def test_graph_io_names_and_macs():
    model = make_model(tiny("student"), make_table())
    io = graph_io(model)
    assert list(io) == ["speaker", "stage1", "stage2", "stage3"]
    assert [t["name"] for t in io["stage3"][1]] == ["probs", "latent", "context_in"]
    assert io["stage3"][0][2]["shape"] == ["batch", history_len(model), model.cfg.hidden]
    macs = stage_macs(model)
    assert macs["stage1"] == 0 and all(macs[g] > 0 for g in ("speaker", "stage2", "stage3"))


# --- the onnxruntime runtime against train.predict ---------------------------------------------
# The device-order replay is `mlsan_edge.data.replay.replay_table` itself (what `mlsan-edge eval`
# and the benchmarks run), never a copy of its loop.
def _export(model, stats, tmp_path, name="student"):
    from mlsan_edge.export.onnx_export import write_stage_bundle

    return write_stage_bundle(tmp_path / "bundle", {name: model}, stats, classes=None)


@pytest.mark.parametrize("config", ["teacher", "student"])
def test_runtime_matches_predict_generated(tmp_path, config):
    table = make_table(seed=3)
    stats = GlobalStats.fit(table)
    model = make_model(tiny(config), table)
    from mlsan_edge.backends.stages import Stages

    stages = Stages(_export(model, stats, tmp_path, config), backend="onnxruntime", precision="fp32")
    assert stages.history_len == history_len(model) and stages.hidden == model.cfg.hidden
    order = stream_order(table)
    ref = train.predict(model, table, order, stats)["probs"]
    got = replay_table(stages, table, order)["probs"]
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.requires_data
@pytest.mark.slow
def test_runtime_matches_predict_real(tmp_path):
    """A RAVDESS actor stream (audio + visual + neutral text) and MELD dialogues (text only) with
    a freshly initialised full-size student: the real feature ranges, not tiny random ones."""
    from mlsan_edge.data.extract import meld_table
    from mlsan_edge.backends.stages import Stages
    from mlsan_edge.training_job import encoder_paths

    from mlsan_edge.data.extract import file_sha
    from mlsan_edge.data.ravdess import load_ravdess
    from mlsan_edge.data.table import cache_key, default_cache_dir

    enc = encoder_paths()
    clips = load_ravdess(SHARED_DATA / "ravdess", None)
    key = cache_key("ravdess", [str(c.path) for c in clips], True, file_sha(enc["text_encoder"]),
                    file_sha(enc["voice_encoder"]))
    if not (default_cache_dir() / f"ravdess_{key}.npz").exists():
        pytest.skip("RAVDESS feature table not cached (run `mlsan-edge train` once); extraction is too slow here")
    from mlsan_edge.data.extract import ravdess_table

    rav = ravdess_table(SHARED_DATA / "ravdess", enc["text_encoder"], enc["voice_encoder"], progress=False)
    meld = meld_table(SHARED_DATA / "meld", "dev", enc["text_encoder"], progress=False)
    rav = rav.subset(np.where(rav.group == rav.group.min())[0][:40])
    meld = meld.subset(np.where(meld.group < meld.group.min() + 4)[0])
    table = train.concat_tables([rav, meld])
    stats = GlobalStats.fit(table)
    cfg = replace(train.CONFIGS["student"], dropout=0.0)
    model = make_model(cfg, table)
    stages = Stages(_export(model, stats, tmp_path), backend="onnxruntime", precision="fp32")
    order = stream_order(table, shuffle_groups={int(rav.group.min())}, seed=0)
    ref = train.predict(model, table, order, stats)["probs"]
    got = replay_table(stages, table, order)["probs"]
    assert np.abs(got - ref).max() <= 1e-4


def test_params_blob_round_trip_old_npz_and_corruption():
    """The speaker cache's parameter blobs: exact round trip, blobs of earlier versions (.npz)
    still read, and a truncated blob is an error rather than wrong parameters."""
    import io

    from mlsan_edge.backends.stages import Stages

    rng = np.random.default_rng(0)
    p = {"gamma_audio": rng.normal(size=(207,)), "speaker": rng.normal(size=(1, 64)), "gate": rng.normal(size=(3,))}
    blob = Stages.params_to_bytes(p)
    back = Stages.params_from_bytes(blob)
    assert list(back) == list(p)
    for k in p:
        np.testing.assert_array_equal(back[k], np.asarray(p[k], np.float32))
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in p.items()})
    old = Stages.params_from_bytes(buf.getvalue())
    assert all(np.array_equal(old[k], back[k]) for k in p)
    with pytest.raises(ValueError):
        Stages.params_from_bytes(blob[:-4])
