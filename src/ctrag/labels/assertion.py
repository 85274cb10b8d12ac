"""Sentences, clauses and the assertion status (present / absent / uncertain) of a finding mention.

Why rules here: CT-RATE reports state absent findings as often as present ones and in a small set of fixed
phrasings ("Pleural effusion-thickening was not detected.", "No enlarged lymph nodes ... were detected.",
"Heart contour, size are normal."). Whether a finding *sentence* is asserted is most of the signal, and with 800
training reports a learned model cannot discover negation scope on its own. The rules only decide the status of
a mention; how much each status counts towards a label is learned (:mod:`ctrag.labels.extractor`).

Scope, NegEx-style but deliberately coarse: a cue negates every mention of its *clause* (a sentence cut at
``;``, "but", "however", "whereas", "although", "except", "apart from", ", and" ...). A second, finer scope also
cuts at commas, because CT-RATE lists ("cardiomegaly, minimal pericardial effusion, ...") are often comma-joined;
the model sees both and learns which to trust per label. Pseudo-negations ("no new", "no significant change")
are removed before the cue search, since "no significant change in the nodule" asserts the nodule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Status = Literal["present", "absent", "uncertain"]

# Sentence ends need whitespace after the stop, so decimals ("3.3 cm") never split; CT-RATE joins findings and
# impression (and impression items) with a double quote.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+|\"+")
_CLAUSE_SPLIT = re.compile(
    r";|,\s*(?:and|but|while|whereas)\b|\band(?=\s+(?:no|there is no|there are no)\b)|"
    r"\b(?:but|however|whereas|although|though|except|apart from|other than|besides|in addition|additionally)\b"
)
_COMMA_SPLIT = re.compile(r",")

#: Cue words/phrases after which (or before which: "... was not detected") a clause states absence or normality.
NEGATION_CUES: tuple[str, ...] = (
    "no", "not", "none", "without", "absent", "absence", "negative", "free of", "nor", "neither", "normal",
    "unremarkable", "natural", "never", "ruled out", "excluded", "did not", "does not", "cannot be seen",
    "within normal limits", "disappeared", "resolved", "regressed completely", "completely regressed",
)  # fmt: skip
#: Phrases that contain a negation word but assert the finding ("no new nodule", "no significant change in ...").
PSEUDO_NEGATIONS: tuple[str, ...] = (
    "no new", "no significant change", "no change", "not changed", "no significant difference", "no difference",
    "no increase", "no significant increase", "no progression", "no regression", "not significantly changed",
    "no significant regression", "not only", "no longer", "not regressed", "not progressed",
    "cannot be excluded", "could not be excluded", "can not be excluded", "not be excluded", "not excluded",
    "not ruled out", "cannot be ruled out", "could not be ruled out", "not be ruled out",
    "not evaluated", "could not be evaluated", "cannot be evaluated", "not be evaluated", "not optimal",
    "not given", "no contrast", "without contrast", "not administered",
    "not observed in the previous", "not detected in the previous", "not seen in the previous",
    "not present in the previous", "not visible in the previous", "not observed in previous",
    "not show any significant change", "not show a significant change", "not show significant change",
    "not show any change",
)  # fmt: skip
#: Hedges: the report is unsure the finding is there.
UNCERTAINTY_CUES: tuple[str, ...] = (
    "?", "possible", "possibly", "probable", "probably", "suspicious", "suspected", "suspect", "may", "might",
    "likely", "questionable", "doubtful", "differential", "cannot be excluded", "could not be excluded",
    "not be excluded", "not excluded", "not ruled out", "cannot be ruled out", "could not be ruled out",
    "not be ruled out", "rule out", "to be ruled out", "versus", "vs", "cannot be distinguished", "or",
)  # fmt: skip


def _cue_regex(cues: tuple[str, ...]) -> re.Pattern[str]:
    words = sorted((c for c in cues if c != "?"), key=len, reverse=True)
    body = r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words) + r")\b"
    return re.compile(body + (r"|\?" if "?" in cues else ""))


_NEG_RE = _cue_regex(NEGATION_CUES)
_PSEUDO_RE = _cue_regex(PSEUDO_NEGATIONS)
# "or" alone is too common to be a hedge; it counts only as "A or B" right after a finding word ("atelectasis or
# consolidation?"), which the "?" already covers, so it is removed from the hedge regex.
_UNC_RE = _cue_regex(tuple(c for c in UNCERTAINTY_CUES if c != "or"))


def sentences(text: str) -> list[str]:
    """Lower-cased, stripped sentences of a report (empty pieces dropped)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.lower()) if s and s.strip()]


def clauses(sentence: str) -> list[str]:
    """Negation-scope clauses of one (lower-cased) sentence."""
    return [c.strip() for c in _CLAUSE_SPLIT.split(sentence) if c and c.strip()]


def comma_parts(clause: str) -> list[str]:
    """The finer scope: a clause cut at every comma."""
    return [c.strip() for c in _COMMA_SPLIT.split(clause) if c and c.strip()]


def is_negated(span: str) -> bool:
    """True if ``span`` holds a negation cue once pseudo-negations are removed."""
    return _NEG_RE.search(_PSEUDO_RE.sub(" ", span)) is not None


def is_uncertain(span: str) -> bool:
    return _UNC_RE.search(span) is not None


def status_of(span: str) -> Status:
    """Assertion status of any finding mentioned in ``span`` (negation wins over hedging)."""
    if is_negated(span):
        return "absent"
    if is_uncertain(span):
        return "uncertain"
    return "present"


@dataclass(frozen=True)
class Scopes:
    """One report cut three ways: sentences, clauses, comma parts (each a flat list of lower-cased spans)."""

    sentences: tuple[str, ...]
    clauses: tuple[str, ...]
    parts: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> Scopes:
        sents = sentences(text)
        cls_ = [c for s in sents for c in clauses(s)]
        parts = [p for c in cls_ for p in comma_parts(c)]
        return cls(tuple(sents), tuple(cls_), tuple(parts))
