"""End-to-end time of a shipped reward-model recipe (a preset's ``rm:`` section) on a CPU,
against the plain transformers loop a user would write, same run.

    python benchmarks/recipe.py --data /tmp/aa-data --train-threads 120 --threads 2
    python benchmarks/recipe.py --data /tmp/aa-data --preset reddit-gemma --train-threads 300

What runs: ``ambient rm`` in a subprocess, empty feature cache, on ``--train-threads``
seeded train threads of the data directory, with the preset's ``rm:`` settings exactly as
``ambient run PRESET`` resolves them (backbone ``rm_model`` or ``model``; for ``reddit`` /
``askacademia``: the mean of SmolLM2's first 12 layers' response states, every candidate
pair with exposure and length covariates, the head trained for each weight decay of the
grid; for ``reddit-gemma``: Gemma 3 270M's layer 12, the L-BFGS fit) -- except that it
trains on all the subset's train threads (not one half) and keeps no test evaluation.
Its wall time includes loading the model, caching every text, choosing the weight decay,
fitting the head and writing the model.

The peer: every text of the same run through ``AutoModelForCausalLM`` (the whole model,
``output_hidden_states=True``, texts in data order, batches of ``--batch``; what a user
writes without this toolkit), timed on a seeded sample of ``--peer-texts`` of them and
extrapolated to all, plus the same head fit (so only the feature path differs).  The ratio
is ours / the peer's seconds (lower is better; target 0.5).  The last lines extrapolate
both to every train thread of the data directory, in proportion to the train responses
(the fixed costs -- loading, the valid texts -- scaled too: an upper bound).
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
from typing import TYPE_CHECKING

import yaml
from bench_env import describe, result

if TYPE_CHECKING:
    import pandas as pd


def recipe(preset: str, feature_cache: Path) -> tuple[dict, str]:
    """The preset's ``rm:`` section as ``ambient run`` resolves it (every key), with the
    benchmark's changes, and the backbone's name."""
    import dataclasses

    from ambient_rlhf.config import to_dict
    from ambient_rlhf.run_config import load_run_config

    cfg = load_run_config(preset)
    model = cfg.rm_model or cfg.model
    rm = dataclasses.replace(cfg.rm, model=model, train_half="all", eval_split="", eval_steps=0, save_steps=0,
                             feature_cache=str(feature_cache))
    if rm.train_layers != 0:
        raise SystemExit(f"{preset}: its reward model trains backbone layers (train_layers={rm.train_layers}); "
                         "this benchmark times the head-only recipes")
    d = to_dict(rm)
    for k in ("data", "out", "resume", "overwrite"):
        d.pop(k, None)
    return d, model


def train_responses(data: Path) -> pd.Series:
    """thread_id of every train response of a data directory (what a recipe with
    ``pairs=all`` can pair), one row per response."""
    import pandas as pd

    r = pd.read_parquet(data / "responses.parquet", columns=["thread_id", "split"])
    return r.loc[r["split"] == "train", "thread_id"]


def subset(data: Path, out: Path, n_threads: int, seed: int) -> int:
    """A copy of ``data`` whose train split keeps ``n_threads`` seeded threads (of all its
    train threads, not only those with time-rule pairs); returns their number."""
    import shutil

    import pandas as pd

    out.mkdir(parents=True)
    for f in data.iterdir():
        if f.suffix != ".parquet" and f.is_file():
            shutil.copy(f, out / f.name)
    threads = sorted(train_responses(data).unique())
    keep = set(random.Random(seed).sample(threads, min(n_threads, len(threads))) if n_threads else threads)
    for f in data.glob("*.parquet"):
        df = pd.read_parquet(f)
        if "split" in df and "thread_id" in df:
            df = df[(df["split"] != "train") | df["thread_id"].isin(keep)]
        df.to_parquet(out / f.name, index=False)
    return len(keep)


def peer_seconds_per_text(texts: list[list[int]], batch: int, pad_id: int, threads: int, model_name: str,
                          layer: int) -> float:
    import torch

    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.models.tokenize import pad_batch

    if threads:
        torch.set_num_threads(threads)
    model = load_causal_lm(model_name).eval()
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids, mask = pad_batch(texts[i:i + batch], pad_id, "right")
            h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
            (h * mask.unsqueeze(-1)).sum(1)  # the same mean pooling's arithmetic (the whole prompt+response)
    return (time.perf_counter() - t) / len(texts)


def texts_of(data: Path, model_name: str, max_prompt: int, max_response: int) -> list[list[int]]:
    """Token ids of the pairs' texts of ``data`` (prompt + response, cut like the recipe's):
    the peer is timed on a sample of them."""
    import pandas as pd

    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.models.reward_inputs import RewardInputs, RewardInputSpec, TextTable

    tok = load_tokenizer(model_name, padding_side="right")
    table = TextTable(RewardInputs(tok, RewardInputSpec(max_prompt_tokens=max_prompt, max_response_tokens=max_response)))
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
    ap.add_argument("--preset", default="askacademia", help="whose rm: section runs (askacademia, reddit, reddit-gemma)")
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
        rm_cfg, model_name = recipe(a.preset, work / "fc")
        (work / "rm.yaml").write_text(yaml.safe_dump(rm_cfg, sort_keys=False))
        ambient = Path(sys.executable).with_name("ambient")
        cmd = [str(ambient) if ambient.exists() else "ambient", "rm", "--config", str(work / "rm.yaml"), "--data",
               str(work / "data"), "--out", str(work / "rm")]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        ours = time.perf_counter() - t
        if proc.returncode:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        m = json.loads((work / "rm" / "manifest.json").read_text())
        # the head's fit, the same work for the peer: the weight-decay grid and the final fit
        n_texts = m["counts"]["texts"]
        fit = m["timings"]["loop_seconds"] + m["timings"].get("weight_decay_selection_seconds", 0.0)
        texts = texts_of(work / "data", model_name, rm_cfg["max_prompt_tokens"], rm_cfg["max_response_tokens"])
        sample = random.Random(a.seed).sample(texts, min(a.peer_texts, len(texts)))
        from ambient_rlhf.models.load import load_tokenizer

        per_text = peer_seconds_per_text(sample, a.batch, load_tokenizer(model_name).pad_token_id, a.threads,
                                         model_name, rm_cfg["backbone_layers"] or -1)
        peer = per_text * n_texts + fit
        # to every train thread, in proportion to the train responses (the texts that scale)
        scale = len(train_responses(data)) / max(len(train_responses(work / "data")), 1)
        res = {"preset": a.preset, "model": model_name, "train_threads": n, "texts_cached": n_texts,
               "train_pairs": m["counts"]["train_units"], "ours_seconds": round(ours, 1),
               "ours_texts_per_s_end_to_end": round(n_texts / ours, 2),
               "head_fit_seconds": fit, "peer_seconds_per_text": round(per_text, 3),
               "peer_seconds_extrapolated": round(peer, 1),
               "all_train_threads": int(train_responses(data).nunique()), "scale_to_all": round(scale, 2),
               "minutes_all_threads_ours": round(ours * scale / 60, 1),
               "minutes_all_threads_peer": round(peer * scale / 60, 1)}
        print(json.dumps(res, indent=1))
        print(describe(a.threads))
        result("recipe", ours=ours, peer=peer, unit=f"s (ambient rm, {a.preset}'s head-only recipe)", higher_is_better=False,
               target=0.5, peer_name="transformers loop, whole model, + the same head fit", threads=a.threads,
               texts=n_texts, train_threads=n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
