"""Write the labelled clip lists that `mlsan-edge eval --dataset clips` reads (the lists that ship in
mlsan_edge/assets/clips/ come from here).

    python -m mlsan_edge.data.clip_lists talking   --root ../shared/data/talking   --out mlsan_edge/assets/clips
    python -m mlsan_edge.data.clip_lists emospeech --root ../shared/data/emospeech --out LIST.csv \\
        [--clips 150] [--seed 0] [--speakers ID,ID...]

A list is a CSV with columns path, speaker, emotion (and optional start, end), paths relative to
the corpus folder given as `--root` at evaluation; '#' lines say what the clips are and their
licence (the format: mlsan_edge/runtime/clip_list.py, which this data-side module may not import).
EmoSpeech lists hold the evaluation speakers (`emospeech_eval_speaker`), or the speakers named.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from mlsan_edge.config import EMOTIONS
from mlsan_edge.data.emospeech import load_emospeech

CREMA_MP4 = "cremad_1001_6emotions_13s.mp4"
# the order the six are joined in (../shared/data/README.md: neutral, happy, sad, anger, fear, disgust)
CREMA_MP4_ORDER = ("neutral", "joy", "sadness", "anger", "fear", "disgust")
SPEECH_DB = 30.0  # a 10 ms frame is speech within this many dB of the loudest frame
GRID_NOTE = ("GRID corpus (Cooke, Barker, Cunningham, Shao 2006), zenodo.org/records/3625687; licence CC BY 4.0. "
             "Read speech: every clip is neutral.")
CREMA_NOTE = ("CREMA-D (Cao et al. 2014), actor 1001; licence ODbL 1.0 (database) + DbCL 1.0 (contents). "
              f"The shared {CREMA_MP4} (the six joined: {', '.join(CREMA_MP4_ORDER)}; +7 dB), one row per "
              f"utterance, cut midway between utterances (speech: within {SPEECH_DB:.0f} dB of the loudest 10 ms).")
EMOSPEECH_NOTE = ("EmoSpeech dataset v0.1 (RakshakTeam), users recorded outside a studio; licence CC BY-NC-SA 4.0 "
                  "(non-commercial, share-alike). calm -> neutral, angry -> anger, fearful -> fear, happy -> joy.")


def write_clip_list(rows: list[tuple], out: str | Path, notes: list[str] = ()) -> Path:
    """(path, speaker, emotion[, start, end]) rows as a clip list at `out`, each note a '#' line
    above the header (start and end columns when any row has a span)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spans = any(len(r) > 3 for r in rows)
    with open(out, "w", newline="", encoding="utf-8") as f:
        for n in notes:
            f.write(f"# {n}\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "speaker", "emotion", *(("start", "end") if spans else ())])
        for p, s, e, *span in rows:
            if e not in EMOTIONS:
                raise ValueError(f"{p}: emotion {e!r} is not one of {', '.join(EMOTIONS)}")
            w.writerow([p, s, e, *(span or ("", "") if spans else ())])
    return out


def grid_rows(talking: str | Path) -> list[tuple[str, str, str]]:
    """Every GRID sentence under talking/grid (s1_bbaf2n.mpg: speaker s1), neutral."""
    files = sorted(Path(talking, "grid").glob("*.mpg"))
    if not files:
        raise FileNotFoundError(f"no GRID clips (*.mpg) under {Path(talking, 'grid')}")
    return [(f"grid/{p.name}", p.name.split("_")[0], "neutral") for p in files]


WORD_PAD_S = 0.1  # each word's span is widened by this much either side (within its clip)
GRID_WORDS_NOTE = ("GRID corpus (Cooke, Barker, Cunningham, Shao 2006), zenodo.org/records/3625687; licence CC BY 4.0. "
                   "Every word of the GRID sentences that have a word alignment (talking/align), one row per word: "
                   "short neutral words (command, colour, preposition, letter, digit, adverb), "
                   f"each widened by {WORD_PAD_S:g} s either side.")
ALIGN_UNITS_PER_S = 25000  # GRID's .align files count time in 1/25000 s (1000 per video frame at 25 fps)


def grid_word_rows(talking: str | Path) -> list[tuple[str, str, str, float, float]]:
    """Every word of the GRID sentences under talking/grid with an alignment under talking/align
    (s1_bbaf2n.align: "start end word" lines; "sil" and "sp" are not words), neutral, each as the
    word's span of the sentence's clip: the short utterances (0.06-0.6 s) a command-and-control user
    says, which the speaker cache cannot tell apart (under a second of voice). Each span is
    widened by WORD_PAD_S either side, as a word said alone has its onset and release: cut at the
    alignment's edges, most words are too short for the VAD to start an utterance."""
    aligns = sorted(Path(talking, "align").glob("*.align"))
    rows = []
    for a in aligns:
        clip = Path(talking, "grid", a.stem + ".mpg")
        if not clip.is_file():
            continue
        lines = [parts for ln in a.read_text().splitlines() if len(parts := ln.split()) == 3]
        last = max(int(p[1]) for p in lines) / ALIGN_UNITS_PER_S
        for parts in lines:
            if parts[2] not in ("sil", "sp"):
                start, end = (int(t) / ALIGN_UNITS_PER_S for t in parts[:2])
                start, end = round(max(0.0, start - WORD_PAD_S), 3), round(min(last, end + WORD_PAD_S), 3)
                rows.append((f"grid/{clip.name}", a.stem.split("_")[0], "neutral", start, end))
    if not rows:
        raise FileNotFoundError(f"no GRID word alignments (*.align) with a clip under {Path(talking, 'align')}")
    return rows


def cremad_rows(talking: str | Path) -> list[tuple[str, str, str, float, float]]:
    """The six utterances of talking/cremad_1001_6emotions_13s.mp4 (the file issue #9's acceptance
    names), each as a span of the file, cut midway between utterances."""
    from mlsan_edge.features.audio import SAMPLE_RATE, load_audio

    path = Path(talking, CREMA_MP4)
    if not path.is_file():
        raise FileNotFoundError(f"no {CREMA_MP4} under {talking}")
    wav = load_audio(path)
    spans = utterance_spans(wav, SAMPLE_RATE, len(CREMA_MP4_ORDER))
    return [(CREMA_MP4, "cremad1001", e, a, b) for e, (a, b) in zip(CREMA_MP4_ORDER, spans)]


def utterance_spans(wav: np.ndarray, sr: int, n: int, min_gap_s: float = 0.3) -> list[tuple[float, float]]:
    """`n` spans (seconds) covering `wav`, one per utterance: speech frames (10 ms, within
    SPEECH_DB of the loudest) joined across pauses shorter than `min_gap_s`, the longest `n` runs
    kept, each cut midway to its neighbours (the first from 0, the last to the end)."""
    hop = sr // 100
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(1) + 1e-12)
    on = np.flatnonzero(db > db.max() - SPEECH_DB)
    if not len(on):
        raise ValueError("no speech found")
    breaks = np.flatnonzero(np.diff(on) > min_gap_s * 100)
    runs = list(zip(on[np.r_[0, breaks + 1]], on[np.r_[breaks, len(on) - 1]] + 1))
    if len(runs) < n:
        raise ValueError(f"found {len(runs)} utterances, expected {n}")
    runs = sorted(sorted(runs, key=lambda r: r[0] - r[1])[:n])  # the n longest, in time order
    cuts = [0.0] + [round((a[1] + b[0]) / 200, 2) for a, b in zip(runs, runs[1:])] + [round(len(wav) / sr, 2)]
    return list(zip(cuts[:-1], cuts[1:]))


def emospeech_rows(root: str | Path, n: int | None = None, seed: int = 0,
                   speakers: list[str] | None = None) -> list[tuple[str, str, str]]:
    """EmoSpeech clips of the evaluation speakers (or of `speakers`), paths relative to `root`.

    All of them (grouped by speaker, labels.csv order) when `n` is None; else `n` clips taken
    round-robin over the speakers in a seeded order, each speaker's clips in a seeded order, so
    every speaker appears before any appears twice (one or a few clips each)."""
    root = Path(root)
    if speakers:
        clips = [c for c in load_emospeech(root) if c.speaker in set(speakers)]
        unknown = sorted(set(speakers) - {c.speaker for c in clips})
        if unknown:
            raise ValueError(f"no EmoSpeech clips for speaker(s) {', '.join(unknown)} under {root}")
    else:
        clips = load_emospeech(root, split="eval")
    if n is not None:
        rng = np.random.default_rng(seed)
        by: dict[str, list] = {}
        for c in clips:
            by.setdefault(c.speaker, []).append(c)
        queues = [[by[s][i] for i in rng.permutation(len(by[s]))] for s in rng.permutation(sorted(by))]
        picked, k = [], 0
        while len(picked) < n and any(k < len(q) for q in queues):
            picked += [q[k] for q in queues if k < len(q)][:n - len(picked)]
            k += 1
        clips = picked
    return [(c.path.relative_to(root).as_posix(), c.speaker, c.emotion) for c in clips]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("corpus", choices=["talking", "emospeech"])
    ap.add_argument("--root", required=True, help="../shared/data/talking or ../shared/data/emospeech")
    ap.add_argument("--out", required=True, help="talking: a folder (three lists); emospeech: the list's path")
    ap.add_argument("--clips", type=int, default=None, help="emospeech: this many clips (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speakers", default=None, help="emospeech: these speakers (comma-separated) instead of "
                    "the evaluation speakers")
    a = ap.parse_args(argv)
    run = "mlsan-edge eval --dataset clips --data {} --root ../shared/data/{}"
    if a.corpus == "talking":
        out = Path(a.out)
        for name, rows, note in (("talking_grid13.csv", grid_rows(a.root), GRID_NOTE),
                                 ("talking_cremad1001.csv", cremad_rows(a.root), CREMA_NOTE),
                                 ("talking_grid_words.csv", grid_word_rows(a.root), GRID_WORDS_NOTE)):
            print(write_clip_list(rows, out / name, [note, "paths relative to ../shared/data/talking: "
                                                     + run.format(name, "talking")]))
        return
    speakers = [s for s in (a.speakers or "").split(",") if s]
    rows = emospeech_rows(a.root, a.clips, a.seed, speakers or None)
    who = f"speakers {', '.join(speakers)}" if speakers else \
        "the evaluation speakers (mlsan_edge.data.emospeech.emospeech_eval_speaker: sha1(speaker) % 5 == 0)"
    print(write_clip_list(rows, a.out, [EMOSPEECH_NOTE, f"{len(rows)} clips of {who}",
                                        "paths relative to ../shared/data/emospeech: "
                                        + run.format(Path(a.out).name, "emospeech")]))


if __name__ == "__main__":
    main()
