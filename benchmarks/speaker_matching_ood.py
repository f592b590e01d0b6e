"""The speaker cache on voices unlike the ones its threshold was tuned on: EmoSpeech's users.

`benchmarks/speaker_threshold.py` tuned the cache's threshold on RAVDESS actors (one studio, two
sentences). This measures the default bundle's `VoiceScorer` (fitted on RAVDESS only: it has never
heard an EmoSpeech user) and the real `SpeakerCache` on EmoSpeech: 105 users recording short
commands on their own microphones (CC BY-NC-SA 4.0). Each clip is cut by the device's VAD and
embedded by its `VoiceEncoder`; only voices of at least the cache's `min_voice_s` count (a shorter
one names nobody on the device: about four in five of these commands).

Streams: `--trials` shuffled streams of 4 users (users with >= 3 such voices), as in
speaker_threshold.py's "4x" streams. Per threshold, pooled: false-merge rate (pairs of clips by
different users put in one speaker), false-split rate, purity, coverage, speakers per user.
Nothing here is tuned: the bundle's threshold is reported beside the sweep.

    python benchmarks/speaker_matching_ood.py [--data ../shared/data] [--trials 60]

Writes benchmarks/results/speaker_matching_ood.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from speaker_threshold import counts, rates, run_stream

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.6, 0.8, 1.0, 1.2, 1.5, 1.8, 2.0, 2.5, 3.0)
USERS_PER_STREAM = 4
MIN_VOICES = 3


def emospeech_voices(root: Path, min_voice_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voices (n, 256), user index (n,), seconds of speech (n,)) of every EmoSpeech clip, as the
    device cuts and embeds it; only voices of at least `min_voice_s`."""
    from tqdm import tqdm

    from mlsan_edge.data.emospeech import load_emospeech
    from mlsan_edge.features.audio import load_audio
    from mlsan_edge.features.vad import SileroVAD, speech_span
    from mlsan_edge.features.voice import VoiceEncoder
    from mlsan_edge.training_job import encoder_paths

    enc = encoder_paths()
    vad, voice = SileroVAD(enc["vad"]), VoiceEncoder(enc["voice_encoder"])
    emb, user, secs = [], [], []
    for c in tqdm(load_emospeech(root), desc="EmoSpeech voices"):
        wav = speech_span(load_audio(c.path), vad=vad)
        if len(wav) / 16000 < min_voice_s:
            continue
        try:
            emb.append(voice.embed(wav))
        except ValueError:  # silent after the cut
            continue
        user.append(c.speaker)
        secs.append(len(wav) / 16000)
    return np.asarray(emb, np.float32), np.unique(user, return_inverse=True)[1], np.asarray(secs)


def main() -> None:
    from mlsan_edge.bundle import load_bundle
    from mlsan_edge.runtime.load import bundle_voice_scorer
    from mlsan_edge.runtime.speakers import MIN_VOICE_S

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--trials", type=int, default=60, help="streams of 4 users")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speaker_matching_ood.json")
    a = ap.parse_args()

    scorer = bundle_voice_scorer(load_bundle(a.bundle, verify=False))
    emb, user, secs = emospeech_voices(a.data / "emospeech", MIN_VOICE_S)
    n_per = np.bincount(user)
    users = np.flatnonzero(n_per >= MIN_VOICES)
    rng = np.random.default_rng(a.seed)
    streams = [rng.permutation(np.concatenate([np.flatnonzero(user == u)
                                               for u in rng.choice(users, USERS_PER_STREAM, replace=False)]))
               for _ in range(a.trials)]
    print(f"{len(emb)} voices >= {MIN_VOICE_S:g} s of {len(users)} users with >= {MIN_VOICES}; "
          f"bundle threshold {scorer.threshold}", flush=True)
    sweep = []
    for t in sorted({*THRESHOLDS, float(scorer.threshold)}):
        r = {"threshold": t, **{k: float(v) for k, v in
                                rates(sum(counts(user[s], run_stream(emb, s, t, scorer)) for s in streams)).items()}}
        sweep.append(r)
        print(f"threshold {t:4.1f}  purity {r['purity']:.3f}  coverage {r['coverage']:.3f}  false-merge "
              f"{r['false_merge_rate']:.3f}  false-split {r['false_split_rate']:.3f}  speakers/user "
              f"{r['speakers_per_actor']:.2f}", flush=True)
    doc = {"what": __doc__.split("\n\n")[0], "command": "python benchmarks/speaker_matching_ood.py",
           "bundle": a.bundle, "bundle_threshold": float(scorer.threshold), "min_voice_s": MIN_VOICE_S,
           "voices": int(len(emb)), "users": int(len(users)), "voice_s_median": round(float(np.median(secs)), 2),
           "streams": {"n": a.trials, "users_per_stream": USERS_PER_STREAM, "min_voices_per_user": MIN_VOICES,
                       "order": "shuffled", "seed": a.seed},
           "at_bundle_threshold": next(r for r in sweep if r["threshold"] == float(scorer.threshold)),
           "sweep": sweep, "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
