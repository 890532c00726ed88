"""Texts/s of scoring the same answers with two reward models that share their bottom
layers (a proxy and a gold model trained from one base with their top layers trained, as
the demo's are), against plain transformers scoring with each model, same run.

    python benchmarks/judges.py --data /tmp/aa-data --model default --texts 96 --top 2

``--run DIR``: the reward models of an ``ambient run`` directory (``rm-proxy``, ``rm-gold``)
and its data.  Without it, two reward models are made from ``--model``: the same frozen
base, their top ``--top`` layers, final norm and heads moved by seeded noise (what
training the top layers does to them); they are saved as reward-model directories in a
temporary folder, so both sides load them from disk.

Like for like: the same texts (every answer of seeded threads of ``--split``, as
``ambient run``'s truth stage scores the held-out answers), rendered once by the models'
own renderer (``RewardInputs``), the same batch size, float32 and torch threads, no
gradient.  The peer loads each directory with ``AutoModelForSequenceClassification`` and
scores the texts in batches in the data's order (what a user holding two HF reward
models would write).  Ours is ``ambient_rlhf.eval.policy_eval.Judges`` (what ``ambient
eval`` and the truth stage use): a thread's answers batched together with the prompt run
once, and the layers the two models share run once per batch.  A third row scores each
model on its own through the project (``RewardFunction``, prompts shared), to show what
the shared layers alone save; the rewards of the two project rows must be equal bit for
bit, and the peer's equal to 1e-3.  Each side runs ``--repeats`` times, alternating; the
best of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench_env import describe, result


def make_models(model: str, top: int, out: Path) -> list[Path]:
    """Two reward-model directories on ``model``: the same bottom layers, the top ``top``
    layers, final norm and head moved by seeded noise."""
    import torch

    from ambient_rlhf.models.bodies import body_of
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model, padding_side="right")
    dirs = []
    for seed in (1, 2):
        rm = ScalarHeadModel(load_causal_lm(model))
        body = body_of(rm.lm)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mod in [*list(body.layers)[len(body.layers) - top:], body.norm, rm.head]:
                for p in mod.parameters():
                    p.add_(0.02 * p.detach().abs().mean() * torch.randn(p.shape, generator=g))
        d = out / f"rm{seed}"
        rm.save_pretrained(d, tok)
        dirs.append(d)
    return dirs


def texts_of(data: str, split: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    import pandas as pd

    resp = pd.read_parquet(Path(data) / "responses.parquet", columns=["thread_id", "prompt", "response", "split"])
    part = resp[resp["split"] == split] if split else resp
    if part.empty:
        raise SystemExit(f"error: {data} has no {split!r} responses (--split)")
    by_thread = part.groupby("thread_id", sort=True).indices
    rows: list[int] = []
    for t in random.Random(seed).sample(sorted(by_thread), len(by_thread)):
        rows.extend(int(i) for i in by_thread[t])
        if len(rows) >= n:
            break
    rows = rows[:n]
    return [part.prompt.iloc[i] for i in rows], [part.response.iloc[i] for i in rows]


def peer(dirs, prompts, responses, batch):
    import torch
    from transformers import AutoModelForSequenceClassification

    from ambient_rlhf.models.heads import reward_from_logits
    from ambient_rlhf.models.reward_inputs import RewardInputs

    t = time.perf_counter()
    out = []
    for d in dirs:
        model = AutoModelForSequenceClassification.from_pretrained(d).eval()
        inputs = RewardInputs.from_pretrained(d)
        got = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch):
                b = inputs.batch(prompts[i:i + batch], responses[i:i + batch])
                got.append(reward_from_logits(model(**b).logits, model.config.ambient_reward))
        out.append(torch.cat(got))
        del model
    return time.perf_counter() - t, out


def ours(dirs, prompts, responses, batch, joint=True):
    from ambient_rlhf.eval.policy_eval import Judges, load_judge, score

    t = time.perf_counter()
    rms = [load_judge(str(d))[0] for d in dirs]
    if joint:
        got = Judges(rms, batch).score(prompts, responses)
    else:
        got = [score(rm, prompts, responses, None, None, batch) for rm in rms]
    return time.perf_counter() - t, got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="an `ambient data build` directory (not with --run)")
    ap.add_argument("--run", default=None, help="an `ambient run` directory: its rm-proxy, rm-gold and data")
    ap.add_argument("--model", default="default")
    ap.add_argument("--top", type=int, default=2, help="layers the two made models do not share (without --run)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--texts", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if (args.run is None) == (args.data is None):
        ap.error("give --data (two reward models are made from --model) or --run (its own models and data)")
    os.environ.setdefault("AMBIENT_PROGRESS", "0")
    import numpy as np
    import torch

    from ambient_rlhf.models.bodies import body_of
    from ambient_rlhf.models.reward_model import load_reward_model
    from ambient_rlhf.models.shared_bottom import shared_bottom

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="judges-")
    if args.run:
        run = Path(args.run)
        dirs, data = [run / "rm-proxy", run / "rm-gold"], str(run / "data")
    else:
        dirs, data = make_models(args.model, args.top, Path(tmp.name)), args.data
    prompts, responses = texts_of(data, args.split, args.texts, args.seed)
    a, b = (load_reward_model(d) for d in dirs)
    n_layers, n_shared = len(body_of(a.lm).layers), shared_bottom([a, b])
    del a, b
    best = {"peer": 1e9, "ours": 1e9, "ours_each_alone": 1e9}
    for _ in range(args.repeats):
        dt, pr = peer(dirs, prompts, responses, args.batch)
        best["peer"] = min(best["peer"], dt)
        dt, oj = ours(dirs, prompts, responses, args.batch)
        best["ours"] = min(best["ours"], dt)
        dt, oa = ours(dirs, prompts, responses, args.batch, joint=False)
        best["ours_each_alone"] = min(best["ours_each_alone"], dt)
    bitwise = all(np.array_equal(x, y) for x, y in zip(oj, oa))
    err = max(float(np.abs(np.asarray(p, dtype=float) - o).max()) for p, o in zip(pr, oj))
    n = len(prompts)
    res = {"texts": n, "threads_of_texts": len(set(prompts)), "batch": args.batch, "threads": torch.get_num_threads(),
           "model_layers": n_layers, "shared_layers": n_shared, "models": [str(d) for d in dirs] if args.run else
           f"made from {args.model}, top {args.top} layers moved",
           **{f"{k}_seconds": round(v, 2) for k, v in best.items()},
           **{f"{k}_texts_per_s": round(n / v, 2) for k, v in best.items()},
           "ratio_ours_vs_peer": round(best["peer"] / best["ours"], 2),
           "ratio_shared_vs_each_alone": round(best["ours_each_alone"] / best["ours"], 2),
           "ours_equals_each_alone_bit_for_bit": bitwise, "max_abs_reward_diff_vs_peer": err}
    print(json.dumps(res, indent=1))
    print(describe(torch.get_num_threads()))
    result("judges", ours=n / best["ours"], peer=n / best["peer"], unit="texts/s", higher_is_better=True,
           target=1.5, peer_name="transformers, each model alone", threads=torch.get_num_threads(),
           model=args.model if not args.run else args.run, shared_layers=n_shared, model_layers=n_layers,
           shared_vs_each_alone=best["ours_each_alone"] / best["ours"])
    tmp.cleanup()
    if not bitwise or err > 1e-3:
        print(f"rewards differ: joint vs each alone bit for bit: {bitwise}; vs the peer by {err:.2g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
