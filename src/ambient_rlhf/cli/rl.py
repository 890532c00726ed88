"""``ambient rl``: argument parsing."""

from __future__ import annotations

import argparse


from ambient_rlhf.cli import PEFT_CHOICES, PEFT_HELP, common_parser, parse_stage, peft_overrides
from ambient_rlhf.train.rl.config import RLConfig
from ambient_rlhf.train.rl.loop import train_rl


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient rl", parents=[common_parser()],
                                description="Policy optimisation against a reward model (PPO, RLOO, REINFORCE).")
    p.add_argument("--policy", help="initial policy / reference (SFT output directory or model name)")
    p.add_argument("--reward", help="reward-model directory, token-count:<ids> or python:<module>:<fn>")
    p.add_argument("--data", help="data directory (prompts of the train split)")
    p.add_argument("--algo", choices=["ppo", "rloo", "reinforce"],
                   help="ppo (default; value model, GAE), rloo (leave-one-out baseline) or reinforce")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds and start over")
    p.add_argument("--peft", choices=PEFT_CHOICES, help=PEFT_HELP + "; prompt: the KL to the reference is paid "
                   "through the soft prompt alone")
    args, cfg = parse_stage(p, argv + peft_overrides(argv), RLConfig, values=("policy", "reward", "data", "algo", "out"),
                            switches=("resume", "overwrite"))
    if cfg is None:
        return 0
    out = train_rl(cfg)
    print(out)
    return 0

