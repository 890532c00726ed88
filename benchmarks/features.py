"""Texts/s of caching reward-model features (``ambient rm train_layers=0``) against the
plain transformers loop a user would write, same run.

    python benchmarks/features.py --data /tmp/aa-data --model default --texts 256 --batch 16 --layers 8

Like for like: the same texts (every response of seeded threads of the data directory,
as a reward run caches the texts of its pairs; ``--sample responses``: a seeded sample of
responses, few of which share a thread), each rendered once by the reward model's own renderer, ``RewardInputs``: prompt and response
cut to ``--max-prompt`` / ``--max-response`` tokens), the same float32 model, batch size
and torch thread count, no gradient.  The peer runs the texts in the data's order through
``AutoModelForCausalLM`` with ``output_hidden_states=True`` and keeps the last real
token's final state (what a head-only reward model reads).  Ours is ``Scorer.prepare``
(length-sorted batches, so little padding, hidden states only: no 49k-wide logits; a
thread's responses batched together, its prompt run once per batch: ``share_prompts``),
once with the whole backbone (the same features as the peer; checked), once cut to its
first ``--layers`` layers (``backbone_layers``) and once more cut without sharing the
prompts (the row that shows what sharing saves).  Each side runs ``--repeats`` times,
alternating; the best of each is compared (the machine may be shared).  The last lines
extrapolate to caching every response of the data directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from bench_env import describe, result


def texts_of(args):
    import pandas as pd

    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.models.reward_inputs import RewardInputs, RewardInputSpec, TextTable

    resp = pd.read_parquet(Path(args.data) / "responses.parquet", columns=["thread_id", "prompt", "response"])
    rng = random.Random(args.seed)
    if args.sample == "threads":  # every response of seeded threads, as a reward run caches them
        by_thread = resp.groupby("thread_id", sort=True).indices
        rows = []
        for t in rng.sample(sorted(by_thread), len(by_thread)):
            rows.extend(int(i) for i in by_thread[t])
            if len(rows) >= args.texts:
                break
        rows = rows[: args.texts]
    else:
        rows = rng.sample(range(len(resp)), min(args.texts, len(resp)))
    tok = load_tokenizer(args.model, padding_side="right")
    spec = RewardInputSpec(max_prompt_tokens=args.max_prompt, max_response_tokens=args.max_response)
    table = TextTable(RewardInputs(tok, spec))
    idx = [table.add(resp.prompt.iloc[i], resp.response.iloc[i]) for i in rows]
    return tok, table, idx, len(resp)


def peer(model, table, idx, batch, pad_id):
    import torch

    from ambient_rlhf.models.tokenize import pad_batch

    feats = {}
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            chunk = idx[i:i + batch]
            ids, mask = pad_batch([table.ids[r] for r in chunk], pad_id, "right")
            h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            last = mask.sum(1) - 1
            for j, r in enumerate(chunk):
                feats[r] = h[j, last[j]]
    return time.perf_counter() - t, feats


def ours(lm, table, idx, batch, pad_id, share=True):
    import torch

    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.train.reward.scoring import Scorer

    rm = ScalarHeadModel(lm).eval()
    s = Scorer(rm, table, "head", 0, torch.device("cpu"), pad_id)
    s.share_prompts = share  # rm share_prompts (the default): a thread's prompt once per batch
    t = time.perf_counter()
    s.prepare(idx, batch, save=False)
    return time.perf_counter() - t, s.cache


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8, help="backbone_layers of the cut model")
    ap.add_argument("--max-prompt", type=int, default=64)
    ap.add_argument("--max-response", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", choices=["threads", "responses"], default="threads",
                    help="threads: every response of seeded threads (what a reward model caches: the texts of "
                    "its pairs, a thread's answers sharing their prompt); responses: a seeded sample of "
                    "responses (few share a thread)")
    args = ap.parse_args(argv)
    os.environ.setdefault("AMBIENT_PROGRESS", "0")
    import torch

    from ambient_rlhf.models.bodies import keep_first_layers
    from ambient_rlhf.models.load import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    tok, table, idx, n_all = texts_of(args)
    full = load_causal_lm(args.model).eval()
    cut = keep_first_layers(load_causal_lm(args.model).eval(), args.layers)
    n_layers = full.config.num_hidden_layers
    best = {"peer": 1e9, "ours_full": 1e9, "ours_cut": 1e9, "ours_cut_unshared": 1e9}
    for _ in range(args.repeats):
        dt, pf = peer(full, table, idx, args.batch, tok.pad_token_id)
        best["peer"] = min(best["peer"], dt)
        dt, of = ours(full, table, idx, args.batch, tok.pad_token_id)
        best["ours_full"] = min(best["ours_full"], dt)
        dt, oc = ours(cut, table, idx, args.batch, tok.pad_token_id)
        best["ours_cut"] = min(best["ours_cut"], dt)
        dt, ou = ours(cut, table, idx, args.batch, tok.pad_token_id, share=False)
        best["ours_cut_unshared"] = min(best["ours_cut_unshared"], dt)
    err = max(float((pf[r] - of[r]).abs().max()) for r in idx)
    err_shared = max(float((oc[r] - ou[r]).abs().max()) for r in idx)
    tokens = sum(len(table.ids[r]) for r in idx)
    res = {"texts": len(idx), "tokens": tokens, "batch": args.batch, "threads": torch.get_num_threads(),
           "model_layers": n_layers, "cut_layers": args.layers, "max_abs_feature_diff_full": err,
           "max_abs_feature_diff_shared_vs_unshared": err_shared, "sample": args.sample,
           "distinct_prompts": len({tuple(table.ids[r][: table.prompt_len[r]]) for r in idx}),
           **{f"{k}_texts_per_s": round(len(idx) / v, 2) for k, v in best.items()},
           "ratio_ours_full_vs_peer": round(best["peer"] / best["ours_full"], 2),
           "ratio_ours_cut_vs_peer": round(best["peer"] / best["ours_cut"], 2),
           "ratio_shared_vs_unshared_cut": round(best["ours_cut_unshared"] / best["ours_cut"], 2),
           "all_responses": n_all,
           "minutes_all_responses_peer": round(n_all * best["peer"] / len(idx) / 60, 1),
           "minutes_all_responses_ours_cut": round(n_all * best["ours_cut"] / len(idx) / 60, 1)}
    print(json.dumps(res, indent=1))
    print(describe(torch.get_num_threads()))
    result("features", ours=len(idx) / best["ours_cut"], peer=len(idx) / best["peer"], unit="texts/s",
           higher_is_better=True, target=2.0, peer_name="transformers loop (whole model)",
           threads=torch.get_num_threads(), model=args.model, cut_layers=args.layers,
           whole_model_ratio=best["peer"] / best["ours_full"], max_abs_feature_diff=err)
    if err > 1e-3 or err_shared > 1e-3:
        print(f"features differ: from the peer's by {err:.2g}, shared from unshared by {err_shared:.2g}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
