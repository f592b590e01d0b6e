"""Named (enrolled) persons as verification targets: who, if anyone, a voice may be named.

Naming the wrong person is worse than naming no one, so a voice is given an enrolled person's name
only when all of these hold (`NamedPersons.verify`):

1. **Enrolled voices, one by one.** The voice is scored (the `VoiceIndex`'s scale: the bundle's
   `VoiceScorer`, else cosine) against the centroid of the person's enrolment voices *and* each
   enrolment voice (`PersonKeys.enrol_voices`); the person's score is the best of these. A
   person's voices differ more between moods than between sentences, so the nearest enrolment
   clip is a better witness than their average.
2. **Learned voices.** Once a voice verifies with a score of at least `learn_threshold` against
   the *enrolled* voices, it is kept as a learned voice of the person (`PersonKeys.add_learned`,
   stored sealed like the other keys) and later voices are scored against it too. Two guards
   against drift: a voice is learned only from its score against the enrolled voices (never from
   a learned one, so one mistake cannot grow a chain), and a learned voice counts only for a
   voice that still scores at least `learned_floor` against the enrolled ones.
3. **Threshold and margin.** The best person scores at least `named_threshold` and beats the next
   named person by `named_margin`.
4. **No better unnamed match.** No unnamed speaker heard here (a voice cluster without enrolled
   voices) scores as high as the named person: a stranger who resembles an enrolled person is
   refused the name once their own cluster exists.

`benchmarks/enrol_named.py` measures it (RAVDESS actors 17-19 enrolled from four calm clips,
actor 20 a stranger; the threshold calibrated on training actors 1-16), and the ceiling of this
kind of verification with the voice scorer (every earlier voice labelled correctly).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from mlsan_edge.runtime.person_keys import PersonKeys
from mlsan_edge.runtime.voice_index import VoiceIndex

# With a VoiceScorer (AS-norm units). `benchmarks/enrol_named.py --calibrate` sweeps the threshold on
# RAVDESS training actors 1-16 (results/enrol_named.json "calibration": the highest recall whose
# stranger-naming rate per utterance is at most 2 %, with learning and the unnamed-match check on).
DEFAULT_NAMED_THRESHOLD = 3.0
NAMED_MARGIN = 0.5
# A verified voice scoring this against the enrolled voices is learned (same benchmark: 3.5-5 give
# the same recall at the calibrated threshold; 4 named no stranger twice in any calibration trial).
DEFAULT_LEARN_THRESHOLD = 4.0
LEARNED_FLOOR = 0.0  # a learned voice counts only for a voice scoring at least this against the enrolled ones
# Without a scorer (cosine): unmeasured guesses, so nothing is learned by default.
DEFAULT_NAMED_COSINE = 0.8
NAMED_MARGIN_COSINE = 0.05
LEARNED_FLOOR_COSINE = 0.6


class Verdict(NamedTuple):
    """The named person a voice verified against."""

    speaker_id: int
    score: float  # the person's score (enrolled and, past the floor, learned voices)
    enrol_score: float  # the score against the enrolled voices alone (decides learning)


class NamedPersons:
    """The verification rule for enrolled persons (see the module docstring); stateless apart
    from its settings: the persons are the cache's `PersonKeys`, the scale its `VoiceIndex`.

    Args:
        scorer: whether the cache has a `VoiceScorer` (picks the defaults' units).
        named_threshold, named_margin: rule 3 (defaults by units, above).
        learn_threshold: rule 2; None: `DEFAULT_LEARN_THRESHOLD` with a scorer, no learning without
            one; float("inf") turns learning off.
        compete: rule 4 (on by default).
    """

    def __init__(self, scorer: bool, named_threshold: float | None = None, named_margin: float | None = None,
                 learn_threshold: float | None = None, compete: bool = True) -> None:
        self.threshold = float(named_threshold if named_threshold is not None else
                               (DEFAULT_NAMED_THRESHOLD if scorer else DEFAULT_NAMED_COSINE))
        self.margin = float(named_margin if named_margin is not None else
                            (NAMED_MARGIN if scorer else NAMED_MARGIN_COSINE))
        if learn_threshold is None:
            learn_threshold = DEFAULT_LEARN_THRESHOLD if scorer else float("inf")
        self.learn_threshold = float(learn_threshold)
        self.learned_floor = LEARNED_FLOOR if scorer else LEARNED_FLOOR_COSINE
        self.compete = bool(compete)

    def scores(self, e: np.ndarray, keys: Mapping[int, PersonKeys],
               index: VoiceIndex) -> dict[int, tuple[float, float]]:
        """{person id: (score, score against the enrolled voices)} of a unit voice, for every
        enrolled person."""
        named = [(sid, k) for sid, k in keys.items() if k.enrol_count]
        if not named:
            return {}
        rows, owner, learned = [], [], []
        for i, (_, k) in enumerate(named):
            for v, is_learned in [(k.enrolled_voice(), False)] + [(v, False) for v in k.enrol_voices] \
                    + [(v, True) for v in k.learned_voices]:
                rows.append(v)
                owner.append(i)
                learned.append(is_learned)
        key = ("named", tuple((sid, k.version, k.enrol_count) for sid, k in named))
        s = index.scores_against(e, np.stack(rows), key=key)
        owner, learned = np.asarray(owner), np.asarray(learned)
        out = {}
        for i, (sid, _) in enumerate(named):
            enrol = float(s[(owner == i) & ~learned].max())
            lrn = s[(owner == i) & learned]
            best = max(enrol, float(lrn.max())) if lrn.size and enrol >= self.learned_floor else enrol
            out[sid] = (best, enrol)
        return out

    def verify(self, e: np.ndarray, keys: Mapping[int, PersonKeys], index: VoiceIndex) -> Verdict | None:
        """The enrolled person this unit voice may be named (rules 1-4), or None."""
        scores = self.scores(e, keys, index)
        if not scores:
            return None
        order = sorted(scores, key=lambda sid: scores[sid][0], reverse=True)
        best, enrol = scores[order[0]]
        second = scores[order[1]][0] if len(order) > 1 else float("-inf")
        if best < self.threshold or best - second < self.margin:
            return None
        if self.compete:
            _, unnamed = index.nearest(e, exclude=set(scores))
            if unnamed >= best:
                return None
        return Verdict(order[0], best, enrol)

    def learns(self, verdict: Verdict) -> bool:
        """Whether the verified voice is kept as a learned voice of the person (rule 2)."""
        return verdict.enrol_score >= self.learn_threshold


__all__ = ["NamedPersons", "Verdict", "DEFAULT_NAMED_THRESHOLD", "DEFAULT_LEARN_THRESHOLD", "NAMED_MARGIN",
           "DEFAULT_NAMED_COSINE", "NAMED_MARGIN_COSINE"]
