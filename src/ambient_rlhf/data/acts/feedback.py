"""Follow-up feedback: who replied to an act, and what the reply says about it.

Each direct reply to an act is given a *role* -- ``asker`` (the thread's author),
``author`` (the act's own author, continuing), ``other``, or ``unknown`` (deleted author) --
and a *class* by ordered rules over its opening text (:func:`classify`):

1. ``gratitude``  thanks / appreciation / "that helps", "makes sense", "I'll try that";
2. ``disagreement``  correction or dissent: "not true", "actually, ...", "I disagree", "wrong";
3. ``agreement``  "I agree", "exactly", "this", "same", "yes" at the start, "+1";
4. ``question``  a follow-up question (a '?' in the reply);
5. ``neutral``  anything else.

The first rule that matches wins (so "thanks, but is that true?" is gratitude).  The act's
feedback is the class of its *strongest* reply -- the one whose role weighs most
(``asker`` 3, ``other`` 1, ``author`` 0 and ``unknown`` 0.5 by default), earliest on
ties -- and its feedback score the role-weighted mean of the class values (gratitude +1,
agreement +0.5, disagreement -1, question and neutral 0).  The asker's "thanks, that
solved it" therefore outweighs three strangers' remarks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

CLASSES = ("gratitude", "agreement", "disagreement", "question", "neutral")
ROLES = ("asker", "author", "other", "unknown")

OPENING_CHARS = 400  # the rules read the reply's opening: the reaction comes first

_GRATITUDE = re.compile(
    r"\b(thanks?|thank you|thx|ty|tysm|cheers|(much )?appreciated?|grateful|"
    r"(this|that|it|which) (really )?(helps?|helped)|very helpful|so helpful|super helpful|"
    r"(this|that|it) makes (a lot of |so much )?sense|good (advice|point|idea|to know)|great (advice|answer|point|idea)|"
    r"i'?ll (try|do) (that|this|it)|will do|solved|that'?s reassuring|you'?re right|fair enough)\b", re.I)
_DISAGREEMENT = re.compile(
    r"(^\s*(no|nope|nah|not really|not true|wrong|incorrect|false)\b|"
    r"\b(not (entirely |quite |necessarily |always )?(true|correct|accurate|right)|that'?s (just )?(wrong|incorrect|false|not how)|"
    r"is (wrong|incorrect|misleading|false)|i (strongly |respectfully )?disagree|disagree|"
    r"not the case|isn'?t the case|isn'?t true|misleading|you'?re wrong|actually,? (no|it|that|you|this|the|in)|"
    r"that'?s not|this is not true|bad advice|terrible advice|horrible advice)\b)", re.I)
_AGREEMENT = re.compile(
    r"(^\s*(yes|yep|yeah|yup|exactly|absolutely|definitely|agreed|agree|this|same|so true|true|"
    r"100\s?%|\+1|seconded|seconding|totally|precisely|right)\b|\b(i (completely |totally |fully |strongly )?agree|"
    r"couldn'?t agree more|well said|so much this|same here|same experience|came here to say)\b)", re.I)


def classify(text: str) -> str:
    """The class of one reply (the ordered rules of the module docstring)."""
    t = " ".join(text[:OPENING_CHARS].split())
    if _GRATITUDE.search(t):
        return "gratitude"
    if _DISAGREEMENT.search(t):
        return "disagreement"
    if _AGREEMENT.search(t):
        return "agreement"
    if "?" in t:
        return "question"
    return "neutral"


def role(reply_author: str | None, asker: str | None, act_author: str | None) -> str:
    """``asker``, ``author``, ``other`` or ``unknown`` (a deleted author is never matched)."""
    if reply_author is None:
        return "unknown"
    if act_author is not None and reply_author == act_author:
        return "author"  # checked first: an asker's reply to their own comment is not feedback
    if asker is not None and reply_author == asker:
        return "asker"
    return "other"


@dataclass(frozen=True)
class Weights:
    """Role weights and class values of the feedback score."""

    asker: float = 3.0
    author: float = 0.0
    other: float = 1.0
    unknown: float = 0.5
    gratitude: float = 1.0
    agreement: float = 0.5
    disagreement: float = -1.0
    question: float = 0.0
    neutral: float = 0.0

    def role_weight(self, r: str) -> float:
        return getattr(self, r)

    def class_value(self, c: str) -> float:
        return getattr(self, c)


@dataclass
class Reply:
    """One direct reply to an act."""

    id: str
    role: str
    label: str
    created_utc: float
    text: str


def summarize(replies: Sequence[Reply], w: Weights) -> tuple[str | None, float | None, str | None, Reply | None]:
    """``(feedback, score, role, strongest reply)`` of an act's direct replies.

    ``feedback`` is the class of the reply whose role weighs most (earliest on ties) among
    those with a positive weight; ``score`` the weighted mean of class values over them.
    Without such a reply: ``(None, None, None, None)``."""
    weighted = [r for r in replies if w.role_weight(r.role) > 0]
    if not weighted:
        return None, None, None, None
    best = min(weighted, key=lambda r: (-w.role_weight(r.role), r.created_utc, r.id))
    total = sum(w.role_weight(r.role) for r in weighted)
    score = sum(w.role_weight(r.role) * w.class_value(r.label) for r in weighted) / total
    return best.label, score, best.role, best
