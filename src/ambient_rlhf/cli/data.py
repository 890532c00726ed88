"""``ambient data build|simulate``: argument parsing only.

It lives in the command layer, not in ``data/``: ``simulate`` samples answers from a
language model (:mod:`ambient_rlhf.simulate`, which builds on ``train/``), and ``data/``
imports nothing above it."""

from __future__ import annotations

import argparse
import json
import sys

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import common_parser, split_overrides
from ambient_rlhf.config import config_help, load_config
from ambient_rlhf.logging import setup_logging

USAGE = """usage: ambient data build SOURCE... --out DIR [options] [key=value ...]
       ambient data simulate [options]

  build     read dumps / tables / SHP files and write responses, pairs, rankings
  simulate  write a synthetic community with a known preference (ambient_rlhf.simulate)"""


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub == "build":
        return build_cli(rest)
    if sub == "simulate":
        return _simulate(rest)
    raise AmbientError(f"unknown data subcommand '{sub}'; valid: build, simulate")


def _simulate(argv: list[str]) -> int:
    from ambient_rlhf.cli.simulate import cli as simulate_cli

    return int(simulate_cli(argv) or 0)


def build_cli(argv: list[str]) -> int:
    from ambient_rlhf.data.build import DataConfig, build

    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient data build", parents=[common_parser()],
                                description="Build a data directory from community dumps or tables.")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="a directory (dump pair or table inside) or files: *_submissions + *_comments "
                        "NDJSON (.zst ok), a .csv/.jsonl/.parquet responses table, or SHP pair files")
    p.add_argument("--out", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--format", choices=["auto", "reddit", "table", "shp"], help="source.format (default: auto)")
    p.add_argument("--subreddit", help="filters.subreddit: keep only this subreddit")
    p.add_argument("--max-bad-fraction", type=float, help="max_bad_fraction (default 0.01)")
    p.add_argument("--keep-damaged", action="store_true",
                   help="source.keep_damaged: build from what a truncated/corrupt .zst holds (default: error)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="build the inputs in parallel on a local Dask cluster of N worker processes on 127.0.0.1 "
                        "(default 0: one process); the output is the same file for file")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="build on the Dask scheduler at ADDRESS (tcp://host:8786) instead; inputs, --out and "
                        "--parts-dir must be on a filesystem every worker sees at the same paths")
    p.add_argument("--parts-dir", metavar="DIR",
                   help="parallel builds: where finished inputs are kept until the build succeeds, so a failed "
                        "or interrupted build resumes per input (default: OUT.parts)")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(DataConfig))
        return 0
    if not args.sources:
        p.error("at least one SOURCE is required")
    if not args.out:
        p.error("--out DIR is required")
    flags = []
    if args.format:
        flags.append(f"source.format={args.format}")
    if args.subreddit:
        flags.append(f"filters.subreddit={args.subreddit}")
    if args.keep_damaged:
        flags.append("source.keep_damaged=true")
    if args.max_bad_fraction is not None:
        flags.append(f"max_bad_fraction={args.max_bad_fraction}")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.parts_dir and not (args.workers or args.cluster):
        p.error("--parts-dir needs --workers N or --cluster ADDRESS (the one-process build keeps no parts)")
    cfg = load_config(DataConfig, args.config, flags + overrides)
    if args.workers or args.cluster:
        from ambient_rlhf.data.parallel import build_parallel

        m = build_parallel(args.sources, args.out, cfg, overwrite=args.overwrite, workers=args.workers,
                           cluster=args.cluster, parts_dir=args.parts_dir)
    else:
        m = build(args.sources, args.out, cfg, overwrite=args.overwrite)
    c = m["counts"]
    summary = {k: c.get(k, {}) for k in ("threads_per_split", "responses_per_split", "pairs_per_split")}
    print(f"wrote {args.out}: " + json.dumps(summary), file=sys.stdout)
    return 0
