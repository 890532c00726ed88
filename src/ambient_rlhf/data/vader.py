"""VADER's compound score (Hutto & Gilbert 2014), computed the way ``vaderSentiment``
3.3.2 computes it, fast enough to score every reply of a dump at ingest speed.

``vaderSentiment.SentimentIntensityAnalyzer.polarity_scores`` costs about half a
millisecond per reply, mostly in work that does not depend on the scored word: it walks
the text character by character to replace emojis, and for each lexicon word it
lower-cases the whole text up to five times (``_negation_check`` three times,
``_special_idioms_check`` once, ``_but_check`` once), so a reply of n words with m
sentiment words costs O(n * m).  :func:`compound` applies the same rules in the same order
with the same floating-point operations, but

* replaces emojis only when the text holds one (a set test in C first),
* lower-cases each word once, and
* visits only the words in the lexicon (every other word contributes an exact 0, which
  leaves the sum unchanged),

and :func:`compounds` scores a batch (the ingest readers' unit), sharing the lexicon
lookups of words that repeat across the batch.  The lexicon, the emoji table and the rule
constants are ``vaderSentiment``'s own, read from the installed package.  The result
equals ``polarity_scores(text)["compound"]`` exactly (same float); tests check it on every
reply of the real dumps against ``vaderSentiment`` itself.  Only ``compound`` is computed
(the neg/neu/pos proportions are not used by this project).
"""

from __future__ import annotations

import math
import string
from itertools import compress, repeat
from operator import ne
from typing import Iterable

_PUNCT = string.punctuation
_SO_THIS = ("so", "this")


class Vader:
    """The analyser: ``vaderSentiment``'s lexicon and rules, built once (see module doc)."""

    def __init__(self):
        import vaderSentiment.vaderSentiment as V

        sia = V.SentimentIntensityAnalyzer()
        self.lexicon: dict[str, float] = sia.lexicon
        self.emojis: dict[str, str] = sia.emojis
        # polarity_scores tests one character at a time, so only one-character keys match
        self.emoji_chars = frozenset(k for k in sia.emojis if len(k) == 1)
        self.booster: dict[str, float] = V.BOOSTER_DICT
        self.special: dict[str, float] = V.SPECIAL_CASES
        self.negate = frozenset(V.NEGATE)
        # the words of the multi-word special cases and boosters ("kiss of death", "sort of")
        self.idiom_words = frozenset(w for k in (*V.SPECIAL_CASES, *V.BOOSTER_DICT) for w in k.split())
        self.n_scalar: float = V.N_SCALAR
        self.c_incr: float = V.C_INCR

    # ------------------------------------------------------------------ text -> words
    def _replace_emojis(self, text: str) -> str:
        """Each emoji character -> its description, with a space before it unless one is
        there already (``polarity_scores``' loop, run only when an emoji is present)."""
        parts = []
        prev_space = True
        emojis = self.emojis
        for ch in text:
            if ch in emojis:
                if not prev_space:
                    parts.append(" ")
                parts.append(emojis[ch])
                prev_space = False
            else:
                parts.append(ch)
                prev_space = ch == " "
        return "".join(parts)

    # ------------------------------------------------------------------ scoring
    def compound(self, text: str) -> float:
        """VADER compound score of ``text`` in [-1, 1], rounded to 4 decimals as VADER does."""
        if not text.isascii() and not self.emoji_chars.isdisjoint(text):  # no emoji is ASCII
            text = self._replace_emojis(text)
        text = text.strip()
        toks = text.split()
        n = len(toks)
        if n == 0:
            return 0.0
        # a token loses its leading/trailing punctuation unless <= 2 characters would be left
        # (an emoticon such as ":)"); map() keeps the per-token calls in C
        words = list(map(str.strip, toks, repeat(_PUNCT, n)))
        for i in compress(range(n), map(ne, toks, words)):  # only the tokens stripping changed
            if len(words[i]) <= 2:
                words[i] = toks[i]
        lower = list(map(str.lower, words))
        lex = self.lexicon
        found = lex.keys() & lower  # the distinct lexicon words of the text, found in C
        if not found:
            hits = ()
        elif len(found) == 1 and lower.count(next(iter(found))) == 1:
            hits = (lower.index(next(iter(found))),)
        else:
            hits = sorted(i for i, w in enumerate(lower) if w in found)
        sentiments = [0] * n
        if hits:
            cap_diff = 0 < n - sum(map(str.isupper, words)) < n  # some but not all words ALL CAPS
            booster = self.booster
            for i in hits:
                lw = lower[i]
                if lw in booster or (lw == "kind" and i < n - 1 and lower[i + 1] == "of"):
                    continue  # a modifier, not a sentiment word
                sentiments[i] = self._valence(words, lower, i, cap_diff)
            if "but" in lower:
                _but_check(lower.index("but"), sentiments, hits)
        sum_s = float(sum(sentiments))
        amp = _punctuation_emphasis(text)
        if sum_s > 0:
            sum_s += amp
        elif sum_s < 0:
            sum_s -= amp
        c = sum_s / math.sqrt(sum_s * sum_s + 15)
        return round(max(-1.0, min(1.0, c)), 4)

    def compounds(self, texts: Iterable[str]) -> list[float]:
        """:func:`compound` of each text, in order (duplicates scored once)."""
        memo: dict[str, float] = {}
        out = []
        for t in texts:
            v = memo.get(t)
            if v is None:
                v = memo[t] = self.compound(t)
            out.append(v)
        return out

    def _valence(self, words: list[str], lower: list[str], i: int, cap_diff: bool) -> float:
        """``sentiment_valence`` for the lexicon word at ``i``: the same rules in the same
        order (its helpers ``scalar_inc_dec``, ``_negation_check`` and ``_least_check``
        written inline; ``start_i`` there is ``d - 1`` here)."""
        lex, N, booster, negate = self.lexicon, self.n_scalar, self.booster, self.negate
        n = len(lower)
        lw = lower[i]
        valence = lex[lw]
        # "no" before another lexicon word negates that word instead of counting itself
        if lw == "no" and i != n - 1 and lower[i + 1] in lex:
            valence = 0.0
        if (i > 0 and lower[i - 1] == "no") or (i > 1 and lower[i - 2] == "no") \
                or (i > 2 and lower[i - 3] == "no" and lower[i - 1] in ("or", "nor")):
            valence = lex[lw] * N
        if cap_diff and words[i].isupper():
            valence = valence + self.c_incr if valence > 0 else valence - self.c_incr
        for d in (1, 2, 3):  # the three preceding words, nearest first
            if i < d:
                break
            prev = lower[i - d]
            if prev in lex:
                continue
            # scalar_inc_dec: a booster / dampener d words back, damped with distance
            s = 0.0
            if prev in booster:
                s = booster[prev]
                if valence < 0:
                    s *= -1
                if cap_diff and words[i - d].isupper():
                    if valence > 0:
                        s += self.c_incr
                    else:
                        s -= self.c_incr
                if d == 2:
                    s = s * 0.95
                elif d == 3:
                    s = s * 0.9
            valence = valence + s
            # _negation_check
            if d == 1:
                w = prev.lower()  # vaderSentiment's negated() lower-cases once more
                if w in negate or "n't" in w:
                    valence = valence * N
            elif d == 2:
                if lower[i - 2] == "never" and lower[i - 1] in _SO_THIS:
                    valence = valence * 1.25
                elif lower[i - 2] == "without" and lower[i - 1] == "doubt":
                    pass
                else:
                    w = prev.lower()
                    if w in negate or "n't" in w:
                        valence = valence * N
            else:
                if (lower[i - 3] == "never" and lower[i - 2] in _SO_THIS) or lower[i - 1] in _SO_THIS:
                    valence = valence * 1.25
                elif lower[i - 3] == "without" and (lower[i - 2] == "doubt" or lower[i - 1] == "doubt"):
                    pass
                else:
                    w = prev.lower()
                    if w in negate or "n't" in w:
                        valence = valence * N
                valence = self._special_idioms_check(valence, lower, i)
        # _least_check: "least" before the word negates it, unless "at least" / "very least"
        if i > 1 and lower[i - 1] not in lex and lower[i - 1] == "least":
            if lower[i - 2] != "at" and lower[i - 2] != "very":
                valence = valence * N
        elif i > 0 and lower[i - 1] not in lex and lower[i - 1] == "least":
            valence = valence * N
        return valence

    def _special_idioms_check(self, valence: float, lower: list[str], i: int) -> float:
        # only reached with start_i == 2, so i >= 3
        special, n = self.special, len(lower)
        w3, w2, w1, w0 = lower[i - 3], lower[i - 2], lower[i - 1], lower[i]
        vocab = self.idiom_words
        if w0 not in vocab and w1 not in vocab and w2 not in vocab:
            return valence  # every sequence below holds w0, w1 or w2: none can match
        onezero = f"{w1} {w0}"
        twoonezero = f"{w2} {w1} {w0}"
        twoone = f"{w2} {w1}"
        threetwoone = f"{w3} {w2} {w1}"
        threetwo = f"{w3} {w2}"
        for seq in (onezero, twoonezero, twoone, threetwoone, threetwo):
            if seq in special:
                valence = special[seq]
                break
        if n - 1 > i:
            zeroone = f"{w0} {lower[i + 1]}"
            if zeroone in special:
                valence = special[zeroone]
        if n - 1 > i + 1:
            zeroonetwo = f"{w0} {lower[i + 1]} {lower[i + 2]}"
            if zeroonetwo in special:
                valence = special[zeroonetwo]
        for n_gram in (threetwoone, threetwo, twoone):
            if n_gram in self.booster:
                valence = valence + self.booster[n_gram]
        return valence


def _but_check(bi: int, sentiments: list, nonzero: list[int]) -> None:
    """After the first "but", sentiments count 1.5x; before it, 0.5x.  Done as
    ``vaderSentiment`` does it, quirk included: each value in turn is rescaled at the
    first position that holds an equal value, so a repeated value is rescaled at its first
    position once per occurrence.  A zero stays zero and never equals a nonzero value, so
    only the positions that can be nonzero (``nonzero``, ascending) take part."""
    idx = nonzero
    vals = [sentiments[i] for i in idx]
    for k in range(len(vals)):
        v = vals[k]
        if v == 0:
            continue
        j = vals.index(v)  # first equal value among the nonzero positions
        if idx[j] < bi:
            vals[j] = v * 0.5
        elif idx[j] > bi:
            vals[j] = v * 1.5
    for i, v in zip(idx, vals):
        sentiments[i] = v


def _punctuation_emphasis(text: str) -> float:
    ep = min(text.count("!"), 4) * 0.292
    qm_count = text.count("?")
    qm = 0
    if qm_count > 1:
        qm = qm_count * 0.18 if qm_count <= 3 else 0.96
    return ep + qm


_VADER: Vader | None = None


def analyser() -> Vader:
    """The process's :class:`Vader`, built on first use."""
    global _VADER
    if _VADER is None:
        _VADER = Vader()
    return _VADER


def compound(text: str) -> float:
    """VADER compound score of ``text`` (see :class:`Vader`)."""
    return analyser().compound(text)


def compounds(texts: Iterable[str]) -> list[float]:
    """VADER compound scores of ``texts``, in order."""
    return analyser().compounds(texts)
