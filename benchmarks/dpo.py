"""Tokens/s of ``ambient dpo`` against TRL's ``DPOTrainer``, same run, same settings.

    python benchmarks/dpo.py [--data DIR] [--model default] [--steps 8] [--batch 2] [--max-tokens 128]

Both sides: the same model (float32, dropout off), the same preference pairs from the same
data directory (a real one with ``--data``, else a synthetic one from
``tests/helpers.make_data_dir``), tokenised once by our side (chat template, prompt cut
from the left and answer from the right to the budget, EOS) and handed to TRL as the
decoded prompt and answer texts of those very tokens (no further truncation there), the
sigmoid loss with beta 0.1, the reference log-probs computed before training on both
sides (TRL: ``precompute_ref_log_probs=True``; ours always caches them), the same
micro-batch of pairs, no gradient accumulation, AdamW at the same LR, the same torch
thread count, no evaluation, no checkpoints.  Each side runs ``--warmup`` steps that are
not timed, then ``--steps`` timed steps.  Throughput = real (non-padding) tokens of the
chosen and rejected sequences of the timed steps / their wall time.  The sides alternate
(ours, TRL, ours, TRL) and the best round of each is kept, which evens out load from
other users of the machine.

Where our speed comes from: length-grouped batches (little padding), the output head
applied only at answer positions (``CausalLMLoss``), no per-step extras.
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


def _cfg(data: str, model: str, out: str, steps: int, batch: int, max_tokens: int):
    from ambient_rlhf.train.dpo import DPOConfig

    half = max_tokens // 2
    return DPOConfig(data=data, model=model, out=out, max_steps=steps, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=1, max_prompt_tokens=half, max_response_tokens=max_tokens - half,
                     learning_rate=1e-6, warmup_steps=0, lr_scheduler_type="constant", logging_steps=1, eval_steps=0,
                     eval_pairs=1, save_steps=0, sample_prompts=0, beta=0.1, loss="dpo")


def run_ours(data: str, model: str, steps: int, warmup: int, batch: int, max_tokens: int, tmp: Path) -> dict:
    from ambient_rlhf.logging import read_jsonl
    from ambient_rlhf.train.dpo import train_dpo

    out = tmp / f"ours-{time.time_ns()}"
    train_dpo(_cfg(data, model, str(out), warmup + steps, batch, max_tokens))
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/tokens" in r]
    timed = [r for r in rows if r["step"] > warmup]
    t0 = next(r["time"] for r in rows if r["step"] == warmup)
    return {"tokens": sum(r["train/tokens"] for r in timed), "seconds": timed[-1]["time"] - t0}


def run_trl(data: str, model: str, steps: int, warmup: int, batch: int, max_tokens: int, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import resolve_template
    from ambient_rlhf.train.dpo import encode, load_pairs

    # exactly the pairs our side trains on, as the texts of our truncated tokens
    ours = _cfg(data, model, "unused", 1, batch, max_tokens)
    tok = load_tokenizer(model)
    examples, _ = encode(tok, load_pairs(ours, "train", {}), ours, resolve_template(tok, "auto"))
    eos = tok.eos_token_id

    def answer(ids, p):
        body = ids[p:]
        return tok.decode(body[:-1] if body and body[-1] == eos else body, skip_special_tokens=False)

    ds = Dataset.from_dict({
        "prompt": [tok.decode(e.chosen[:e.prompt_len], skip_special_tokens=False) for e in examples],
        "chosen": [answer(e.chosen, e.prompt_len) for e in examples],
        "rejected": [answer(e.rejected, e.prompt_len) for e in examples],
    })
    lm = load_causal_lm(model)
    seen = {"tokens": 0, "count": False}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:
                seen["t0"], seen["tokens"], seen["count"] = time.perf_counter(), 0, True
            if state.global_step == warmup + steps:
                seen["t1"] = time.perf_counter()

    cfg = TRLConfig(output_dir=str(tmp / f"trl-{time.time_ns()}"), per_device_train_batch_size=batch,
                    gradient_accumulation_steps=1, max_length=None, max_steps=warmup + steps, learning_rate=1e-6,
                    lr_scheduler_type="constant", warmup_steps=0, logging_steps=10_000, save_strategy="no",
                    report_to=[], use_cpu=True, bf16=False, seed=0, beta=0.1, loss_type=["sigmoid"],
                    precompute_ref_log_probs=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = DPOTrainer(model=lm, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
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
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=2, help="pairs per step (2x sequences)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per sequence (prompt + answer)")
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

            data = str(make_data_dir(tmp / "data", n_threads=18, k=4))  # 12 train threads x 4 pairs
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
    result("dpo", ours=best["ours"], peer=best["trl"], unit="tokens/s", higher_is_better=True, target=1.2,
           peer_name="TRL DPOTrainer", threads=args.threads, model=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
