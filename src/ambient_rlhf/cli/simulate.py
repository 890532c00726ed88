"""``ambient data simulate``: argument parsing; the simulation is
:func:`ambient_rlhf.simulate.simulate` (reached through ``ambient data``, see :mod:`ambient_rlhf.cli.data`)."""

from __future__ import annotations

import argparse

from ambient_rlhf.cli import common_parser, split_overrides
from ambient_rlhf.config import config_help, load_config
from ambient_rlhf.data.simulate import SimulateConfig
from ambient_rlhf.logging import setup_logging
from ambient_rlhf.simulate import simulate


def cli(argv: list[str]) -> int:
    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient data simulate", parents=[common_parser()],
                                description="Simulate a community with known preferences (a Pushshift-format dump "
                                            "plus truth/utility.parquet with each answer's true utility).")
    p.add_argument("--out", required=False, help="output directory (the dump); then `ambient data build OUT --out DATA`")
    p.add_argument("--threads", type=int, help="questions to simulate (config key threads)")
    p.add_argument("--responses", type=int, help="answers per question (config key responses)")
    p.add_argument("--seed", type=int, help="seed (config key seed)")
    p.add_argument("--model", help="answering model: default, tiny-random, a directory, or template (config key model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(SimulateConfig))
        return 0
    if not args.out:
        p.error("--out is required")
    flags = [f"{k}={getattr(args, k)}" for k in ("threads", "responses", "seed", "model") if getattr(args, k) is not None]
    cfg = load_config(SimulateConfig, args.config, flags + overrides)
    out = simulate(args.out, cfg, overwrite=args.overwrite)
    print(out)
    return 0
