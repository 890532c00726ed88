"""``ambient generate``: argument parsing and printing; sampling is
:func:`ambient_rlhf.train.generate.generate`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import common_parser, split_overrides
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.logging import setup_logging
from ambient_rlhf.train.generate import generate, read_prompts


def cli(argv: list[str]) -> int:
    rest, overrides = split_overrides(argv)
    if overrides:
        raise AmbientError(f"ambient generate takes no key=value settings (got {overrides}); use the flags")
    p = argparse.ArgumentParser(prog="ambient generate", parents=[common_parser()],
                                description="Sample completions from a model (batched, KV cache, stops at EOS).")
    p.add_argument("prompt", nargs="?", help="one prompt (or use --prompts)")
    p.add_argument("--model", default="default", help="model directory or name (default: default)")
    p.add_argument("--prompts", help="file of prompts: .jsonl with a 'prompt' field, or one per line")
    p.add_argument("--goal", choices=list(TIERS), help="tier to ask for (tier-conditioned models)")
    p.add_argument("--out", help="write JSONL here instead of printing")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per completion (default 64)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature (default 0.7, the RL stage's default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1.0 = off (default)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together (default 8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--template", choices=["auto", "chat", "plain"], default="auto",
                   help="prompt template; auto (default) = what the model was trained with, else its chat template")
    p.add_argument("--max-prompt-tokens", type=int, default=256,
                   help="prompt budget in tokens, cut from the left (default 256)")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print("ambient generate has no config keys; see --help")
        return 0
    if (args.prompt is None) == (args.prompts is None):
        raise AmbientError("give one PROMPT or --prompts FILE")
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    texts = generate(args.model, prompts, goal=args.goal, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
                     template=args.template, max_prompt_tokens=args.max_prompt_tokens)
    rows = [{"prompt": q, "goal": args.goal, "completion": t} for q, t in zip(prompts, texts)]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, out)
        print(f"{len(rows)} completions -> {out}", file=sys.stderr)
    elif len(rows) == 1:
        print(texts[0])
    else:
        for r in rows:
            print(json.dumps(r))
    return 0
