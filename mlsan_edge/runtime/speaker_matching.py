"""Who is speaking: the speaker cache's matching policy (face first, voice as the fallback, names verified).

`SpeakerCache` (speakers.py) is the cache: storage, profiles and management (enrol, rename,
merge, forget, export); this module holds the one decision it makes per utterance, `identify`,
as a mixin over the cache's state (its lock, profiles, person keys, `VoiceIndex`, `FaceIndex`
and `SpeakerStore`; all set up by `SpeakerCache.__init__`):

* a face descriptor seen before (distance <= `face_threshold`) is that person; a new face binds to
  a face-less person whose voice matches, else it is a new person; a voice cluster heard with a
  known face is merged into that person; two persons with faces are never merged automatically;
* without a face, the voice decides (`threshold` / `new_threshold`, auto-merge of splinters);
* a voice shorter than `min_voice_s` never creates, moves, binds or merges anyone: without a face
  the event says the speaker is unknown (issue #10);
* a named (enrolled) person is a verification target (`named_persons.py`): their id goes only to
  a voice that verifies against their enrolled (and learned) voices, beats the next named person
  and is matched no better by an unnamed speaker; a voice verified with a high score against the
  enrolled voices is learned.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import numpy as np

from mlsan_edge.runtime.named_persons import Verdict
from mlsan_edge.runtime.person_keys import PersonKeys

log = logging.getLogger("mlsan_edge.runtime.speakers")


class Match(NamedTuple):
    """Result of `SpeakerCache.identify`."""

    speaker_id: int | None  # None: a new voice with update=False, or a voice too short to tell
    similarity: float  # score of the nearest known speaker (scorer units, or cosine without a scorer;
    #                    -inf when the cache is empty)
    is_new: bool
    identified_by: str = "voice"  # which key chose the person: "face", "voice", "both" or "none"
    voice_similarity: float | None = None  # the voice's score against the chosen person (None: not scored)
    face_distance: float | None = None  # Euclidean distance of the face to the chosen person's (None: no face)
    note: str | None = None  # why no one was chosen (e.g. the voice was too short), for Event.degraded


def unit_voice(embedding: np.ndarray, voice_dim: int) -> np.ndarray:
    """`embedding` as a (voice_dim,) float32 unit vector; ValueError when it is the wrong size, zero or not finite."""
    e = np.asarray(embedding, np.float32).reshape(-1)
    if e.shape[0] != voice_dim:
        raise ValueError(f"voice embedding must have {voice_dim} values, got {e.shape[0]}")
    n = float(np.linalg.norm(e))
    if not np.isfinite(n) or n == 0.0:
        raise ValueError("voice embedding is zero or not finite; embed at least ~0.5 s of speech")
    return e / n


class MatchingPolicy:
    """`SpeakerCache.identify` and the rules behind it (mixed into `SpeakerCache`)."""

    def identify(self, embedding: np.ndarray, update: bool = True, now: float | None = None,
                 face: np.ndarray | None = None, voice_s: float | None = None) -> Match:
        """Who is speaking: the face decides when one is given, else the voice.

        Args:
            embedding: (voice_dim,) float32 voice embedding (normalised here).
            update: fold the keys into the chosen person and count the utterance (a new person is
                created); False only looks.
            now: unix time of the utterance (default: now).
            face: (128,) descriptor of the speaking face (`face_identity.py`), or None when no face
                was attributed (or face identity is off).
            voice_s: seconds of speech behind the embedding; below `min_voice_s` the voice is too
                short to tell: it never creates, moves, binds or merges anyone, and without a face
                the speaker is unknown (speaker_id None, identified_by "none").

        Returns:
            A `Match`. With update=False a new voice or face gives speaker_id None.
        """
        e = unit_voice(embedding, self.voice_dim)
        now = time.time() if now is None else now
        short = voice_s is not None and voice_s < self.min_voice_s
        if self.retention_days is not None and now - self._expired_at > 3600.0:  # days-long runs
            self.expire(now)
        with self._lock:
            if face is not None:
                return self._identify_face(e, np.asarray(face, np.float32).reshape(-1), short, update, now)
            if short:
                _, sim = self._index.nearest(e)
                return Match(None, sim, False, "none",
                             note=f"speaker: voice too short to tell ({voice_s:.2f} s < {self.min_voice_s:g} s)")
            return self._identify_voice(e, update, now)

    def _identify_voice(self, e: np.ndarray, update: bool, now: float) -> Match:
        """The voice alone (no face): a verified named person, else the nearest voice cluster."""
        sid, sim = self._index.nearest(e)
        named = self._named.verify(e, self._keys, self._index)
        if named is not None:  # a named person is a verification target, checked before clustering
            nsid = named.speaker_id
            if update:
                here = self._index.score_of(e, nsid)
                self._fold_voice(nsid, e, now, move=here is not None and here >= self.new_threshold)
                self._learn(named, e)
                nsid = self._auto_merge(nsid)
            return Match(nsid, sim, False, "voice", voice_similarity=named.score)
        if sid is not None and sim >= self.new_threshold and not self._refused(sid):
            if update:
                self._fold_voice(sid, e, now, move=sim >= self.threshold)  # grey zone: attribute, do not move
                sid = self._auto_merge(sid)
            return Match(sid, sim, False, "voice", voice_similarity=sim)
        if not update:
            return Match(None, sim, True, "voice")
        new = self._create(e, None, now)
        log.info("new speaker %d (nearest similarity %.3f)", new, sim)
        return Match(self._auto_merge(new), sim, True, "voice")

    def _identify_face(self, e: np.ndarray, f: np.ndarray, short: bool, update: bool, now: float) -> Match:
        """A face was attributed: it is the identity key; the voice binds to it (see the module docstring)."""
        fid, fdist = self._faces.nearest(f)
        vid, vsim = self._index.nearest(e)
        if fid is not None and fdist <= self.face_threshold:  # a face seen before: that person
            vs = None if short else self._index.score_of(e, fid)
            by = "both" if vs is not None and vs >= self.threshold else "face"
            sid = fid
            if update:
                with self._store.transaction():
                    self._keys[fid].add_face(f)
                    self._store.write_identity(fid, self._keys[fid].to_dict())
                self._faces.rebuild(self._keys)
                if short:
                    self._count(fid, now)
                else:
                    self._fold_voice(fid, e, now, move=True)  # a voice seen with this face is theirs
                    # two voice clusters seen with one face are one person: fold the voice-only one in
                    if vid is not None and vid != fid and vsim >= self.threshold and vid not in self._faces \
                            and not (self._store.name(vid) and self._store.name(fid)):
                        self._index.merged(fid, vid, self._profiles[fid].voice_count + self._profiles[vid].voice_count)
                        self.merge(fid, vid, scrub=False)
                        log.info("merged voice-only speaker %d into %d: its voice came with %d's face", vid, fid, fid)
                    sid = self._auto_merge(fid)
            return Match(sid, vsim, False, by, voice_similarity=vs, face_distance=fdist)
        # a face not seen before: the voice may belong to a person who has no face yet (bind)
        bind, score = None, None
        if not short:
            named = self._named.verify(e, self._keys, self._index)
            if named is not None and named.speaker_id not in self._faces:
                bind, score = named.speaker_id, named.score
            elif vid is not None and vsim >= self.threshold and vid not in self._faces and not self._refused(vid):
                bind, score = vid, vsim
        if not update:
            return Match(bind, vsim, bind is None, "voice" if bind is not None else "face", voice_similarity=score)
        if bind is not None:
            with self._store.transaction():
                self._keys.setdefault(bind, PersonKeys()).add_face(f)
                self._store.write_identity(bind, self._keys[bind].to_dict())
            self._faces.rebuild(self._keys)
            self._fold_voice(bind, e, now, move=True)
            log.info("speaker %d now has a face (voice score %.3f)", bind, score)
            return Match(self._auto_merge(bind), vsim, False, "voice", voice_similarity=score)
        # a new person; a voice cluster already bound to another face is split going forward
        new = self._create(None if short else e, f, now)
        log.info("new person %d by face (nearest face %.3f, nearest voice %.3f)", new, fdist, vsim)
        return Match(new, vsim, True, "face", face_distance=None)

    def _refused(self, sid: int) -> bool:
        """A named (enrolled-voice) person is given only to voices that pass verification."""
        k = self._keys.get(sid)
        return bool(self.strict_names and k is not None and k.enrol_count)

    def _learn(self, verdict: Verdict, e: np.ndarray) -> None:
        """Keep a voice verified with a high score against the enrolled voices (`named_persons.py`)."""
        if not self._named.learns(verdict):
            return
        keys = self._keys[verdict.speaker_id]
        keys.add_learned(e)
        with self._store.transaction():
            self._store.write_identity(verdict.speaker_id, keys.to_dict())

    def _fold_voice(self, sid: int, e: np.ndarray, now: float, move: bool) -> None:
        """Count an utterance of `sid`; with `move`, fold its voice into their centroid."""
        with self._store.transaction():
            prof = self._profiles[sid]
            if move:
                prof.update({}, voice=e)
            # no new version: the cached parameters serve this utterance, which they were
            # computed for (from the earlier ones); `update_profile` bumps it
            self._store.write_profile(sid, prof, now, utterances=1, bump=False)
        if move:
            self._index.remember(sid, e, prof.voice_count)
        if not self._index.refresh(sid, prof):  # O(D) for a known speaker, not O(N)
            self._reindex()

    def _count(self, sid: int, now: float) -> None:
        with self._store.transaction():
            self._store.write_profile(sid, self._profiles[sid], now, utterances=1, bump=False)

    def _create(self, e: np.ndarray | None, f: np.ndarray | None, now: float) -> int:
        """A new person from a voice and/or a face."""
        prof = self._new_profile()
        if e is not None:
            prof.update({}, voice=e)
        keys = PersonKeys()
        if f is not None:
            keys.add_face(f)
        with self._store.transaction():
            new = self._store.insert(prof, None, now, utterances=1)
            if keys:
                self._store.write_identity(new, keys.to_dict())
            evicted = self._store.evict(new, self.max_speakers)
        self._profiles[new] = prof
        if keys:
            self._keys[new] = keys
        for v in evicted:
            self._profiles.pop(v, None)
            self._keys.pop(v, None)
        if e is not None:
            self._index.remember(new, e, prof.voice_count)
        self._reindex()
        return new

    def _auto_merge(self, sid: int) -> int:
        """Fold a splinter into `sid` or `sid` into another speaker (see `merge_threshold`);
        returns the id that now holds `sid`'s voices."""
        if not self.auto_merge:
            return sid
        counts = {s: p.voice_count for s, p in self._profiles.items()}
        found = self._index.merge_candidate(sid, counts, self._store.named_ids(), self.merge_threshold,
                                            faced=self._faces.ids.tolist())
        if found is None:
            return sid
        keep, absorb, worst = found
        if self._refused(keep) or self._refused(absorb):  # a name is given by verification only
            return sid
        self._index.merged(keep, absorb, counts[keep] + counts[absorb])  # before: merge() re-indexes
        self.merge(keep, absorb, scrub=False)
        log.info("merged speaker %d into %d: each of its voices scores >= %.2f against it", absorb, keep, worst)
        return keep if sid in (keep, absorb) else sid

    # --- profiles and cached parameters -------------------------------------------------------
