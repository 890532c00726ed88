"""``ambient dpo``: argument parsing."""

from __future__ import annotations

import argparse
import os

from ambient_rlhf.cli import common_parser, parse_stage
from ambient_rlhf.train.dpo.config import DPOConfig
from ambient_rlhf.train.dpo.loop import train_dpo


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient dpo", parents=[common_parser()],
                                description="Direct preference optimisation on a data directory's preference pairs "
                                            "(no reward model, no sampling).")
    p.add_argument("--data", help="data directory (from `ambient data build`)")
    p.add_argument("--model", help="start model and reference: an SFT directory | default | tiny-random")
    p.add_argument("--out", help="output directory")
    p.add_argument("--loss", choices=["dpo", "cdpo", "ipo", "ln_dpo", "rdpo"], help="the preference loss (default dpo)")
    p.add_argument("--pairs", choices=["time_rule", "all", "ranking"], help="which preferences train (default time_rule)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args, cfg = parse_stage(p, argv, DPOConfig, values=("data", "model", "out", "loss", "pairs"),
                            switches=("resume", "overwrite"))
    if cfg is None:
        return 0
    out = train_dpo(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0
