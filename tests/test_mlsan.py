"""ML-SAN network (torch): shapes, masks, causality, ablations, stage 3, training and checkpoints."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pytest

from conftest import HAVE_TORCH, requires_torch
from mlsan_edge.data.replay import pack, profile_inputs, stream_order
from mlsan_edge.profile import GlobalStats
from mlsan_edge.data.table import UtteranceTable

pytestmark = requires_torch

if HAVE_TORCH:  # without torch the module still imports, and the marker skips every test
    import torch

    from mlsan_edge import train
    from mlsan_edge.model.losses import class_weights, speaker_consistency_loss
    from mlsan_edge.model.mlsan import MLSAN

D = {"audio": 6, "visual": 4, "text": 5}
VOICE, N_CLASSES = 8, 7
PROFILE_KEYS = ("profile_audio_mean", "profile_audio_var", "profile_visual_mean", "profile_visual_var",
                "profile_text_mean", "profile_conf", "voice", "mask_voice")


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Every test here runs torch on one thread (conftest.torch_one_thread)."""


def tiny_config(**overrides):
    base = replace(train.CONFIGS["student"], hidden=16, speaker_dim=8, context_heads=2, context_window=3,
                   audio_dim=D["audio"], visual_dim=D["visual"], text_dim=D["text"], voice_dim=VOICE)
    return replace(base, **overrides)


def make_table(n_groups=4, length=6, seed=0, separable=False, n_train_rows=None) -> UtteranceTable:
    """`n_groups` dialogues of `length` utterances by two speakers taking turns. With `separable`,
    audio and text are a class prototype plus a per-speaker offset plus a little noise."""
    rng = np.random.default_rng(seed)
    n = n_groups * length
    group = np.repeat(np.arange(n_groups), length).astype(np.int64)
    position = np.tile(np.arange(length), n_groups).astype(np.int64)
    spk_id = (position // 2 + group) % 2
    label = rng.integers(0, N_CLASSES, n)
    feats = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in D.items()}
    if separable:
        proto = np.random.default_rng(123).normal(0, 2.0, (N_CLASSES, D["audio"] + D["text"]))
        offset = np.array([[-3.0], [3.0]])  # speakers differ by a constant shift of every dimension
        x = proto[label] + offset[spk_id] + rng.normal(0, 0.3, (n, D["audio"] + D["text"]))
        feats["audio"], feats["text"] = x[:, :D["audio"]].astype(np.float32), x[:, D["audio"]:].astype(np.float32)
    voice = np.random.default_rng(7).normal(size=(2, VOICE))[spk_id] + rng.normal(0, 0.1, (n, VOICE))
    masks = {m: rng.random(n) > (0.0 if separable and m != "visual" else 0.25) for m in D}
    return UtteranceTable("synthetic", **feats, voice=voice.astype(np.float32),
                          **{f"mask_{m}": v for m, v in masks.items()}, mask_voice=rng.random(n) > 0.2,
                          label=label.astype(np.int64), speaker=np.array([f"spk{s}" for s in spk_id]),
                          group=group, position=position)


def make_batch(t: UtteranceTable) -> dict:
    order = stream_order(t)
    b = pack(t, order, profile_inputs(t, order, GlobalStats.fit(t)))
    return train.to_torch({k: v for k, v in b.items() if k != "index"})


def clone(batch: dict) -> dict:
    return {k: v.clone() for k, v in batch.items()}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MLSAN(tiny_config())
    with torch.no_grad():  # stage-1 FiLM starts at identity; make it do something for the tests
        for p in m.calib.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def test_forward_backward_shapes():
    torch.manual_seed(0)
    cfg = tiny_config()
    m = MLSAN(cfg).train()
    batch = make_batch(make_table())
    B, T = batch["valid"].shape
    out = m(batch)
    assert out["logits"].shape == (B, T, N_CLASSES)
    assert out["latent"].shape == (B, T, cfg.hidden)
    assert out["trust"].shape == (B, T, 3) and out["speaker"].shape == (B, T, cfg.speaker_dim)
    assert out["gamma_audio"].shape == (B, T, D["audio"]) and out["beta_visual"].shape == (B, T, D["visual"])
    present = batch["valid"] & torch.stack([batch[f"mask_{m}"] for m in ("text", "audio", "visual")], -1).any(-1)
    torch.testing.assert_close(out["trust"].sum(-1)[present], torch.ones(int(present.sum())))
    v = batch["valid"]
    loss = torch.nn.functional.cross_entropy(out["logits"][v], batch["label"][v])
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.n_params() == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("modality", ["text", "audio", "visual"])
def test_missing_modality_has_zero_trust_and_no_influence(model, modality):
    batch = make_batch(make_table(seed=1))
    absent = batch["valid"] & ~batch[f"mask_{modality}"]
    assert absent.any()
    with torch.no_grad():
        out = model(batch)
        i = ("text", "audio", "visual").index(modality)
        assert (out["trust"][..., i][absent] == 0).all()
        changed = clone(batch)
        noise = torch.randn_like(changed[modality]) * 50
        changed[modality] = torch.where(absent.unsqueeze(-1), noise, changed[modality])
        out2 = model(changed)
    assert torch.equal(out["logits"], out2["logits"])


def test_causal_in_time(model):
    batch = make_batch(make_table(seed=2, length=8))
    T = batch["valid"].shape[1]
    with torch.no_grad():
        ref = model(batch)["logits"]
        for t in range(T - 1):
            changed = clone(batch)
            for k, v in changed.items():
                if v.is_floating_point() and v.dim() >= 2:
                    v[:, t + 1:] += torch.randn_like(v[:, t + 1:]) * 10
                elif v.dtype == torch.bool and k.startswith("mask_"):
                    v[:, t + 1:] = ~v[:, t + 1:] & changed["valid"][:, t + 1:]
            changed["same_speaker_prev"][:, t + 1:] = 1 - changed["same_speaker_prev"][:, t + 1:]
            got = model(changed)["logits"]
            assert torch.equal(got[:, :t + 1], ref[:, :t + 1]), f"utterance <= {t} saw the future"
            assert not torch.equal(got[:, t + 1:], ref[:, t + 1:])


def test_context_window_bounds_the_look_back(model):
    """With one context layer, utterance t only attends to t-window..t (the profile carries the rest)."""
    batch = make_batch(make_table(seed=3, length=8))
    w = model.cfg.context_window
    assert model.cfg.context_layers == 1
    with torch.no_grad():
        ref = model(batch)["logits"]
        changed = clone(batch)
        for m in ("text", "audio", "visual"):
            changed[m][:, 0] += 10
        got = model(changed)["logits"]
    assert not torch.equal(got[:, :w + 1], ref[:, :w + 1])
    assert torch.equal(got[:, w + 1:], ref[:, w + 1:])


@pytest.mark.parametrize("switch", ["use_stage1", "use_stage2", "use_stage3", "use_speaker"])
def test_ablations_run(switch):
    torch.manual_seed(0)
    m = MLSAN(tiny_config(**{switch: False})).train()
    batch = make_batch(make_table(seed=4))
    out = m(batch)
    v = batch["valid"]
    assert torch.isfinite(out["logits"][v]).all()
    torch.nn.functional.cross_entropy(out["logits"][v], batch["label"][v]).backward()
    if switch == "use_stage1":
        assert "gamma_audio" not in out
    if switch == "use_stage2":  # equal trust over the present modalities
        masks = torch.stack([batch[f"mask_{k}"] for k in ("text", "audio", "visual")], -1).float()
        expect = masks / masks.sum(-1, keepdim=True).clamp(min=1)
        torch.testing.assert_close(out["trust"], expect)


def test_stage1_gain_is_bounded():
    """A speaker heard with a narrow spread is not magnified beyond stage1_max_gain; a wide one is
    still scaled down; None keeps the unbounded 1 / relative std."""
    from mlsan_edge.model.mlsan import stage1_scale

    log_sd = torch.log(torch.tensor([0.01, 0.5, 1.0, 4.0]))  # speaker std / corpus std
    torch.testing.assert_close(stage1_scale(log_sd, 1.0), torch.tensor([1.0, 1.0, 1.0, 0.25]))
    torch.testing.assert_close(stage1_scale(log_sd, 2.0), torch.tensor([2.0, 2.0, 1.0, 0.25]))
    torch.testing.assert_close(stage1_scale(log_sd, None), torch.tensor([100.0, 2.0, 1.0, 0.25]))
    # in the network: with the bound, a speaker's narrower spread leaves stage 1's input unchanged
    # once the gain reaches it, so only the speaker network (through log_sd) sees the difference
    torch.manual_seed(0)
    m = MLSAN(tiny_config(stage1_max_gain=1.0, use_speaker=True)).eval()
    batch = make_batch(make_table(seed=6))
    batch["profile_audio_var"] = batch["profile_audio_var"].clamp(max=0.9)  # narrower than the corpus (std 1)
    narrow = clone(batch)
    narrow["profile_audio_var"] = batch["profile_audio_var"] * 1e-4
    with torch.no_grad():
        for p in m.speaker.parameters():  # the speaker network ignores its inputs: isolate stage 1
            p.zero_()
        a, b = m(batch), m(narrow)
    assert torch.equal(m.audio_std, torch.ones_like(m.audio_std))
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.manual_seed(0)
    m = MLSAN(tiny_config(stage1_max_gain=None)).eval()
    with torch.no_grad():
        for p in m.speaker.parameters():
            p.zero_()
        assert not torch.allclose(m(batch)["logits"], m(narrow)["logits"])


def test_without_speaker_inputs_are_ignored():
    torch.manual_seed(0)
    m = MLSAN(tiny_config(use_speaker=False)).eval()
    batch = make_batch(make_table(seed=5))
    changed = clone(batch)
    for k in PROFILE_KEYS:
        v = changed[k]
        changed[k] = ~v if v.dtype == torch.bool else torch.rand_like(v) * 7 + 0.5
    with torch.no_grad():
        a, b = m(batch), m(changed)
    assert torch.equal(a["logits"], b["logits"])
    assert not a["speaker"].any()
    torch.manual_seed(0)  # ... while with the speaker they matter
    m = MLSAN(tiny_config()).eval()
    with torch.no_grad():
        assert not torch.equal(m(batch)["logits"], m(changed)["logits"])


def test_speaker_consistency_loss():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    speakers = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
    latent = torch.randn(8, 16, requires_grad=True)
    loss = speaker_consistency_loss(latent, labels, speakers)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0
    # latents clustered by class (whatever the speaker) score lower than random ones
    centres = torch.randn(3, 16) * 5
    clustered = centres[labels] + 0.01 * torch.randn(8, 16)
    assert speaker_consistency_loss(clustered, labels, speakers) < loss.detach()


@pytest.mark.parametrize("labels, speakers", [
    ([0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 0, 1]),  # no two utterances share a class
    ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),  # same class only within a speaker
    ([0, 0, 0], [0, 1, 0]),  # fewer than four
])
def test_speaker_consistency_loss_without_positives(labels, speakers):
    latent = torch.randn(len(labels), 16, requires_grad=True)
    loss = speaker_consistency_loss(latent, torch.tensor(labels), torch.tensor(speakers))
    assert loss.item() == 0.0 and torch.isfinite(loss)
    base = latent.pow(2).mean()  # as in training: added to a loss that has a graph
    (base + 0.1 * loss).backward()
    expected = torch.autograd.grad(latent.pow(2).mean(), latent)[0]
    torch.testing.assert_close(latent.grad, expected)


def test_class_weights():
    w = class_weights(torch.tensor([0, 0, 0, 1, -1]), 3, power=1.0)
    assert w.shape == (3,) and w.mean().item() == pytest.approx(1.0)
    assert w[1] > w[0] and torch.isfinite(w).all()
    torch.testing.assert_close(class_weights(torch.tensor([0, 1, 1]), 3, power=0.0), torch.ones(3))


def accuracy(m, t: UtteranceTable, stats) -> float:
    probs = train.predict(m, t, stream_order(t), stats)["probs"]
    return float((probs.argmax(1) == t.label).mean())


@pytest.fixture(scope="module")
def trained():
    table = make_table(n_groups=32, length=10, seed=10, separable=True)
    cfg = tiny_config(dropout=0.0)
    m, stats, hist = train.fit(table, cfg, train.TrainConfig(epochs=12, batch_streams=4, lr=1e-2), progress=False)
    return m, stats, hist


def test_fit_beats_chance(trained):
    m, stats, hist = trained
    assert len(hist["loss"]) == 12 and all(np.isfinite(hist["loss"]))
    assert hist["loss"][-1] < hist["loss"][0]
    held_out = make_table(n_groups=6, length=10, seed=11, separable=True)
    acc = accuracy(m, held_out, stats)
    assert acc > 0.6, f"held-out accuracy {acc:.2f} (chance {1 / N_CLASSES:.2f})"


def test_checkpoint_round_trip(trained, tmp_path):
    m, stats, _ = trained
    out = train.save_checkpoint(tmp_path / "ckpt", m, stats, {"note": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    raw = (out / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])  # safetensors: a JSON header, then raw tensors
    assert "calib.audio.film.weight" in header and raw[:1] != b"\x80" and not raw.startswith(b"PK")
    doc = json.loads((out / "model.json").read_text())
    assert doc["note"] == "test" and doc["model"]["hidden"] == m.cfg.hidden
    m2, stats2, doc2 = train.load_checkpoint(out)
    assert m2.cfg == m.cfg and not m2.training
    for k in stats.mean:
        np.testing.assert_array_equal(stats2.mean[k], stats.mean[k])
        np.testing.assert_array_equal(stats2.var[k], stats.var[k])
    batch = make_batch(make_table(seed=12))
    with torch.no_grad():
        a, b = m(batch), m2(batch)
    for k in ("logits", "latent", "trust"):
        assert torch.equal(a[k], b[k])
    with pytest.raises(FileNotFoundError, match="not an ML-SAN checkpoint"):
        train.load_checkpoint(tmp_path / "elsewhere")


def test_ensemble_averages_members_and_round_trips(tmp_path):
    from mlsan_edge.model.ensemble import MLSANEnsemble

    torch.manual_seed(0)
    members = [MLSAN(tiny_config()).eval() for _ in range(3)]
    ens = MLSANEnsemble(members).eval()
    table = make_table(seed=3)
    batch = make_batch(table)
    with torch.no_grad():
        out = ens(batch)
        probs = torch.stack([torch.softmax(m(batch)["logits"], -1) for m in members]).mean(0)
    assert torch.allclose(torch.exp(out["logits"]), probs, atol=1e-6)
    train.save_checkpoint(tmp_path, ens, GlobalStats.fit(table), {})
    loaded, _, doc = train.load_checkpoint(tmp_path)
    assert doc["ensemble"] == 3 and isinstance(loaded, MLSANEnsemble)
    with torch.no_grad():  # members are stored as float16: close, not identical
        assert torch.allclose(torch.exp(loaded(batch)["logits"]), probs, atol=2e-3)
