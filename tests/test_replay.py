"""Replaying tables as streams: causal profile inputs, packing, stream order, and `replay_table`
(the device-order replay `mlsan-edge eval` and the benchmarks run) with the default bundle."""

from __future__ import annotations

import numpy as np
import pytest

from mlsan_edge.config import MODALITIES
from mlsan_edge.data.replay import pack, profile_inputs, replay_table, stream_order
from mlsan_edge.data.table import UtteranceTable
from mlsan_edge.profile import PRIOR_COUNT, VAR_FLOOR, GlobalStats, SpeakerProfile, profile_row

DIMS = {"audio": 6, "visual": 4, "text": 5}
VOICE = 8


def make_table(groups=(5, 3, 4), speakers=("ann", "bob", "cy"), seed=0) -> UtteranceTable:
    """Rows deliberately not in stream order: shuffled, with positions that say the true order."""
    rng = np.random.default_rng(seed)
    group = np.concatenate([np.full(n, g, np.int64) for g, n in enumerate(groups)])
    position = np.concatenate([np.arange(n) for n in groups]).astype(np.int64)
    n = len(group)
    spk = np.array([speakers[(g + p // 2) % len(speakers)] for g, p in zip(group, position)])  # turns of two
    perm = rng.permutation(n)
    feats = {m: rng.normal(2.0, 1.5, (n, d)).astype(np.float32) for m, d in DIMS.items()}
    masks = {m: rng.random(n) > 0.2 for m in DIMS}
    voice = rng.normal(size=(n, VOICE)).astype(np.float32)
    t = UtteranceTable("synthetic", **feats, voice=voice, **{f"mask_{m}": v for m, v in masks.items()},
                       mask_voice=rng.random(n) > 0.3, label=rng.integers(0, 7, n), speaker=spk,
                       group=group, position=position)
    return t.subset(perm)


def test_stream_order_follows_positions():
    t = make_table()
    order = stream_order(t)
    assert sorted(order) == list(range(len(t)))
    assert np.all(np.diff(t.group[order]) >= 0)
    for g in np.unique(t.group):
        rows = order[t.group[order] == g]
        np.testing.assert_array_equal(t.position[rows], np.arange(len(rows)))


def test_stream_order_shuffles_only_chosen_groups_deterministically():
    t = make_table(groups=(12, 12, 12))
    base = stream_order(t)
    a = stream_order(t, shuffle_groups={1}, seed=3)
    assert sorted(a) == list(range(len(t)))
    for g in (0, 2):
        np.testing.assert_array_equal(a[t.group[a] == g], base[t.group[base] == g])
    assert not np.array_equal(a[t.group[a] == 1], base[t.group[base] == 1])
    assert set(a[t.group[a] == 1]) == set(base[t.group[base] == 1])
    np.testing.assert_array_equal(a, stream_order(t, shuffle_groups={1}, seed=3))  # same seed, same order
    assert not np.array_equal(a, stream_order(t, shuffle_groups={1}, seed=4))
    np.testing.assert_array_equal(stream_order(t, shuffle_groups=set(), seed=3), base)


def test_stream_order_neutral_first_puts_a_speakers_neutral_clips_first():
    t = make_table(groups=(12, 12, 12))
    neutral = 0  # EMOTIONS[0]
    a = stream_order(t, shuffle_groups={1, 2}, seed=3, neutral_first=True)
    assert sorted(a) == list(range(len(t)))
    for g in (1, 2):
        labels = t.label[a[t.group[a] == g]]
        k = int((labels == neutral).sum())
        assert k > 0 and (labels[:k] == neutral).all() and (labels[k:] != neutral).all()
    # groups that are not shuffled keep their recorded order
    np.testing.assert_array_equal(a[t.group[a] == 0], stream_order(t)[t.group[stream_order(t)] == 0])


def test_profile_inputs_are_causal():
    t = make_table()
    order = stream_order(t)
    stats = GlobalStats.fit(t)
    ref = profile_inputs(t, order, stats)
    for cut in (2, 6, 10):
        later = order[cut:]
        changed = make_table()
        for m in (*MODALITIES, "voice"):
            getattr(changed, m)[later] += 100.0
            getattr(changed, f"mask_{m}")[later] = ~getattr(changed, f"mask_{m}")[later]
        got = profile_inputs(changed, order, stats)
        earlier = order[:cut]
        for k in ref:
            np.testing.assert_array_equal(got[k][earlier], ref[k][earlier], err_msg=f"{k} saw the future")
        assert any(not np.array_equal(got[k][later], ref[k][later]) for k in ref)  # the change is visible


def test_first_utterance_of_each_speaker_gets_global_stats():
    t = make_table()
    order = stream_order(t)
    stats = GlobalStats.fit(t)
    prof = profile_inputs(t, order, stats)
    seen = set()
    for i in order:
        first = t.speaker[i] not in seen
        seen.add(t.speaker[i])
        if not first:
            continue
        for m in ("audio", "visual"):
            np.testing.assert_allclose(prof[f"profile_{m}_mean"][i], stats.mean[m], rtol=1e-6)
            np.testing.assert_allclose(prof[f"profile_{m}_var"][i], np.maximum(stats.var[m], VAR_FLOOR), rtol=1e-6)
        np.testing.assert_allclose(prof["profile_text_mean"][i], stats.mean["text"], rtol=1e-6)
        np.testing.assert_array_equal(prof["profile_conf"][i], 0.0)
    assert seen == {"ann", "bob", "cy"}


def test_profile_inputs_replay_the_shared_update_rule():
    """Row i equals `profile_row` of a SpeakerProfile fed that speaker's earlier present features."""
    t = make_table()
    order = stream_order(t)
    stats = GlobalStats.fit(t)
    prof = profile_inputs(t, order, stats)
    bob = [i for i in order if t.speaker[i] == "bob"]
    p = SpeakerProfile(dims=DIMS, voice_dim=VOICE)
    for i in bob:
        row = profile_row(p, stats)
        for k, v in row.items():
            np.testing.assert_array_equal(prof[k][i], v)
        earlier = p.voice_centroid()  # the voice input: earlier utterances' centroid, else this one's
        if earlier is not None:
            np.testing.assert_allclose(prof["voice"][i], earlier, rtol=1e-6)
            assert prof["mask_voice"][i]
        elif t.mask_voice[i]:
            np.testing.assert_array_equal(prof["voice"][i], t.voice[i])
            assert prof["mask_voice"][i]
        else:
            assert not prof["mask_voice"][i] and not prof["voice"][i].any()
        p.update({m: getattr(t, m)[i] if getattr(t, f"mask_{m}")[i] else None for m in MODALITIES},
                 voice=t.voice[i] if t.mask_voice[i] else None)
        n = p.stats["audio"].count
    assert n > 0 and np.isclose(profile_row(p, stats)["profile_conf"][1], n / (n + PRIOR_COUNT))


def test_pack_shapes_padding_and_same_speaker_prev():
    t = make_table(groups=(5, 3, 4))
    order = stream_order(t)
    prof = profile_inputs(t, order, GlobalStats.fit(t))
    b = pack(t, order, prof)
    B, T = 3, 5
    assert b["index"].shape == b["valid"].shape == b["label"].shape == b["same_speaker_prev"].shape == (B, T)
    for m, d in DIMS.items():
        assert b[m].shape == (B, T, d) and b[f"mask_{m}"].shape == (B, T)
    assert b["profile_audio_mean"].shape == (B, T, DIMS["audio"]) and b["profile_conf"].shape == (B, T, 3)
    assert b["voice"].shape == (B, T, VOICE) and b["mask_voice"].shape == (B, T)
    np.testing.assert_array_equal(b["valid"].sum(1), [5, 3, 4])
    pad = ~b["valid"]
    assert (b["index"][pad] == -1).all() and (b["label"][pad] == -1).all()
    for k, v in b.items():
        if k not in ("index", "label", "valid"):
            assert not v[pad].any(), f"{k} is not zero in padding"
    for bi in range(B):
        rows = b["index"][bi][b["valid"][bi]]
        np.testing.assert_array_equal(rows, order[t.group[order] == t.group[rows[0]]])
        np.testing.assert_array_equal(b["audio"][bi, :len(rows)], t.audio[rows])
        np.testing.assert_array_equal(b["label"][bi, :len(rows)], t.label[rows])
        np.testing.assert_array_equal(b["profile_visual_var"][bi, :len(rows)], prof["profile_visual_var"][rows])
        spk = t.speaker[rows]
        expect = np.r_[0, (spk[1:] == spk[:-1]).astype(int)]
        np.testing.assert_array_equal(b["same_speaker_prev"][bi, :len(rows)], expect)
    assert b["same_speaker_prev"].dtype == np.int64 and b["same_speaker_prev"].any()


def test_pack_max_len_chunks():
    t = make_table(groups=(5, 3))
    order = stream_order(t)
    b = pack(t, order, profile_inputs(t, order, GlobalStats.fit(t)), max_len=2)
    assert b["valid"].shape == (5, 2)  # 5 -> 2+2+1, 3 -> 2+1
    np.testing.assert_array_equal(b["valid"].sum(1), [2, 2, 1, 2, 1])
    np.testing.assert_array_equal(b["index"][b["valid"]], order)
    assert (b["same_speaker_prev"][:, 0] == 0).all()


def test_global_stats_use_present_rows_only():
    t = make_table()
    s = GlobalStats.fit(t)
    for m in MODALITIES:
        x = getattr(t, m)[getattr(t, f"mask_{m}")]
        np.testing.assert_allclose(s.mean[m], x.mean(0), rtol=1e-5)
        np.testing.assert_allclose(s.var[m], x.var(0), rtol=1e-4)
    back = GlobalStats.from_dict(s.to_dict())
    for m in MODALITIES:
        np.testing.assert_array_equal(back.mean[m], s.mean[m])


# --- replay_table: what `mlsan-edge eval` and the benchmarks run -------------------------------
@pytest.fixture(scope="module")
def stages():
    from mlsan_edge.backends.stages import Stages

    s = Stages("default", backend="onnxruntime", precision="fp32", threads=1)
    yield s
    s.close()


def device_table(stages, groups=(6, 5, 4), speakers=None, seed=0) -> UtteranceTable:
    """Utterances shaped like the default bundle's inputs, drawn around its training statistics.

    speakers(g, p) names the speaker of utterance p of group g; by default turns of two among
    three speakers, who carry over from one group to the next."""
    speakers = speakers or (lambda g, p: f"s{(g + p // 2) % 3}")
    rng = np.random.default_rng(seed)
    group = np.concatenate([np.full(n, g, np.int64) for g, n in enumerate(groups)])
    position = np.concatenate([np.arange(n) for n in groups]).astype(np.int64)
    spk = np.array([speakers(g, p) for g, p in zip(group, position)])
    n, st = len(group), stages.global_stats
    feats = {m: (st.mean[m] + np.sqrt(st.var[m]) * rng.normal(size=(n, len(st.mean[m])))).astype(np.float32)
             for m in MODALITIES}
    masks = {m: rng.random(n) > 0.25 for m in MODALITIES}
    for m in MODALITIES:
        feats[m][~masks[m]] = 0
    centre = {s: rng.normal(size=stages.voice_dim) for s in np.unique(spk)}
    voice = np.stack([centre[s] + rng.normal(0, 0.3, stages.voice_dim) for s in spk])
    voice = (voice / np.linalg.norm(voice, axis=1, keepdims=True)).astype(np.float32)
    mask_voice = masks["audio"] & (rng.random(n) > 0.2)  # the voice embedding comes from the audio
    voice[~mask_voice] = 0
    return UtteranceTable("synthetic", **feats, voice=voice, **{f"mask_{m}": v for m, v in masks.items()},
                          mask_voice=mask_voice, label=rng.integers(0, 7, n), speaker=spk, group=group,
                          position=position)


def packed_stream_probs(stages, t: UtteranceTable, order: np.ndarray) -> np.ndarray:
    """The reference: the training side's packed batch (`profile_inputs` + `pack`, what the
    network is trained on) fed to the stage graphs one utterance at a time, each speaker's
    parameters passed through the speaker cache's byte form."""
    prof = profile_inputs(t, order, stages.global_stats)
    b = pack(t, order, prof)
    probs = np.zeros((len(t), len(stages.classes)), np.float32)
    keys = [k for k in prof if k.startswith("profile_")]
    for s in range(b["index"].shape[0]):
        history = stages.new_history()
        for k in np.flatnonzero(b["valid"][s]):
            x = {m: b[m][s, k] if b[f"mask_{m}"][s, k] else None for m in (*MODALITIES, "voice")}
            params = stages.speaker_params({key: b[key][s, k] for key in keys}, x["voice"])
            params = stages.params_from_bytes(stages.params_to_bytes(params))
            fused, _ = stages.stage2(x["text"], stages.stage1(x["audio"], x["visual"], params), params)
            probs[b["index"][s, k]], _ = stages.stage3(fused, bool(b["same_speaker_prev"][s, k]), history)
    return probs


def test_replay_table_equals_the_packed_streams_one_utterance_at_a_time(stages):
    t = device_table(stages)
    order = stream_order(t, shuffle_groups={1}, seed=2)
    out = replay_table(stages, t, order)
    assert out["probs"].shape == (len(t), len(stages.classes)) and out["trust"].shape == (len(t), len(MODALITIES))
    np.testing.assert_allclose(out["probs"], packed_stream_probs(stages, t, order), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)
    present = np.stack([getattr(t, f"mask_{m}") for m in MODALITIES], 1)
    assert (out["trust"][~present] == 0).all() and (out["trust"][present] > 0).all()
    assert len(np.unique(out["probs"].argmax(1))) > 1 or np.ptp(out["probs"], 0).max() > 1e-3  # not constant


def test_replay_table_is_causal(stages):
    t = device_table(stages)
    order = stream_order(t)
    ref = replay_table(stages, t, order)
    for cut in (3, 8):
        later, earlier = order[cut:], order[:cut]
        changed = device_table(stages)
        for m in MODALITIES:
            getattr(changed, m)[later] *= -1.5
        changed.voice[later] = changed.voice[later][::-1]
        got = replay_table(stages, changed, order)
        for k in ("probs", "trust"):
            np.testing.assert_array_equal(got[k][earlier], ref[k][earlier], err_msg=f"{k} saw the future")
        assert not np.allclose(got["probs"][later], ref["probs"][later])  # the change is visible


def test_replay_table_resets_the_context_when_the_stream_changes(stages):
    """With one set of speakers per stream (no profile carried over), a stream replays the same
    alone as after another stream: the context history and previous speaker start afresh."""
    t = device_table(stages, groups=(7, 6), speakers=lambda g, p: f"g{g}-s{p % 2}")
    order = stream_order(t)
    both = replay_table(stages, t, order)
    second = np.flatnonzero(t.group == 1)
    alone = t.subset(second)
    got = replay_table(stages, alone, stream_order(alone))
    np.testing.assert_allclose(got["probs"], both["probs"][second], rtol=0, atol=1e-6)
    # and the first utterance of a stream really does not see the previous one's context:
    merged = device_table(stages, groups=(7, 6), speakers=lambda g, p: f"g{g}-s{p % 2}")
    merged.group[:] = 0
    merged.position[second] += 7
    joined = replay_table(stages, merged, stream_order(merged))
    assert not np.allclose(joined["probs"][second[0]], both["probs"][second[0]], atol=1e-6)


def test_replay_table_carries_a_speakers_profile_across_streams(stages):
    """Profiles are per speaker, not per stream: the same speaker in the next stream is not new."""
    t = device_table(stages, groups=(6, 6), speakers=lambda g, p: "same")
    order = stream_order(t)
    both = replay_table(stages, t, order)
    second = np.flatnonzero(t.group == 1)
    alone = t.subset(second)
    got = replay_table(stages, alone, stream_order(alone))
    # the first utterance heard with audio: one heard by text alone has nothing to calibrate and a
    # single modality to trust, so the speaker's history cannot change it
    k = int(np.flatnonzero(t.mask_audio[second])[0])
    assert not np.allclose(got["probs"][k], both["probs"][second[k]], atol=1e-6)
