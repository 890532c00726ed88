"""Texts/s of caching reward-model features (``ambient rm train_layers=0``) against the
plain transformers loop a user would write, same run.

    python benchmarks/features.py --data /tmp/aa-data --model default --texts 256 --batch 16 --layers 8

Like for like: the same texts (a seeded sample of the data directory's responses, each
rendered once by the reward model's own renderer, ``RewardInputs``: prompt and response
cut to ``--max-prompt`` / ``--max-response`` tokens), the same float32 model, batch size
and torch thread count, no gradient.  The peer runs the texts in the data's order through
``AutoModelForCausalLM`` with ``output_hidden_states=True`` and keeps the last real
token's final state (what a head-only reward model reads).  Ours is ``Scorer.prepare``
(length-sorted batches, so little padding, hidden states only: no 49k-wide logits), once
with the whole backbone (the same features as the peer; checked) and once cut to its
first ``--layers`` layers (``backbone_layers``).  Each side runs ``--repeats`` times,
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

    resp = pd.read_parquet(Path(args.data) / "responses.parquet", columns=["prompt", "response"])
    rows = random.Random(args.seed).sample(range(len(resp)), min(args.texts, len(resp)))
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


def ours(lm, table, idx, batch, pad_id):
    import torch

    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.train.reward.scoring import Scorer

    rm = ScalarHeadModel(lm).eval()
    s = Scorer(rm, table, "head", 0, torch.device("cpu"), pad_id)
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
    args = ap.parse_args(argv)
    os.environ.setdefault("AMBIENT_PROGRESS", "0")
    import torch

    from ambient_rlhf.models.heads import keep_first_layers
    from ambient_rlhf.models.load import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    tok, table, idx, n_all = texts_of(args)
    full = load_causal_lm(args.model).eval()
    cut = keep_first_layers(load_causal_lm(args.model).eval(), args.layers)
    n_layers = full.config.num_hidden_layers
    best = {"peer": 1e9, "ours_full": 1e9, "ours_cut": 1e9}
    for _ in range(args.repeats):
        dt, pf = peer(full, table, idx, args.batch, tok.pad_token_id)
        best["peer"] = min(best["peer"], dt)
        dt, of = ours(full, table, idx, args.batch, tok.pad_token_id)
        best["ours_full"] = min(best["ours_full"], dt)
        dt, _ = ours(cut, table, idx, args.batch, tok.pad_token_id)
        best["ours_cut"] = min(best["ours_cut"], dt)
    err = max(float((pf[r] - of[r]).abs().max()) for r in idx)
    tokens = sum(len(table.ids[r]) for r in idx)
    res = {"texts": len(idx), "tokens": tokens, "batch": args.batch, "threads": torch.get_num_threads(),
           "model_layers": n_layers, "cut_layers": args.layers, "max_abs_feature_diff_full": err,
           **{f"{k}_texts_per_s": round(len(idx) / v, 2) for k, v in best.items()},
           "ratio_ours_full_vs_peer": round(best["peer"] / best["ours_full"], 2),
           "ratio_ours_cut_vs_peer": round(best["peer"] / best["ours_cut"], 2),
           "all_responses": n_all,
           "minutes_all_responses_peer": round(n_all * best["peer"] / len(idx) / 60, 1),
           "minutes_all_responses_ours_cut": round(n_all * best["ours_cut"] / len(idx) / 60, 1)}
    print(json.dumps(res, indent=1))
    print(describe(torch.get_num_threads()))
    result("features", ours=len(idx) / best["ours_cut"], peer=len(idx) / best["peer"], unit="texts/s",
           higher_is_better=True, target=2.0, peer_name="transformers loop (whole model)",
           threads=torch.get_num_threads(), model=args.model, cut_layers=args.layers,
           whole_model_ratio=best["peer"] / best["ours_full"], max_abs_feature_diff=err)
    if err > 1e-3:
        print(f"features differ from the peer's by {err:.2g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
