"""What a vote count says besides the text: covariates of a response, and the candidate
pairs the SHP time rule would drop.

Upvotes reward exposure as well as quality: an answer posted early in a popular thread is
seen by more readers (on r/AskAcademia "the earlier answer wins" is right for 87% of the
pairs that ignore the time rule).  The SHP time rule removes that confound by keeping only
pairs whose preferred answer came *later* -- and with it most of the evidence.  The other
way is to keep every pair and let a model of the non-text covariates explain what exposure
explains (``ambient rm covariates=...``): ``P(A beats B) = sigmoid(r(A) - r(B) + g(x_A) -
g(x_B))``, with ``r`` the text reward and ``g`` linear in the covariates below.

Per response (``response_covariates``), all on a log scale:

* ``delay``: ``log1p(hours from the prompt to the response)``;
* ``order``: ``log1p(arrival index within the thread)`` (0 for the first answer);
* ``length``: ``log1p(words)`` -- with it in ``g``, the length effect on votes has its own
  coefficient and the text reward is not needed to carry it;
* ``delay_x_thread``, ``order_x_thread``: ``delay`` and ``order`` times
  ``log(responses in the thread)``.  Thread-level values (prompt score, thread size) are
  equal for both answers of a pair and cancel in ``g(x_A) - g(x_B)``; they act only
  through such interactions (being late costs more in a busy thread).
"""

from __future__ import annotations

import numpy as np

from ambient_rlhf.data.pairs import PairRule, thread_pairs

COVARIATES = ("delay", "order", "length", "delay_x_thread", "order_x_thread")


def response_covariates(responses, names: tuple[str, ...] | list[str] = COVARIATES) -> np.ndarray:
    """(N, len(names)) covariates of the rows of a ``responses.parquet`` frame (module doc).

    Needs the columns ``thread_id, response, created_utc, prompt_created_utc``."""
    bad = [n for n in names if n not in COVARIATES]
    if bad:
        raise ValueError(f"unknown covariates {bad}; choose from {list(COVARIATES)}")
    df = responses.reset_index(drop=True)
    created = df["created_utc"].to_numpy(float)
    hours = np.maximum(created - df["prompt_created_utc"].to_numpy(float), 0.0) / 3600.0
    delay = np.log1p(hours)
    # arrival index within the thread: rank of created_utc, ties in row order
    order = (df.assign(_t=created, _i=np.arange(len(df)))
             .sort_values(["thread_id", "_t", "_i"], kind="stable")
             .groupby("thread_id", sort=False).cumcount())
    order = np.log1p(order.reindex(df.index).to_numpy(float))
    size = np.log(df.groupby("thread_id")["thread_id"].transform("size").to_numpy(float))
    words = np.log1p(np.array([len(str(t).split()) for t in df["response"]], float))
    cols = {"delay": delay, "order": order, "length": words, "delay_x_thread": delay * size,
            "order_x_thread": order * size}
    return np.column_stack([cols[n] for n in names]) if names else np.zeros((len(df), 0))


def candidate_pairs(responses, min_ratio: float = 2.0, min_score: int = 2, per_thread: int = 0,
                    seed: int = 0):
    """Preference pairs of a ``responses.parquet`` frame **without** the time rule: within a
    thread, A over B when ``score_A >= min_ratio * score_B`` and both scores are
    ``>= min_score`` (``data.pairs.thread_pairs`` with ``time_rule=False``), whenever they
    were posted.  ``per_thread > 0``: a seeded random subset of at most that many pairs per
    thread (0 = all).  Returns a DataFrame in the pairs layout (``schema.PAIR_COLUMNS``)
    plus ``chosen_row`` / ``rejected_row``, the rows' positions in ``responses``."""
    import pandas as pd

    rule = PairRule(min_score=min_score, min_prompt_score=0, min_score_ratio=min_ratio, time_rule=False,
                    max_pairs=0)
    rng = np.random.default_rng(seed)
    out = []
    pos = np.arange(len(responses))
    for tid, g in responses.reset_index(drop=True).assign(_pos=pos).groupby("thread_id", sort=True):
        pairs, _ = thread_pairs(g["score"].to_numpy(float), g["created_utc"].to_numpy(float), None, rule, cap=False)
        if per_thread > 0 and len(pairs) > per_thread:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), per_thread, replace=False))]
        rs = g.to_dict("records")
        for i, j in pairs:
            a, b = rs[i], rs[j]
            out.append({"thread_id": tid, "prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"],
                        "chosen_score": a["score"], "rejected_score": b["score"],
                        "chosen_created_utc": a["created_utc"], "rejected_created_utc": b["created_utc"],
                        "score_ratio": a["score"] / max(b["score"], 1),
                        "seconds_difference": a["created_utc"] - b["created_utc"],
                        "split": a.get("split"), "chosen_row": a["_pos"], "rejected_row": b["_pos"]})
    cols = ["thread_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "chosen_created_utc",
            "rejected_created_utc", "score_ratio", "seconds_difference", "split", "chosen_row", "rejected_row"]
    return pd.DataFrame(out, columns=cols)
