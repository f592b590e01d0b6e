"""Labelled clip lists: the CSV that `mlsan-edge eval --dataset clips` reads.

    # comment lines (licences, where the media come from) start with '#'
    path,speaker,emotion,start,end
    me/hello.wav,alice,happy,,
    me/video.mp4,bob,anger,1.5,4.0

`path` is relative to the list's folder, or to `root` when one is given (absolute paths stay as
they are); audio (wav, flac, ogg, mp3...) or video (mp4, mpg, flv, mkv...). `start`/`end` (seconds,
optional, either may be empty) cut a span of the file. `emotion` is one of the model's seven classes
(`mlsan_edge.config.EMOTIONS`) or a common alias (`EMOTION_ALIASES`: happy -> joy, calm -> neutral...).
Every row is checked before anything is decoded: a bad row is one error naming the row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mlsan_edge.config import EMOTIONS

REQUIRED = ("path", "speaker", "emotion")
OPTIONAL = ("start", "end")
# the names other corpora and people use for the model's classes (RAVDESS, CREMA-D, EmoSpeech...)
EMOTION_ALIASES: dict[str, str] = {
    "happy": "joy", "happiness": "joy", "sad": "sadness", "angry": "anger", "fearful": "fear",
    "afraid": "fear", "scared": "fear", "calm": "neutral", "disgusted": "disgust", "surprised": "surprise",
    # CREMA-D's codes (1001_DFA_ANG_XX.flv); its SAD is "sad" above
    "neu": "neutral", "hap": "joy", "ang": "anger", "fea": "fear", "dis": "disgust",
    # TESS's "pleasant surprise" (its files say "ps"); a label with no class here (boredom,
    # contempt...) is an error: leave such rows out of the list
    "ps": "surprise", "pleasant_surprise": "surprise", "pleasant surprise": "surprise", "pleasant_surprised": "surprise",
}
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "clips"  # lists that travel with the package
VIDEO_SUFFIXES = {".mp4", ".mpg", ".mpeg", ".flv", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".3gp"}


class ClipListError(ValueError):
    """A clip list that cannot be used (the message names the file and the row)."""


@dataclass(frozen=True)
class Clip:
    """One labelled clip: the file, who speaks, the true class, the span (s; None = the file's
    start/end) and where it came from ("LIST line N", for messages)."""

    path: Path
    speaker: str
    emotion: str
    start: float | None = None
    end: float | None = None
    where: str = ""

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def emotion_name(value: str, where: str = "") -> str:
    """The model's class name for `value` (a class name or an alias, any case).

    Raises:
        ClipListError: naming `where`, the value and the accepted names.
    """
    v = value.strip().lower()
    if v in EMOTIONS:
        return v
    if v in EMOTION_ALIASES:
        return EMOTION_ALIASES[v]
    aliases = ", ".join(f"{k}->{c}" for k, c in EMOTION_ALIASES.items())
    raise ClipListError(f"{where}unknown emotion {value!r}; accepted: {', '.join(EMOTIONS)} "
                        f"or the aliases {aliases}")


def _seconds(value: str | None, name: str, where: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        s = float(value)
    except ValueError:
        raise ClipListError(f"{where}{name} {value!r} is not a number of seconds") from None
    if not s >= 0:  # also NaN
        raise ClipListError(f"{where}{name} must be >= 0 seconds, got {value!r}")
    return s


def shipped_lists() -> list[str]:
    """Names of the lists in mlsan_edge/assets/clips/ (`--data NAME` finds them)."""
    return sorted(p.stem for p in SHIPPED.glob("*.csv"))


def resolve_list(name: str | Path) -> Path:
    """`name` when it is a file, else the shipped list of that name (talking_grid13, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / (path.name if path.suffix == ".csv" else f"{path.name}.csv")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"clip list not found: {path} (a CSV with columns {', '.join(REQUIRED)}"
                            f"[, {', '.join(OPTIONAL)}], or a shipped list: {', '.join(shipped_lists()) or 'none'})")


def read_clip_list(csv_path: str | Path, root: str | Path | None = None, check_files: bool = True) -> list[Clip]:
    """The clips of a list, in file order.

    Args:
        csv_path: the list (columns path, speaker, emotion, optional start, end; '#' lines ignored),
            or the name of a shipped list (`shipped_lists()`).
        root: the folder the paths are relative to (default: the list's folder).
        check_files: each file must exist (the error names the row and the file).

    Raises:
        FileNotFoundError: the list, or a clip it names, does not exist.
        ClipListError: a missing column, an empty field, an unknown emotion, a bad span; or no rows.
    """
    csv_path = resolve_list(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    if root is not None and not base.is_dir():
        raise FileNotFoundError(f"--root {base} is not a folder")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        numbered = [(i, line) for i, line in enumerate(f, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise ClipListError(f"{csv_path} has no header and no rows")
    reader = csv.DictReader([line for _, line in numbered])
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ClipListError(f"{csv_path} (line {numbered[0][0]}): missing column(s) {', '.join(missing)}; "
                            f"expected {', '.join(REQUIRED)}[, {', '.join(OPTIONAL)}], got {', '.join(header)}")
    reader.fieldnames = header
    clips = []
    for (line, _), r in zip(numbered[1:], reader):
        where = f"{csv_path} line {line}: "
        for c in REQUIRED:
            if not (r.get(c) or "").strip():
                raise ClipListError(f"{where}empty {c!r}")
        path = base / r["path"].strip()
        if check_files and not path.is_file():
            hint = "" if root is not None else " (paths are relative to the list's folder; give --root DIR otherwise)"
            raise FileNotFoundError(f"{where}clip not found: {path}{hint}")
        start, end = _seconds(r.get("start"), "start", where), _seconds(r.get("end"), "end", where)
        if start is not None and end is not None and end <= start:
            raise ClipListError(f"{where}end {end:g} s is not after start {start:g} s")
        clips.append(Clip(path, r["speaker"].strip(), emotion_name(r["emotion"], where), start, end, where[:-2]))
    if not clips:
        raise ClipListError(f"{csv_path} lists no clips (only a header)")
    return clips
