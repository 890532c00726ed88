"""Configuration of ``ambient data acts`` (:class:`ActsConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from ambient_rlhf.config import at_least, between, check_bounds

# Cue queries: words that people performing the act tend to write.  min_score is a BM25
# score on the candidate corpus (thresholds set once on the AskAcademia score distribution,
# see docs/acts.md); parent_question: the comment must reply to a text with a '?'; depth:
# any | top | nested.  ``answer`` is structural: every top-level reply to a question.
DEFAULT_ACTS: dict[str, dict[str, Any]] = {
    "answer": {"query": "yes no depends usually typically generally experience answer",
               "min_score": 0.0, "parent_question": True, "depth": "top"},
    "explanation": {"query": "because reason why means due explains therefore since", "min_score": 3.0},
    "summary": {"query": "tl dr tldr summary summarize summarise short bottom line", "min_score": 2.5},
    "advice": {"query": "should recommend suggest advice try consider make sure talk advisor", "min_score": 3.5},
    "correction": {"query": "actually not true wrong incorrect misconception correct fact case misleading",
                   "min_score": 3.0},
}


@dataclass
class FeedbackWeights:
    """Role weights and class values of an act's feedback score (``data/acts/feedback.py``)."""

    asker: Annotated[float, at_least(0)] = 3.0
    """Weight of a reply by the thread's author: the strongest signal ("thanks, that solved it")."""
    author: Annotated[float, at_least(0)] = 0.0
    """Weight of a reply by the act's own author (a continuation, not feedback: 0)."""
    other: Annotated[float, at_least(0)] = 1.0
    """Weight of a reply by anyone else."""
    unknown: Annotated[float, at_least(0)] = 0.5
    """Weight of a reply whose author was deleted (might be the asker)."""
    gratitude: float = 1.0
    """Value of a gratitude/acceptance reply."""
    agreement: float = 0.5
    """Value of an agreement reply."""
    disagreement: float = -1.0
    """Value of a disagreement/correction reply."""
    question: float = 0.0
    """Value of a follow-up question."""
    neutral: float = 0.0
    """Value of any other reply."""


@dataclass
class ActsConfig:
    acts: dict[str, Any] = field(default_factory=dict)
    """Acts to find, merged by name into the built-in ones (``DEFAULT_ACTS``: answer,
    explanation, summary, advice, correction; docs/acts.md lists their queries):
    ``{name: {query: cue words, min_score: BM25 threshold, parent_question: bool, depth:
    any|top|nested}}``.  A new name adds an act; a known one changes the keys it gives
    (``acts.summary.min_score=4``); ``only`` keeps a subset."""
    only: list[str] = field(default_factory=list)
    """Keep only these acts (names of ``acts``); [] = all."""
    k1: Annotated[float, at_least(0)] = 1.5
    """BM25 term-frequency saturation."""
    b: Annotated[float, between(0.0, 1.0)] = 0.75
    """BM25 length normalisation (0..1)."""
    max_context_chars: Annotated[int, at_least(0)] = 2000
    """The context column keeps the last this many characters of prompt + parent chain."""
    weights: FeedbackWeights = field(default_factory=FeedbackWeights)
    """Role weights and class values of the feedback score."""
    pairs_per_thread: Annotated[int, at_least(0)] = 5
    """act_pairs.parquet: at most this many (positive, negative) pairs per thread in train
    (largest feedback-score gap first); valid/test keep all.  0 = all."""
    rerank: bool = False
    """Re-rank each act's lexical hits by the cosine of mean-pooled embeddings (the default
    model's, ``rerank_model``) with the query; the act's rerank_score column is then filled."""
    rerank_model: str = "default"
    """Model whose mean-pooled last hidden states embed texts for ``rerank``."""
    rerank_top: Annotated[int, at_least(1)] = 200
    """``rerank``: embed at most this many top lexical hits per act."""
    max_bad_fraction: Annotated[float, at_least(0)] = 0.01
    """Fail when more than this share of comment lines are bad records."""

    def __post_init__(self) -> None:
        from ambient_rlhf import AmbientError
        from ambient_rlhf.data.acts.retrieve import parse_acts

        check_bounds(self)
        names = {a.name for a in parse_acts(self.merged_acts())}
        unknown = [n for n in self.only if n not in names]
        if unknown:
            raise AmbientError(f"config key 'only': unknown acts {unknown}; valid: {sorted(names)}")

    def specs(self):
        """The acts to find, as :class:`~ambient_rlhf.data.acts.retrieve.ActSpec` (``only`` applied)."""
        from ambient_rlhf.data.acts.retrieve import parse_acts

        return [a for a in parse_acts(self.merged_acts()) if not self.only or a.name in self.only]

    def merged_acts(self) -> dict[str, Any]:
        """``DEFAULT_ACTS`` with ``acts`` merged in by name (and key)."""
        out = {k: dict(v) for k, v in DEFAULT_ACTS.items()}
        for name, spec in self.acts.items():
            out[name] = {**out.get(name, {}), **spec} if isinstance(spec, dict) else spec
        return out
