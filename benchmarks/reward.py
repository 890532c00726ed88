"""Pairs/s of `ambient rm --objective pairwise` against TRL's RewardTrainer, same run.

    python benchmarks/reward.py --data /tmp/aa-data --model default --batch 4 --steps 12

Like for like: the same model (full fine-tuning on both sides, float32, no gradient
checkpointing, dropout off), the same pairs (the first ``steps x batch`` training pairs
that ``ambient rm`` selects, whole threads), the same token ids (prompt + response + EOS,
tokenised once by ``ambient rm``'s own table and handed to TRL pre-tokenised, so its
``max_length`` filter drops nothing), the same batch size in pairs, learning rate and
linear schedule, the same torch thread count.  Time is the wall clock from the end of the
first optimizer step to the end of the last (the first step, with its one-off
allocations, is left out on both sides); each side runs ``--repeats`` times, alternating,
and the best run of each side is compared (the machine is shared; the best run is the
least disturbed one).

Where ours is faster: pairs of one thread share responses, so a batch built from whole
threads scores each distinct response once (TRL scores chosen and rejected of every pair);
batches of similar lengths waste less on padding.  Both run chosen and rejected in one
forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_env import describe, result


def ours(args, work: Path) -> dict:
    from ambient_rlhf.logging import read_jsonl
    from ambient_rlhf.cli.rm import cli

    out = work / "ours"
    argv = ["--data", args.data, "--model", args.model, "--out", str(out), "--objective", "pairwise", "--overwrite",
            f"batch_size={args.batch}", f"max_steps={args.steps}", f"max_train_units={args.steps * args.batch}",
            f"learning_rate={args.lr}", "train_layers=-1", "eval_split=", "eval_steps=0", "save_steps=0", "warmup_steps=0",
            f"max_prompt_tokens={args.max_prompt}", f"max_response_tokens={args.max_response}", "norm_max_responses=8"]
    cli(argv)
    rows = read_jsonl(out / "metrics.jsonl")
    window = rows[-1]["time"] - rows[0]["time"]
    seqs = sum(r["perf/sequences"] for r in rows[1:])
    toks = sum(r["perf/tokens"] for r in rows[1:])
    pairs = sum(r["perf/units"] for r in rows[1:])
    return {"pairs": pairs, "seconds": window, "pairs_per_s": pairs / window, "sequences": seqs, "tokens": toks}


def same_pairs(args):
    """The token ids of the pairs ``ambient rm`` trains on, in its own tokenisation."""
    from ambient_rlhf.config import load_config
    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.train import reward as R

    cfg = load_config(R.RewardConfig, None, [f"data={args.data}", f"model={args.model}", "out=x",
                                             f"max_prompt_tokens={args.max_prompt}",
                                             f"max_response_tokens={args.max_response}"])
    tok = load_tokenizer(args.model)
    table = R.TextTable.of(tok, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.template)
    units = R.index_units(R.subset_threads(R.load_units(cfg, "train"), args.steps * args.batch, cfg.seed), table)
    return tok, [table.ids[u.rows[0]] for u in units], [table.ids[u.rows[1]] for u in units]


def trl(args, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from ambient_rlhf.models.load import resolve_model

    tok, chosen, rejected = same_pairs(args)
    ds = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(args.model), num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.time())

    cfg = RewardConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, max_steps=args.steps,
                       learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, logging_steps=10**6,
                       save_strategy="no", report_to="none", activation_checkpointing=False, bf16=False, fp16=False,
                       use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, max_length=None,
                       disable_dropout=True, seed=0, center_rewards_coefficient=None)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    assert not trainer.args.activation_checkpointing and not getattr(model, "is_gradient_checkpointing", False)
    trainer.train()
    window = stamps[-1] - stamps[0]
    pairs = (len(stamps) - 1) * args.batch
    toks = sum(len(c) + len(r) for c, r in zip(chosen, rejected))
    return {"pairs": pairs, "seconds": window, "pairs_per_s": pairs / window, "sequences_per_step": 2 * args.batch,
            "tokens_all_steps_unpadded": toks}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/tmp/aa-data", help="a data directory (ambient data build)")
    p.add_argument("--model", default="default")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-prompt", type=int, default=128)
    p.add_argument("--max-response", type=int, default=128)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the best of each is compared")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    os.environ.setdefault("AMBIENT_PROGRESS", "0")
    import torch

    torch.set_num_threads(args.threads)
    from ambient_rlhf.logging import setup_logging

    setup_logging(0)
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for i in range(args.repeats):  # alternate, so a change in machine load hits both sides
        for name, fn in (("ours", ours), ("trl", trl)) if i % 2 == 0 else (("trl", trl), ("ours", ours)):
            work = Path(tempfile.mkdtemp(prefix="rm-bench-"))
            try:
                runs[name].append(fn(args, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"{name} run {i + 1}: {runs[name][-1]['pairs_per_s']:.3f} pairs/s", flush=True)
    a = max(runs["ours"], key=lambda r: r["pairs_per_s"])  # best of the repeats on each side
    b = max(runs["trl"], key=lambda r: r["pairs_per_s"])
    res = {"model": args.model, "data": args.data, "batch": args.batch, "steps": args.steps, "threads": args.threads,
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""), "repeats": args.repeats, "ours": a, "trl": b,
           "all_runs": {k: [r["pairs_per_s"] for r in v] for k, v in runs.items()},
           "ratio": a["pairs_per_s"] / b["pairs_per_s"]}
    print(json.dumps(res, indent=2))
    print(f"ambient rm: {a['pairs_per_s']:.3f} pairs/s   TRL RewardTrainer: {b['pairs_per_s']:.3f} pairs/s   "
          f"ratio {res['ratio']:.2f}x")
    print(describe(args.threads))
    result("reward", ours=a["pairs_per_s"], peer=b["pairs_per_s"], unit="pairs/s", higher_is_better=True, target=1.2,
           peer_name="TRL RewardTrainer", threads=args.threads, model=args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
