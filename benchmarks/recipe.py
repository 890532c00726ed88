"""End-to-end time of the head-only reward recipe (the askacademia preset's ``rm:``
section) on a CPU, against the plain transformers loop a user would write, same run.

    python benchmarks/recipe.py --data /tmp/aa-data --train-threads 120 --threads 2

What runs: ``ambient rm`` in a subprocess, empty feature cache, on ``--train-threads``
seeded train threads of the data directory (all their time-rule pairs; every valid pair
is kept for the training run's own evaluation), with the preset's settings (mean of the
response states of SmolLM2's first 12 layers, 64 + 64 tokens, length covariate,
standardised features, weight decay 10, 3 epochs of batch 16).  Its wall time includes
loading the model, caching every text, fitting the head and writing the model.

The peer: every text of the same run through ``AutoModelForCausalLM`` (the whole model,
``output_hidden_states=True``, texts in data order, batches of ``--batch``; what a user
writes without this toolkit), timed on a seeded sample of ``--peer-texts`` of them and
extrapolated to all, plus the same head fit (so only the feature path differs).  The ratio
is ours / the peer's seconds (lower is better; target 0.5).  The last line extrapolates
both to every train thread of the data directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_env import describe, result

RECIPE = ["--model", "default", "pooling=mean", "backbone_layers=12", "train_layers=0", "max_prompt_tokens=64",
          "max_response_tokens=64", "covariates=[length]", "standardize_features=true", "weight_decay=10.0",
          "num_train_epochs=3", "batch_size=16", "eval_steps=0", "save_steps=0", "eval_max_pairs=150",
          "norm_max_responses=200", "eval_split="]


def subset(data: Path, out: Path, n_threads: int, seed: int) -> int:
    """A copy of ``data`` whose train split keeps ``n_threads`` seeded threads; returns them."""
    import shutil

    import pandas as pd

    out.mkdir(parents=True)
    for f in data.iterdir():
        if f.suffix != ".parquet" and f.is_file():
            shutil.copy(f, out / f.name)
    pairs = pd.read_parquet(data / "pairs.parquet")
    threads = sorted(pairs.loc[pairs["split"] == "train", "thread_id"].unique())
    keep = set(random.Random(seed).sample(threads, min(n_threads, len(threads))) if n_threads else threads)
    for f in data.glob("*.parquet"):
        df = pd.read_parquet(f)
        if "split" in df and "thread_id" in df:
            df = df[(df["split"] != "train") | df["thread_id"].isin(keep)]
        df.to_parquet(out / f.name, index=False)
    return len(keep)


def peer_seconds_per_text(texts: list[list[int]], batch: int, pad_id: int, threads: int) -> float:
    import torch

    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.models.tokenize import pad_batch

    if threads:
        torch.set_num_threads(threads)
    model = load_causal_lm("default").eval()
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids, mask = pad_batch(texts[i:i + batch], pad_id, "right")
            h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[12]
            (h * mask.unsqueeze(-1)).sum(1)  # the same mean pooling's arithmetic (the whole prompt+response)
    return (time.perf_counter() - t) / len(texts)


def texts_of(data: Path) -> list[list[int]]:
    """Token ids of the pairs' texts of ``data`` (prompt + response, cut to 64 + 64 tokens
    like the recipe's): the peer is timed on a sample of them."""
    import pandas as pd

    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.models.reward_inputs import RewardInputs, RewardInputSpec, TextTable

    tok = load_tokenizer("default", padding_side="right")
    table = TextTable(RewardInputs(tok, RewardInputSpec(max_prompt_tokens=64, max_response_tokens=64)))
    pairs = pd.read_parquet(data / "pairs.parquet")
    seen = set()
    for r in pairs.itertuples(index=False):
        for resp in (r.chosen, r.rejected):
            if (r.prompt, resp) not in seen:
                seen.add((r.prompt, resp))
                table.add(r.prompt, resp)
    return [table.ids[i] for i in range(len(table.ids))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="an `ambient data build` directory (AskAcademia's)")
    ap.add_argument("--train-threads", type=int, default=120, help="seeded train threads (0 = all)")
    ap.add_argument("--peer-texts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="the peer's batch (ours: the recipe's, 2 x 16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    data = Path(a.data)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), AMBIENT_PROGRESS="0", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="recipe-") as work:
        work = Path(work)
        n = subset(data, work / "data", a.train_threads, a.seed)
        ambient = Path(sys.executable).with_name("ambient")
        cmd = [str(ambient) if ambient.exists() else "ambient", "rm", "--data", str(work / "data"), "--out",
               str(work / "rm"), *RECIPE, f"feature_cache={work / 'fc'}"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        ours = time.perf_counter() - t
        if proc.returncode:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        m = json.loads((work / "rm" / "manifest.json").read_text())
        n_texts, fit = m["counts"]["texts"], m["timings"]["loop_seconds"]
        texts = texts_of(work / "data")
        sample = random.Random(a.seed).sample(texts, min(a.peer_texts, len(texts)))
        from ambient_rlhf.models.load import load_tokenizer

        per_text = peer_seconds_per_text(sample, a.batch, load_tokenizer("default").pad_token_id, a.threads)
        peer = per_text * n_texts + fit
        import pandas as pd

        pairs = pd.read_parquet(data / "pairs.parquet")
        all_threads = pairs.loc[pairs["split"] == "train", "thread_id"].nunique()
        res = {"train_threads": n, "texts_cached": n_texts, "train_pairs": m["counts"]["train_units"],
               "ours_seconds": round(ours, 1), "ours_texts_per_s_end_to_end": round(n_texts / ours, 2),
               "head_fit_seconds": fit, "peer_seconds_per_text": round(per_text, 3),
               "peer_seconds_extrapolated": round(peer, 1),
               "all_train_threads": int(all_threads),
               "minutes_all_threads_ours": round(ours * all_threads / max(n, 1) / 60, 1),
               "minutes_all_threads_peer": round(peer * all_threads / max(n, 1) / 60, 1)}
        print(json.dumps(res, indent=1))
        print(describe(a.threads))
        result("recipe", ours=ours, peer=peer, unit="s (ambient rm, head-only recipe)", higher_is_better=False,
               target=0.5, peer_name="transformers loop, whole model, + the same head fit", threads=a.threads,
               texts=n_texts, train_threads=n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
