"""``ambient sft``: argument parsing."""

from __future__ import annotations

import argparse
import os


from ambient_rlhf.cli import PEFT_CHOICES, PEFT_HELP, common_parser, parse_stage, peft_overrides
from ambient_rlhf.train.sft.config import SFTConfig
from ambient_rlhf.train.sft.loop import train_sft


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient sft", parents=[common_parser()],
                                description="Behaviour cloning: fine-tune a causal LM on prompt -> response.")
    p.add_argument("--data", help="data directory (from `ambient data build`)")
    p.add_argument("--model", help="start model: default | tiny-random | a model directory")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--condition", choices=["none", "tier"], help="tier: train with goal tokens")
    p.add_argument("--peft", choices=PEFT_CHOICES, help=PEFT_HELP + "; with --condition tier and prompt, one "
                   "soft prompt per tier")
    args, cfg = parse_stage(p, argv + peft_overrides(argv), SFTConfig, values=("data", "model", "out", "condition"),
                            switches=("resume", "overwrite"))
    if cfg is None:
        return 0
    out = train_sft(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0

