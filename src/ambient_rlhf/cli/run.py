"""``ambient run [CONFIG] [key=value ...]``: argument parsing; the pipeline is
:func:`ambient_rlhf.run.run_pipeline` (its module docstring describes the stages)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from ambient_rlhf.cli import common_parser, split_overrides
from ambient_rlhf.logging import setup_logging
from ambient_rlhf.run import run_pipeline
from ambient_rlhf.run_config import load_run_config, preset_names, run_config_help


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cli(argv: list[str]) -> int:
    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(
        prog="ambient run", parents=[common_parser()],
        description="The whole pipeline (simulate/data -> sft -> rm -> rl -> eval -> report) in one run directory. "
                    "Re-running skips finished stages and resumes an interrupted one.")
    p.add_argument("config_file", nargs="?", metavar="CONFIG",
                   help=f"a preset ({', '.join(preset_names())}) or a YAML file; default: the demo")
    p.add_argument("--until", metavar="STAGE", default=None,
                   help="stop after this stage (e.g. rm-gold or truth); re-run without it to finish")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(run_config_help())
        return 0
    if args.config_file and args.config:
        p.error("give the preset either as CONFIG or as --config, not both")
    cfg = load_run_config(args.config_file or args.config, overrides)
    # `kill` (SIGTERM) stops the run like Ctrl-C: the stage is recorded as interrupted
    # and the next `ambient run` resumes it
    signal.signal(signal.SIGTERM, _interrupt)
    m = run_pipeline(cfg, until=args.until)
    ran = [s for s in m["stages"] if s["status"] == "ran"]
    where = f"stopped after {args.until}" if args.until else f"report: {Path(cfg.out) / 'report' / 'report.html'}"
    print(f"{cfg.out}: {len(ran)} stage(s) ran, {len(m['stages']) - len(ran)} up to date; {where}")
    return 0

