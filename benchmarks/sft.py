"""Tokens/s of ``ambient sft`` against TRL's ``SFTTrainer``, same run, same settings.

    python benchmarks/sft.py [--data DIR] [--model default] [--steps 12] [--batch 4] [--max-tokens 128]

Both sides: the same model (float32, dropout off), the same token sequences (TRL gets our
tokenised train examples: prompt + response + EOS with the completion mask) from the same
data directory (a real one with ``--data``, else a synthetic one from
``tests/helpers.make_data_dir``), the same micro-batch size, no gradient accumulation,
the same token budget per sequence, loss on completion tokens only, AdamW at the same
LR, the same torch thread count (set once for the process; ``OMP_WAIT_POLICY`` is
inherited by both), no evaluation, no checkpoints.  Each side runs ``--warmup`` steps
that are not timed, then ``--steps`` timed steps.  Throughput = real (non-padding)
tokens of the timed steps / their wall time.  The sides alternate (ours, TRL, ours, TRL)
and the best round of each is kept, which evens out load from other users of the machine.

Where our speed comes from (see docs/sft.md): length-grouped batches (little padding);
the output head applied only at response positions (TRL's chunked head does that only on
Triton devices and scores every position on CPU); no per-step extras (TRL computes
entropy and top-1 accuracy at every step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_env import describe, result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def run_ours(data: str, model: str, steps: int, warmup: int, batch: int, max_tokens: int, tmp: Path) -> dict:
    from ambient_rlhf.logging import read_jsonl
    from ambient_rlhf.train.sft import SFTConfig, train_sft

    half = max_tokens // 2
    out = tmp / f"ours-{time.time_ns()}"
    cfg = SFTConfig(data=data, model=model, out=str(out), max_steps=warmup + steps, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=1, max_prompt_tokens=half, max_response_tokens=max_tokens - half,
                    learning_rate=2e-5, warmup_steps=0, lr_scheduler_type="constant", logging_steps=1, eval_steps=0,
                    eval_examples=1, save_steps=0, sample_prompts=0)
    train_sft(cfg)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/tokens" in r]
    timed = [r for r in rows if r["step"] > warmup]
    t0 = next(r["time"] for r in rows if r["step"] == warmup)
    tokens = sum(r["train/tokens"] for r in timed)
    return {"tokens": tokens, "seconds": timed[-1]["time"] - t0}


def run_trl(data: str, model: str, steps: int, warmup: int, batch: int, max_tokens: int, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    from ambient_rlhf.train.sft import SFTConfig, encode_examples, read_responses, select_examples

    # exactly the sequences our side trains on: same template, same truncation, same mask
    half = max_tokens // 2
    ours = SFTConfig(data=data, model=model, max_prompt_tokens=half, max_response_tokens=max_tokens - half)
    rows, _ = select_examples(read_responses(data, ours), "train", ours)
    examples, _ = encode_examples(load_tokenizer(model), rows, ours)
    ds = Dataset.from_dict({
        "input_ids": [ids for ids, _ in examples],
        "completion_mask": [[0] * p + [1] * (len(ids) - p) for ids, p in examples],
    })
    lm = load_causal_lm(model)
    tok = load_tokenizer(model)
    seen = {"tokens": 0, "count": False}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:
                seen["t0"], seen["tokens"], seen["count"] = time.perf_counter(), 0, True
            if state.global_step == warmup + steps:
                seen["t1"] = time.perf_counter()

    cfg = TRLConfig(output_dir=str(tmp / f"trl-{time.time_ns()}"), per_device_train_batch_size=batch,
                    gradient_accumulation_steps=1, max_length=max_tokens, max_steps=warmup + steps,
                    learning_rate=2e-5, lr_scheduler_type="constant", warmup_steps=0, logging_steps=10_000,
                    save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
                    completion_only_loss=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=lm, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    collate = trainer.data_collator

    def counting(features):
        b = collate(features)
        if seen["count"]:
            seen["tokens"] += int(b["attention_mask"].sum())
        return b

    trainer.data_collator = counting
    trainer.train()
    # the batch of step warmup+1 is collated after step `warmup` ends: counting starts there
    return {"tokens": seen["tokens"], "seconds": seen["t1"] - seen["t0"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="data directory (default: a synthetic one)")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per sequence (prompt + response)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = p.parse_args()
    os.environ.setdefault("AMBIENT_PROGRESS", "0")
    torch.set_num_threads(args.threads)
    from ambient_rlhf.logging import setup_logging
    from ambient_rlhf.models.load import resolve_model

    setup_logging(0)
    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = args.data
        if data is None:
            from helpers import make_data_dir

            data = str(make_data_dir(tmp / "data", n_threads=120, k=4))
        results = {"ours": [], "trl": []}
        for r in range(args.rounds):
            for name, fn in (("ours", run_ours), ("trl", run_trl)):
                res = fn(data, model, args.steps, args.warmup, args.batch, args.max_tokens, tmp)
                res["tokens_per_s"] = res["tokens"] / res["seconds"]
                results[name].append(res)
                print(f"round {r + 1} {name:>4}: {res['tokens']} tokens in {res['seconds']:.1f} s = "
                      f"{res['tokens_per_s']:.0f} tokens/s", flush=True)
    best = {k: max(x["tokens_per_s"] for x in v) for k, v in results.items()}
    print(json.dumps({"model": args.model, "batch": args.batch, "max_tokens": args.max_tokens, "threads": args.threads,
                      "steps": args.steps, "ours_tokens_per_s": round(best["ours"]), "trl_tokens_per_s": round(best["trl"])}))
    print(f"ratio ours/trl = {best['ours'] / best['trl']:.2f}x (target >= 1.2x)")
    print(describe(args.threads))
    result("sft", ours=best["ours"], peer=best["trl"], unit="tokens/s", higher_is_better=True, target=1.2,
           peer_name="TRL SFTTrainer", threads=args.threads, model=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
