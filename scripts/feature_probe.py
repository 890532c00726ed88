"""Which frozen features of the backbone carry preference information beyond length?

    python scripts/feature_probe.py extract --train AA_DATA --eval AA_DATA BEER_DATA \
        --train-texts 9000 --out probe.npz            # SmolLM2 states, ~15 min on 2 cores
    python scripts/feature_probe.py fit probe.npz --train AA_DATA --eval AA_DATA BEER_DATA \
        --sets mean8,mean12,mean8+mean12,last12,tfidf

``extract``: the train responses of a seeded subset of whole train threads (up to
``--train-texts``) and every text of the test pairs of each ``--eval`` directory,
rendered as the reward model renders them (``RewardInputs``, 64 + 64 tokens by default),
through the first ``max(--layers)`` layers of the model; for each layer ``l`` it keeps
``mean<l>`` (the mean of the response tokens' states) and ``last<l>`` (the last token's).
The last kept layer's states are taken after the final norm (as ``backbone_layers``
reads them), the others before it.

``fit``: for each feature set (``tfidf`` = TF-IDF 1-2 grams; ``a+b`` concatenates), a
Bradley-Terry logistic regression on pair differences, features standardised, L2
strength chosen by 5-fold cross-validation over threads, by two recipes: the time-rule
pairs with a log-length term, and every candidate pair with the exposure covariates of
``data.covariates``.  Each text reward -- its text part, the text part decorrelated from
log length on the train responses, and text plus its length term -- is evaluated on the
test pairs like ``rm eval``: accuracy, accuracy where the chosen answer is shorter, the
cross-validated beyond-length log-loss gain with its thread-bootstrap interval, and
Spearman with length.  Numbers go to docs/reward.md ("Mean-pooled features").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd


def _test_pairs(d: str) -> pd.DataFrame:
    p = pd.read_parquet(f"{d}/pairs.parquet")
    return p[p["split"] == "test"] if (p["split"] == "test").any() else p


def extract(a) -> None:
    import torch

    from ambient_rlhf.logging import progress
    from ambient_rlhf.models.bodies import keep_first_layers
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer, resolve_model
    from ambient_rlhf.models.reward_inputs import RewardInputs, RewardInputSpec

    layers = sorted(int(x) for x in a.layers.split(","))
    r = pd.read_parquet(f"{a.train}/responses.parquet")
    tr = r[r["split"] == "train"]
    rng = np.random.default_rng(a.seed)
    sizes = tr.groupby("thread_id").size()
    keep, n = [], 0
    for t in rng.permutation(tr["thread_id"].unique()):  # whole threads, in a seeded order
        if n + sizes[t] > a.train_texts:
            continue
        keep.append(t)
        n += int(sizes[t])
        if n >= a.train_texts - 5:
            break
    trs = tr[tr["thread_id"].isin(set(keep))]
    items = list(zip(trs["prompt"], trs["response"]))
    for d in a.eval:
        p = _test_pairs(d)
        for q, c, j in zip(p["prompt"], p["chosen"], p["rejected"]):
            items += [(q, c), (q, j)]
    items = list(dict.fromkeys(items))
    print(f"{len(keep)} train threads, {len(trs)} train texts, {len(items)} texts in all", flush=True)

    path = resolve_model(a.model)
    tok = load_tokenizer(path, padding_side="right")
    lm = load_causal_lm(path)
    keep_first_layers(lm, max(layers))
    lm.eval()
    ri = RewardInputs(tok, RewardInputSpec(max_prompt_tokens=a.max_prompt_tokens, max_response_tokens=a.max_response_tokens))
    encs = [ri.encode(q, x) for q, x in items]
    order = np.argsort([len(e.input_ids) for e in encs], kind="stable")
    d = lm.config.hidden_size
    feats = {f"{k}{l}": np.zeros((len(items), d), np.float32) for l in layers for k in ("mean", "last")}
    t0 = time.time()
    bar = progress(total=len(items), desc="features", unit="text")
    with torch.no_grad():
        for s in range(0, len(order), a.batch_size):
            idx = order[s:s + a.batch_size]
            L = max(len(encs[i].input_ids) for i in idx)
            ids = torch.full((len(idx), L), tok.pad_token_id)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, :len(encs[i].input_ids)] = torch.tensor(encs[i].input_ids)
                mask[j, :len(encs[i].input_ids)] = 1
            hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            for j, i in enumerate(idx):
                n_, p0 = len(encs[i].input_ids), encs[i].prompt_len
                for l in layers:
                    feats[f"mean{l}"][i] = hs[l][j, p0:n_].mean(0).numpy()
                    feats[f"last{l}"][i] = hs[l][j, n_ - 1].numpy()
            bar.update(len(idx))
    bar.close()
    print(f"features: {time.time() - t0:.0f} s", flush=True)
    np.savez(a.out, keys=np.array([json.dumps(k) for k in items]), **feats)
    with open(a.out + ".json", "w") as fh:
        json.dump({"train": a.train, "train_threads": [str(t) for t in keep], "layers": layers, "model": a.model,
                   "max_prompt_tokens": a.max_prompt_tokens, "max_response_tokens": a.max_response_tokens}, fh)


def fit(a) -> None:
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ambient_rlhf.data.covariates import COVARIATES, candidate_pairs, response_covariates
    from ambient_rlhf.eval.baselines import log_words
    from ambient_rlhf.eval.reward_eval import beyond_length, log_word_ratio
    from ambient_rlhf.stats import spearman, win_outcomes

    fz = np.load(a.features)
    kidx = {tuple(json.loads(k)): i for i, k in enumerate(fz["keys"])}
    with open(a.features + ".json") as fh:
        meta = json.load(fh)
    r = pd.read_parquet(f"{a.train}/responses.parquet")
    threads = list(meta["train_threads"])
    if a.thread_frac < 1.0:  # how much does the result depend on which threads were sampled?
        threads = list(np.random.default_rng(a.thread_seed).permutation(threads)[:int(a.thread_frac * len(threads))])
    tr = r[(r["split"] == "train") & r["thread_id"].isin(set(threads))].reset_index(drop=True)
    xc = response_covariates(tr, COVARIATES)
    mu, sd = xc.mean(0), np.where(xc.std(0) > 0, xc.std(0), 1.0)
    allp = candidate_pairs(tr)
    tp = pd.read_parquet(f"{a.train}/pairs.parquet")
    tp = tp[(tp["split"] == "train") & tp["thread_id"].isin(set(threads))]
    print(f"{len(tr)} train texts, {len(tp)} time-rule pairs, {len(allp)} candidate pairs")
    rng = np.random.default_rng(a.seed)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=100_000, sublinear_tf=True,
                          token_pattern=r"(?u)\b\w+\b").fit(r[r["split"] == "train"]["response"].astype(str))

    def featfn(name):
        if name == "tfidf":
            return lambda qs, xs: vec.transform([str(x) for x in xs])
        parts = name.split("+")
        if len(parts) > 1:
            fs = [featfn(p) for p in parts]
            return lambda qs, xs: sparse.hstack([sparse.csr_matrix(f(qs, xs)) for f in fs]).tocsr()
        M = fz[name]
        Z = (M - M.mean(0)) / (M.std(0) + 1e-6) / np.sqrt(M.shape[1] / 100)
        return lambda qs, xs: Z[[kidx[(q, x)] for q, x in zip(qs, xs)]]

    def bt(D, groups):
        """L2 logistic regression on pair differences (random signs), C by grouped 5-fold CV."""
        n = D.shape[0]
        sign = rng.permutation(np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
        X, y = sparse.diags(sign) @ sparse.csr_matrix(D), (sign > 0).astype(int)
        fold_of = {g: i % 5 for i, g in enumerate(rng.permutation(np.unique(groups)))}
        f = np.array([fold_of[g] for g in groups])
        best = None
        for C in (0.0003, 0.001, 0.003, 0.01, 0.03, 0.3):
            ll = 0.0
            for k in range(5):
                m = LogisticRegression(fit_intercept=False, C=C, max_iter=2000, solver="liblinear").fit(X[f != k], y[f != k])
                p = m.predict_proba(X[f == k])[:, 1].clip(1e-6, 1 - 1e-6)
                ll -= (y[f == k] * np.log(p) + (1 - y[f == k]) * np.log(1 - p)).sum()
            if best is None or ll < best[0]:
                best = (ll, C)
        m = LogisticRegression(fit_intercept=False, C=best[1], max_iter=3000, solver="liblinear").fit(X, y)
        return m.coef_[0], best[1]

    def evaluate(name, fn):
        cells = []
        for d in a.eval:
            p = _test_pairs(d)
            sc = np.asarray(fn(p["prompt"], p["chosen"])).ravel()
            sr = np.asarray(fn(p["prompt"], p["rejected"])).ravel()
            acc = win_outcomes(sc, sr)
            short = p["chosen"].str.split().str.len().to_numpy() < p["rejected"].str.split().str.len().to_numpy()
            bl = beyond_length(log_word_ratio(p["chosen"], p["rejected"]), sc - sr, p["thread_id"].to_numpy(),
                               n_boot=1000)
            g = bl["gain"]["log_loss"]
            texts = pd.concat([p[["prompt", "chosen"]].set_axis(["q", "x"], axis=1),
                               p[["prompt", "rejected"]].set_axis(["q", "x"], axis=1)]).drop_duplicates()
            rho = spearman(np.asarray(fn(texts["q"], texts["x"])).ravel(), texts["x"].str.split().str.len().to_numpy(float))
            cells.append(f"acc {acc.mean():.3f} shorter {acc[short].mean():.3f} gain {g['value']:+.4f} "
                         f"[{g.get('ci_low', float('nan')):+.4f}, {g.get('ci_high', float('nan')):+.4f}] rho {rho:+.2f}")
        print(f"  {name:<28} " + " | ".join(f"{d.rstrip('/').split('/')[-1]}: {c}" for d, c in zip(a.eval, cells)),
              flush=True)

    for s in a.sets.split(","):
        t0 = time.time()
        F = featfn(s)
        lw_diff = (log_words(tp["chosen"]) - log_words(tp["rejected"]))[:, None]
        D = sparse.hstack([sparse.csr_matrix(F(tp["prompt"], tp["chosen"])) - sparse.csr_matrix(F(tp["prompt"], tp["rejected"])),
                           sparse.csr_matrix(lw_diff)]).tocsr()
        w, C = bt(D, tp["thread_id"].to_numpy())
        V = D.shape[1] - 1
        print(f"{s}: time-rule pairs, C={C} ({time.time() - t0:.0f} s)")
        evaluate("text + length term", lambda q, x, w=w: sparse.csr_matrix(F(q, x)) @ w[:V] + w[V] * log_words(x))
        evaluate("text part", lambda q, x, w=w: sparse.csr_matrix(F(q, x)) @ w[:V])
        ci, cr = allp["chosen_row"].to_numpy(), allp["rejected_row"].to_numpy()
        D = sparse.hstack([sparse.csr_matrix(F(allp["prompt"], allp["chosen"])) - sparse.csr_matrix(F(allp["prompt"], allp["rejected"])),
                           sparse.csr_matrix((xc[ci] - xc[cr]) / sd)]).tocsr()
        w, C = bt(D, allp["thread_id"].to_numpy())
        V = D.shape[1] - len(COVARIATES)
        rt = np.asarray(sparse.csr_matrix(F(tr["prompt"], tr["response"])) @ w[:V]).ravel()
        lw = log_words(tr["response"])
        beta = np.cov(rt, lw)[0, 1] / np.var(lw, ddof=1)
        j = COVARIATES.index("length")
        print(f"{s}: all pairs + covariates, C={C}, covariate weights per std "
              f"{dict(zip(COVARIATES, np.round(w[V:], 2).tolist()))} ({time.time() - t0:.0f} s)")
        evaluate("text part", lambda q, x, w=w: sparse.csr_matrix(F(q, x)) @ w[:V])
        evaluate("text part decorrelated", lambda q, x, w=w, b=beta: sparse.csr_matrix(F(q, x)) @ w[:V] - b * log_words(x))
        evaluate("text + length term", lambda q, x, w=w: sparse.csr_matrix(F(q, x)) @ w[:V] + w[V + j] * (log_words(x) - mu[j]) / sd[j])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--train", required=True)
    e.add_argument("--eval", nargs="+", required=True)
    e.add_argument("--train-texts", type=int, default=9000)
    e.add_argument("--layers", default="4,8,12")
    e.add_argument("--model", default="default")
    e.add_argument("--max-prompt-tokens", type=int, default=64)
    e.add_argument("--max-response-tokens", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    f = sub.add_parser("fit")
    f.add_argument("features")
    f.add_argument("--train", required=True)
    f.add_argument("--eval", nargs="+", required=True)
    f.add_argument("--sets", default="mean8,mean12,last12,tfidf")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--thread-frac", type=float, default=1.0,
                   help="fit on a seeded random fraction of the extracted train threads (stability check)")
    f.add_argument("--thread-seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "fit" and not 0.0 < a.thread_frac <= 1.0:
        ap.error(f"--thread-frac must be in (0, 1], not {a.thread_frac}")
    (extract if a.cmd == "extract" else fit)(a)


if __name__ == "__main__":
    main()
