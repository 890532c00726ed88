"""Which training recipe teaches a *linear* text reward something beyond length?

    python scripts/linear_recipes.py --train DATA_DIR [--eval DATA_DIR ...] [--max-pairs N]

A cheap stand-in for the neural reward model (TF-IDF 1-2 grams of the response, fitted as
a Bradley-Terry logistic regression on pair differences, ``eval.baselines``), trained on
``DATA_DIR``'s train split by four recipes:

* ``time_rule``: pairs.parquet (the SHP rule), text + log length;
* ``all``: every candidate pair (``data.covariates.candidate_pairs``), text + log length;
* ``all+cov (text part)``: every candidate pair, text + the covariates of
  ``data.covariates`` (delay, order, length, thread interactions) in the model; the
  reward is the text part;
* ``all+cov (text+length)``: the same model, the reward is the text part plus the
  length covariate's term (exposure removed, length kept).

Each text reward is evaluated on the test split of every ``--eval`` directory (default:
the train directory), on pairs.parquet: accuracy, accuracy where the chosen answer is
the shorter, the beyond-length test of ``rm eval`` and Spearman(reward, words).
Prints one table; measurements go into docs/reward.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import sparse


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ambient_rlhf.data.covariates import COVARIATES, candidate_pairs, response_covariates
    from ambient_rlhf.eval.baselines import log_words
    from ambient_rlhf.eval.reward_eval import beyond_length, log_word_ratio
    from ambient_rlhf.stats import spearman, win_outcomes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", nargs="*", default=None)
    ap.add_argument("--max-pairs", type=int, default=60000, help="subsample all-pairs recipes (seeded)")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    resp = pd.read_parquet(f"{args.train}/responses.parquet")
    tr_resp = resp[resp["split"] == "train"].reset_index(drop=True)
    x_cov = response_covariates(tr_resp, COVARIATES)  # (N, k)
    tr_time = pd.read_parquet(f"{args.train}/pairs.parquet").query("split == 'train'")
    allp = candidate_pairs(tr_resp)
    if len(allp) > args.max_pairs:
        allp = allp.iloc[np.sort(rng.choice(len(allp), args.max_pairs, replace=False))]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=100_000, sublinear_tf=True,
                          token_pattern=r"(?u)\b\w+\b").fit(tr_resp["response"].astype(str))
    mu, sd = x_cov.mean(0), np.where(x_cov.std(0) > 0, x_cov.std(0), 1.0)

    def fit(d):
        sign = rng.permutation(np.where(np.arange(d.shape[0]) % 2 == 0, 1.0, -1.0))
        clf = LogisticRegression(fit_intercept=False, C=args.C, max_iter=3000, solver="liblinear")
        clf.fit(sparse.diags(sign) @ d, (sign > 0).astype(int))
        return clf.coef_[0]

    def text(texts, with_len=True):
        m = vec.transform([str(t) for t in texts])
        return sparse.hstack([m, sparse.csr_matrix(log_words(texts)[:, None])]).tocsr() if with_len else m

    recipes = {}
    t0 = time.time()
    w = fit(text(tr_time["chosen"]) - text(tr_time["rejected"]))
    recipes["time_rule"] = lambda t, w=w: text(t) @ w
    w = fit(text(allp["chosen"]) - text(allp["rejected"]))
    recipes["all"] = lambda t, w=w: text(t) @ w
    zc = (x_cov[allp["chosen_row"].to_numpy()] - mu) / sd
    zr = (x_cov[allp["rejected_row"].to_numpy()] - mu) / sd
    d = sparse.hstack([text(allp["chosen"], False) - text(allp["rejected"], False), sparse.csr_matrix(zc - zr)]).tocsr()
    w = fit(d)
    V = len(vec.vocabulary_)
    recipes["all+cov (text part)"] = lambda t, w=w: text(t, False) @ w[:V]
    j = COVARIATES.index("length")  # the text part plus the length covariate's own term
    recipes["all+cov (text+length)"] = lambda t, w=w: text(t, False) @ w[:V] + w[V + j] * (log_words(t) - mu[j]) / sd[j]
    cov_coef = dict(zip(COVARIATES, np.round(w[V:], 3)))
    print(f"fitted in {time.time() - t0:.0f}s: {len(tr_time)} time-rule pairs, {len(allp)} candidate pairs; "
          f"covariate coefficients per std: {cov_coef}")

    for ev in args.eval or [args.train]:
        p = pd.read_parquet(f"{ev}/pairs.parquet")
        if (p["split"] == "test").any():
            p = p[p["split"] == "test"]
        lc, lr = p["chosen"].str.split().str.len().to_numpy(float), p["rejected"].str.split().str.len().to_numpy(float)
        short = lc < lr
        threads = p["thread_id"].to_numpy()
        print(f"\n{ev}: {len(p)} test pairs, {len(set(threads))} threads, chosen shorter {short.sum()}")
        print(f"  {'recipe':<22}{'acc':>7}{'shorter':>9}{'gain(logloss) [95%]':>30}{'verdict':>10}{'rho(len)':>10}")
        lw = win_outcomes(lc, lr)
        print(f"  {'longer wins':<22}{lw.mean():>7.3f}{lw[short].mean():>9.3f}")
        texts = pd.concat([p["chosen"], p["rejected"]]).unique()
        for name, f in recipes.items():
            sc, sr = np.asarray(f(p["chosen"])).ravel(), np.asarray(f(p["rejected"])).ravel()
            acc = win_outcomes(sc, sr)
            bl = beyond_length(log_word_ratio(p["chosen"], p["rejected"]), sc - sr, threads, n_boot=1000)
            g = bl["gain"]["log_loss"]
            iv = f"{g['value']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]" if g.get("ci_low") is not None \
                else f"{g['value']:+.4f}"
            rho = spearman(np.asarray(f(texts)).ravel(), np.array([len(str(t).split()) for t in texts], float))
            print(f"  {name:<22}{acc.mean():>7.3f}{acc[short].mean():>9.3f}{iv:>30}{bl['verdict']:>10}{rho:>10.2f}")


if __name__ == "__main__":
    main()
