"""The speaker cache's export file: every speaker's name, profile, identity keys (face descriptor
centroid, enrolled and learned voices) and times as JSON (no cached parameters, no audio or
images), written 0600 and replaced atomically: biometric data, kept as safe as the cache. `SpeakerCache.export` and
`SpeakerCache.import_` use it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

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
    utterances. ValueError naming the file and the first bad field when it is not a valid export of
    `voice_dim`-d voices (checked whole before anything is imported). JSON only: no pickle."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not a {EXPORT_FORMAT} export: not UTF-8 JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or doc.get("voice_dim") != int(voice_dim):
        got = (doc.get("format"), doc.get("voice_dim")) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path} is not a {voice_dim}-d {EXPORT_FORMAT} export (format, voice_dim = {got}); "
                         "expected a file written by `mlsan-edge speakers export`")
    speakers = doc.get("speakers")
    if not isinstance(speakers, list):
        raise ValueError(f"{path}: 'speakers' must be a list")
    for i, sp in enumerate(speakers):
        _check_speaker(path, i, sp, int(voice_dim))
    return speakers


def _check_speaker(path: Path, i: int, sp, voice_dim: int) -> None:
    from mlsan_edge.profile import SpeakerProfile

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: speaker #{i}: {what}; expected a file written by `mlsan-edge speakers export`")

    if not isinstance(sp, dict):
        raise bad("not an object")
    if sp.get("name") is not None and (not isinstance(sp["name"], str) or not sp["name"].strip()):
        raise bad(f"name {sp['name']!r} is not a non-empty string")
    for k in ("first_seen", "last_seen"):
        if isinstance(sp.get(k), bool) or not isinstance(sp.get(k), (int, float)) or not math.isfinite(sp[k]):
            raise bad(f"{k} {sp.get(k)!r} is not a finite number")
    if isinstance(sp.get("utterances"), bool) or not isinstance(sp.get("utterances"), int) or sp["utterances"] < 0:
        raise bad(f"utterances {sp.get('utterances')!r} is not a count")
    try:
        prof = SpeakerProfile.from_dict(sp["profile"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise bad(f"profile is malformed ({type(e).__name__}: {e})") from e
    if prof.voice_dim != voice_dim or prof.voice_sum.shape != (voice_dim,) or prof.voice_count < 0:
        raise bad(f"profile voice is {prof.voice_sum.shape} x {prof.voice_count}, not ({voice_dim},)")
    arrays = [prof.voice_sum] + [a for st in prof.stats.values() for a in (st.mean, st.m2)]
    if prof.latent_sum is not None:
        arrays.append(prof.latent_sum)
    for m, st in prof.stats.items():
        if st.mean.shape != (st.dim,) or st.m2.shape != (st.dim,) or st.count < 0:
            raise bad(f"profile statistics of {m!r} do not match their dimension {st.dim}")
    if not all(np.isfinite(a).all() for a in arrays):
        raise bad("profile holds NaN or inf")
    if sp.get("identity") is not None:
        _check_identity(sp["identity"], voice_dim, bad)


def _check_identity(ident, voice_dim: int, bad) -> None:
    """An identity dict (person_keys.py): {"face_sum": [128], "face_count": n, "enrol_sum": [voice_dim],
    "enrol_count": n, "enrol_voices": [[voice_dim], ...], "learned_voices": [[voice_dim], ...]}."""
    from mlsan_edge.runtime.face_identity import FACE_DIM

    if not isinstance(ident, dict):
        raise bad("identity is not an object")
    for key, dim in (("face", FACE_DIM), ("enrol", voice_dim)):
        n, v = ident.get(f"{key}_count", 0), ident.get(f"{key}_sum")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise bad(f"identity {key}_count {n!r} is not a count")
        if n:
            try:
                a = np.asarray(v, np.float64)
            except (TypeError, ValueError) as e:
                raise bad(f"identity {key}_sum is not a list of numbers ({e})") from e
            if a.shape != (dim,) or not np.isfinite(a).all():
                raise bad(f"identity {key}_sum must be {dim} finite numbers")
    for key in ("enrol_voices", "learned_voices"):
        v = ident.get(key, [])
        if not isinstance(v, list):
            raise bad(f"identity {key} is not a list")
        if not v:
            continue
        try:
            a = np.asarray(v, np.float64)
        except (TypeError, ValueError) as e:
            raise bad(f"identity {key} is not a list of voices ({e})") from e
        if a.ndim != 2 or a.shape[1] != voice_dim or not np.isfinite(a).all() \
                or not (np.linalg.norm(a, axis=1) > 0).all():
            raise bad(f"identity {key} must be non-zero voices of {voice_dim} finite numbers each")
    if ident.get("enrol_voices") and not ident.get("enrol_count"):
        raise bad("identity enrol_voices without enrol_count")
