"""`TextSource`: what was said in each utterance, from a transcriber, a list of lines or timed segments."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np


class TextSource:
    """Text per utterance: a transcriber `fn(audio, start_s, end_s) -> str | None`, a list of
    strings taken in order, or timed segments [(start_s, end_s, text)] matched by overlap."""

    def __init__(self, spec) -> None:
        self._fn = self._lines = self._segments = None
        if spec is None:
            return
        if callable(spec):
            self._fn = spec
        elif isinstance(spec, str):
            self._lines = deque([spec])
        else:
            items = list(spec)
            if items and not isinstance(items[0], str):
                self._segments = [(float(a), float(b), str(t)) for a, b, t in items]
            else:
                self._lines = deque(items)

    @classmethod
    def from_file(cls, path: str | Path | None) -> "TextSource":
        """'none'/None: no text; .jsonl/.json of {start, end, text}: timed; else one line per utterance."""
        if path is None or str(path).lower() == "none":
            return cls(None)
        p = Path(path)
        try:
            raw = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{p} is not UTF-8 text ({e}); expected one line of text per utterance, or "
                             ".jsonl/.json of {start, end, text}, in UTF-8") from e
        if p.suffix in (".jsonl", ".json"):
            try:
                rows = json.loads(raw) if p.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x.strip()]
                return cls([(float(r["start"]), float(r["end"]), str(r["text"])) for r in rows])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{p}: expected {'a list of ' if p.suffix == '.json' else 'one per line: '}"
                                 f"{{\"start\": s, \"end\": s, \"text\": ...}} ({type(e).__name__}: {e})") from e
        return cls([x.strip() for x in raw.splitlines()])

    @classmethod
    def of(cls, spec) -> "TextSource":
        """`spec` itself when it already is a `TextSource`, else `TextSource(spec)`."""
        return spec if isinstance(spec, cls) else cls(spec)

    @property
    def pure(self) -> bool:
        """Whether asking for an utterance's text has no side effect and depends on that utterance
        only, so it may be asked ahead (`runtime/speculation.py`): no text, timed segments, or a
        transcriber that says so with `fn.pure = True`; not a list of lines (taken in order)."""
        if self._fn is not None:
            return bool(getattr(self._fn, "pure", False))
        return self._lines is None

    def __call__(self, audio: np.ndarray, start_s: float, end_s: float) -> str | None:
        if self._fn is not None:
            return self._fn(audio, start_s, end_s)
        if self._lines is not None:
            return (self._lines.popleft() or None) if self._lines else None
        if self._segments:
            best = max(self._segments, key=lambda s: min(end_s, s[1]) - max(start_s, s[0]))
            if min(end_s, best[1]) - max(start_s, best[0]) > 0:
                return best[2]
        return None
