"""Cheap text baselines a neural reward model must beat before it earns its compute.

:class:`BagOfWordsReward` is a linear reward on a response's TF-IDF (word 1-2 grams,
scikit-learn) and its log length, fitted as a Bradley-Terry model: a logistic regression
without intercept of "the first answer is preferred" on the feature difference of the
two answers of a pair, a seeded random half of the pairs flipped.  Its reward for one text is
``w . phi(text)``, so it scores responses exactly as a reward model does and every
pair-level metric applies to it unchanged.  Fitted on the reward model's own training
pairs, it says how much of the preference the words alone carry.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def log_words(texts: Sequence[str]) -> np.ndarray:
    """(N,) ``log(1 + whitespace words)``."""
    return np.log1p(np.array([len(str(t).split()) for t in texts], float))


class BagOfWordsReward:
    """TF-IDF (1-2 grams) + log-length linear reward, fitted on preference pairs."""

    def __init__(self, max_features: int = 100_000, C: float = 1.0, min_df: int = 2, seed: int = 0):
        self.max_features, self.C, self.min_df, self.seed = max_features, C, min_df, seed
        self.vectorizer = None
        self.w = None  # (V + 1,) text coefficients, then the log-length coefficient

    def _features(self, texts: Sequence[str]):
        from scipy import sparse

        return sparse.hstack([self.vectorizer.transform([str(t) for t in texts]),
                              sparse.csr_matrix(log_words(texts)[:, None])]).tocsr()

    def fit(self, chosen: Sequence[str], rejected: Sequence[str],
            weights: Sequence[float] | None = None) -> "BagOfWordsReward":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        if len(chosen) != len(rejected) or len(chosen) < 2:
            raise ValueError(f"bag of words: needs at least 2 pairs (got {len(chosen)} chosen, {len(rejected)} rejected)")
        texts = [str(t) for t in chosen] + [str(t) for t in rejected]
        min_df = self.min_df if len(set(texts)) >= 10 * self.min_df else 1
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, max_features=self.max_features,
                                          sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
        self.vectorizer.fit(texts)
        d = self._features(chosen) - self._features(rejected)  # (N, V+1) chosen minus rejected
        n = d.shape[0]  # orientations: a seeded random half of the pairs flipped (both classes occur)
        sign = np.random.default_rng(self.seed).permutation(np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
        from scipy import sparse

        X = sparse.diags(sign) @ d
        y = (sign > 0).astype(int)
        clf = LogisticRegression(fit_intercept=False, C=self.C, max_iter=2000, solver="liblinear")
        clf.fit(X, y, sample_weight=None if weights is None else np.asarray(weights, float))
        self.w = clf.coef_[0]
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) reward of each text (higher = preferred)."""
        if self.w is None:
            raise RuntimeError("BagOfWordsReward.score before fit")
        return np.asarray(self._features(texts) @ self.w).ravel()

    @property
    def length_coef(self) -> float:
        return float(self.w[-1])
