"""``ambient report RUN_DIR``: argument parsing; the page is written by
:func:`ambient_rlhf.eval.report.write_report`."""

from __future__ import annotations

import argparse

from ambient_rlhf.cli import common_parser
from ambient_rlhf.eval.report import write_report
from ambient_rlhf.logging import setup_logging


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient report", parents=[common_parser()],
                                description="Write a self-contained report.html (figures embedded) for a run directory.")
    p.add_argument("run_dir", nargs="?", help="run directory from `ambient run` (or one stage directory)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.help_config:
        print("ambient report has no config keys; it takes RUN_DIR and --out.")
        return 0
    if not args.run_dir:
        p.error("RUN_DIR is required")
    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0
