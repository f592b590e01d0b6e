"""The speaker cache's export file: every speaker's name, profile and times as JSON (no cached
parameters, no audio), written 0600 and replaced atomically. `SpeakerCache.export` and
`SpeakerCache.import_` use it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlsan_edge.runtime.speaker_store import SCHEMA_VERSION

EXPORT_FORMAT = "mlsan-speaker-cache"


def write_export(path: str | Path, speakers: list[dict], voice_dim: int) -> None:
    """Write `speakers` (`SpeakerStore.export_rows()`) to `path` (mode 0600, atomic replace)."""
    doc = {"format": EXPORT_FORMAT, "schema_version": SCHEMA_VERSION, "voice_dim": int(voice_dim),
           "speakers": speakers}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def read_export(path: str | Path, voice_dim: int) -> list[dict]:
    """The speakers of an export file: dicts of id, name, profile (a dict), first_seen, last_seen,
    utterances. ValueError when it is not an export of `voice_dim`-d voices."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != EXPORT_FORMAT or int(doc.get("voice_dim", -1)) != int(voice_dim):
        raise ValueError(f"{path} is not a {voice_dim}-d {EXPORT_FORMAT} export "
                         f"(format={doc.get('format')!r}, voice_dim={doc.get('voice_dim')})")
    return doc["speakers"]
