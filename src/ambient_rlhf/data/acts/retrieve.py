"""Act retrieval: BM25 (the ``bm25s`` package) over one cue query per act.

Each act is a short query of cue words (``summary``: "tl dr tldr summary in short ...").
Every candidate comment is scored against every act's query by BM25 over the corpus of
candidates; a comment performs the act when its score reaches the act's ``min_score``
and meets the act's structural conditions: ``depth`` (``top``: a reply to the submission,
``nested``: a reply to a comment) and ``parent_question`` (the text it replies to asks
something).  ``min_score: 0`` admits every comment meeting the conditions: the default
``answer`` act is every top-level reply to a question, ranked by its cue words.
An optional dense re-ranker (:mod:`ambient_rlhf.models.embed`, wired by
:mod:`ambient_rlhf.acts`) re-orders the lexical hits by embedding similarity to the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ambient_rlhf import AmbientError

TOKEN_PATTERN = r"(?u)\b\w+\b"  # single letters too ("a", "i"); no stop words: cues are often function words


@dataclass(frozen=True)
class ActSpec:
    """One act: its name, cue query, score threshold, and the structural condition."""

    name: str
    query: str
    min_score: float
    parent_question: bool = False
    depth: str = "any"  # "any", "top" (replies to the submission) or "nested" (replies to comments)

    def admits(self, depth: int, parent_text: str) -> bool:
        """The structural conditions: the comment's depth, and a question in its parent."""
        if self.depth == "top" and depth != 0 or self.depth == "nested" and depth == 0:
            return False
        return not self.parent_question or is_question(parent_text)


ACT_KEYS = ("query", "min_score", "parent_question", "depth")
DEPTHS = ("any", "top", "nested")


def parse_acts(acts: dict[str, Any], where: str = "acts") -> list[ActSpec]:
    """``{name: {query: str, min_score: float, parent_question: bool, depth: any|top|nested}}``
    -> specs, checked.

    A bad entry is an error naming ``where.<name>.<key>`` and what it expects."""
    if not isinstance(acts, dict) or not acts:
        raise AmbientError(f"config key '{where}': expected a non-empty mapping act -> {{query, min_score}}")
    out = []
    for name, spec in acts.items():
        key = f"{where}.{name}"
        if not isinstance(spec, dict):
            raise AmbientError(f"config key '{key}': expected a mapping with 'query' and 'min_score', got {spec!r}")
        unknown = sorted(set(spec) - set(ACT_KEYS))
        if unknown:
            raise AmbientError(f"config key '{key}': unknown keys {unknown}; valid: {list(ACT_KEYS)}")
        q = spec.get("query")
        if not isinstance(q, str) or not tokenize([q])[0]:
            raise AmbientError(f"config key '{key}.query': expected a text with at least one word, got {q!r}")
        ms = spec.get("min_score", 0.0)
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
            raise AmbientError(f"config key '{key}.min_score': expected a number >= 0, got {ms!r}")
        pq = spec.get("parent_question", False)
        if not isinstance(pq, bool):
            raise AmbientError(f"config key '{key}.parent_question': expected true/false, got {pq!r}")
        dp = spec.get("depth", "any")
        if dp not in DEPTHS:
            raise AmbientError(f"config key '{key}.depth': expected one of {list(DEPTHS)}, got {dp!r}")
        out.append(ActSpec(str(name), q, float(ms), pq, dp))
    return out


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens (bm25s's tokenizer, no stop words, no stemming)."""
    import bm25s

    return bm25s.tokenize(list(texts), lower=True, token_pattern=TOKEN_PATTERN, stopwords=None,
                          return_ids=False, show_progress=False)


class ActIndex:
    """A BM25 index (``bm25s.BM25``, Lucene variant: idf ln(1 + (N - df + .5)/(df + .5)), tf part
    tf / (tf + k1 (1 - b + b dl/avgdl)); k1=1.5, b=0.75) over candidate texts."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import bm25s

        if not texts:
            raise AmbientError("act retrieval: no candidate comments to index")
        self.n = len(texts)
        self.bm25 = bm25s.BM25(k1=k1, b=b)
        self.bm25.index(tokenize(texts), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every indexed text for ``query``, shape (n,)."""
        q = tokenize([query])[0]
        return np.asarray(self.bm25.get_scores(q), dtype=np.float64)


def is_question(text: str) -> bool:
    """A text asks something when a sentence of it ends with '?'."""
    return "?" in text


def rank(scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    """``ids`` by descending score, ties by id (deterministic)."""
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order]


def precision_at_k(ranked: Sequence[str], positive: set[str], k: int) -> float:
    """Share of the first ``k`` of ``ranked`` that are in ``positive`` (k > len: of all)."""
    top = list(ranked[:k])
    if not top:
        raise ValueError("precision_at_k: nothing ranked")
    return sum(1 for x in top if x in positive) / len(top)
