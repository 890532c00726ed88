"""Does the feedback on dialog acts teach a reward that upvotes agree with?

    python scripts/act_reward.py --data DATA_DIR     # after `ambient data acts DATA_DIR`

A cheap stand-in for the neural reward model (as ``scripts/linear_recipes.py``): TF-IDF 1-2
grams of the response plus its log length, fitted as a Bradley-Terry logistic regression on
pair differences, trained on the train split three ways:

* ``act feedback``: act_pairs.parquet (the sibling act whose replies drew gratitude/agreement
  over the one whose replies drew disagreement);
* ``upvotes``: pairs.parquet (the SHP time rule), all of it;
* ``upvotes, same n``: pairs.parquet subsampled (seeded) to as many pairs as act feedback has.

Each is evaluated on the test split's upvote pairs (accuracy, accuracy where the chosen answer
is the shorter, the beyond-length test of ``rm eval``) and on the valid+test act pairs
(accuracy).  Prints one table; the measurement goes into docs/acts.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy import sparse


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ambient_rlhf.eval.baselines import log_words
    from ambient_rlhf.eval.reward_eval import beyond_length, log_word_ratio
    from ambient_rlhf.stats import bootstrap_ci, win_outcomes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    resp = pd.read_parquet(f"{args.data}/responses.parquet")
    up = pd.read_parquet(f"{args.data}/pairs.parquet")
    act = pd.read_parquet(f"{args.data}/act_pairs.parquet")
    up_tr, up_te = up[up["split"] == "train"], up[up["split"] == "test"]
    act_tr, act_ev = act[act["split"] == "train"], act[act["split"] != "train"]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=100_000, sublinear_tf=True,
                          token_pattern=r"(?u)\b\w+\b").fit(resp.loc[resp["split"] == "train", "response"].astype(str))

    def text(texts):
        m = vec.transform([str(t) for t in texts])
        return sparse.hstack([m, sparse.csr_matrix(log_words(texts)[:, None])]).tocsr()

    def fit(p):
        d = text(p["chosen"]) - text(p["rejected"])
        sign = rng.permutation(np.where(np.arange(d.shape[0]) % 2 == 0, 1.0, -1.0))
        clf = LogisticRegression(fit_intercept=False, C=args.C, max_iter=3000, solver="liblinear")
        clf.fit(sparse.diags(sign) @ d, (sign > 0).astype(int))
        return clf.coef_[0]

    same_n = up_tr.iloc[np.sort(rng.choice(len(up_tr), min(len(act_tr), len(up_tr)), replace=False))]
    recipes = {"act feedback": (act_tr, fit(act_tr)), "upvotes": (up_tr, fit(up_tr)),
               "upvotes, same n": (same_n, fit(same_n))}
    lc = up_te["chosen"].str.split().str.len().to_numpy(float)
    lr = up_te["rejected"].str.split().str.len().to_numpy(float)
    short, threads = lc < lr, up_te["thread_id"].to_numpy()
    lw = win_outcomes(lc, lr)
    print(f"{args.data}: {len(act_tr)} act pairs in train, {len(act_ev)} in valid+test; {len(up_tr)} upvote pairs "
          f"in train, {len(up_te)} in test ({len(set(threads))} threads, chosen shorter {int(short.sum())})")
    print(f"{'trained on':<17}{'pairs':>6}{'upvote acc [95%]':>24}{'shorter':>9}{'gain(logloss) [95%]':>30}"
          f"{'verdict':>9}{'act acc':>9}")
    print(f"{'(longer wins)':<17}{'':>6}{lw.mean():>24.3f}{lw[short].mean():>9.3f}")
    for name, (p, w) in recipes.items():
        sc, sr = text(up_te["chosen"]) @ w, text(up_te["rejected"]) @ w
        acc = win_outcomes(sc, sr)
        ci = bootstrap_ci(acc, seed=args.seed, clusters=threads)
        bl = beyond_length(log_word_ratio(up_te["chosen"], up_te["rejected"]), sc - sr, threads, n_boot=1000)
        g = bl["gain"]["log_loss"]
        iv = f"{g['value']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]" if g.get("ci_low") is not None \
            else f"{g['value']:+.4f}"
        aacc = win_outcomes(text(act_ev["chosen"]) @ w, text(act_ev["rejected"]) @ w).mean() if len(act_ev) else float("nan")
        accs = f"{acc.mean():.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
        print(f"{name:<17}{len(p):>6}{accs:>24}{acc[short].mean():>9.3f}{iv:>30}{bl['verdict']:>9}{aacc:>9.3f}")


if __name__ == "__main__":
    main()
