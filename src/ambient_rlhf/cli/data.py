"""``ambient data build|crawl|acts|simulate``: argument parsing only.

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
       ambient data crawl SUBREDDIT... --out DIR [options] [key=value ...]
       ambient data acts DATA_DIR [options] [key=value ...]
       ambient data simulate [options]

  build     read dumps / tables / SHP files and write responses, pairs, rankings
  crawl     collect threads from the Reddit API (PRAW) into dump files build reads; resumable
  acts      find dialog acts in the comment trees and the feedback their replies give
            (acts.parquet, act_pairs.parquet in DATA_DIR; docs/acts.md)
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
    if sub == "crawl":
        return crawl_cli(rest)
    if sub == "acts":
        return acts_cli(rest)
    raise AmbientError(f"unknown data subcommand '{sub}'; valid: build, crawl, acts, simulate")


def acts_cli(argv: list[str]) -> int:
    from ambient_rlhf.acts import evaluate_labels, run_acts
    from ambient_rlhf.data.acts.config import ActsConfig

    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient data acts", parents=[common_parser()],
                                description="Find dialog acts (answer, explanation, summary, advice, correction) "
                                            "in a data directory's comment trees by BM25 over cue queries, classify "
                                            "the replies to each act, and write acts.parquet and act_pairs.parquet "
                                            "into DATA_DIR (docs/acts.md).")
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="an `ambient data build` directory of a Reddit dump")
    p.add_argument("--overwrite", action="store_true", help="replace acts.parquet / act_pairs.parquet")
    p.add_argument("--rerank", action="store_true", help="rerank=true: embedding cosine of each act's top hits")
    p.add_argument("--eval-labels", nargs=2, metavar=("ACTS_JSONL", "FEEDBACK_JSONL"),
                   help="only measure precision against hand-labelled files (tests/data/acts/*.jsonl); "
                        "with DATA_DIR also P@10 of its acts.parquet")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(ActsConfig))
        return 0
    cfg = load_config(ActsConfig, args.config, (["rerank=true"] if args.rerank else []) + overrides)
    if args.eval_labels:
        print(json.dumps(evaluate_labels(args.data_dir, *args.eval_labels, cfg), indent=1))
        return 0
    if not args.data_dir:
        p.error("DATA_DIR is required")
    s = run_acts(args.data_dir, cfg, overwrite=args.overwrite)
    print(f"wrote {args.data_dir}/acts.parquet ({s['acts']} acts on {s['comments_with_acts']} comments in "
          f"{s['threads_with_acts']} threads) and act_pairs.parquet ({json.dumps(s['pairs'])})")
    return 0


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


CRAWL_EPILOG = """credentials: a Reddit app of type 'script' (docs/data.md, Crawling): set praw_client_id and
praw_client_secret (and praw_user_agent) in the environment, or write them in a praw.ini
section and pass --site NAME. They are never printed or logged.

Rerun the same command to resume after a kill, to pick up new threads, and to fetch the
threads that were too young (mature_days) last time."""


def crawl_cli(argv: list[str]) -> int:
    from ambient_rlhf.data.crawl import CrawlConfig, crawl

    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient data crawl", parents=[common_parser()], epilog=CRAWL_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Collect whole threads of subreddits from the Reddit API into "
                                            "*_submissions / *_comments .ndjson.zst dumps (append-only, resumable).")
    p.add_argument("subreddits", nargs="*", metavar="SUBREDDIT", help="subreddit names (AskAcademia or r/AskAcademia)")
    p.add_argument("--out", help="crawl directory (created; an existing one is resumed / extended)")
    p.add_argument("--site", help="praw.ini section with the credentials (default: praw.ini's DEFAULT + environment)")
    p.add_argument("--mature-days", type=float, help="mature_days: fetch a thread once it is this old (default 7)")
    p.add_argument("--no-search", action="store_true", help="search_queries=[]: sweep the listings only")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(CrawlConfig))
        return 0
    if not args.subreddits:
        p.error("at least one SUBREDDIT is required")
    if not args.out:
        p.error("--out DIR is required")
    flags = []
    if args.mature_days is not None:
        flags.append(f"mature_days={args.mature_days}")
    if args.no_search:
        flags.append("search_queries=")
    cfg = load_config(CrawlConfig, args.config, flags + overrides)
    s = crawl(args.subreddits, args.out, cfg, site=args.site)
    print(f"crawled into {args.out}: " + json.dumps(s), file=sys.stdout)
    if s["waiting_to_mature"]:
        print(f"{s['waiting_to_mature']} threads are younger than {cfg.mature_days:g} days; rerun after "
              f"{s['next_due_utc']} UTC to fetch them", file=sys.stdout)
    hint = " source.window_days=0" if s["out_of_order"] else ""
    if s["out_of_order"]:
        print(f"{s['out_of_order']} threads were written after comments more than {cfg.window_days:g} days "
              f"newer than them; build with source.window_days=0", file=sys.stdout)
    print(f"next: ambient data build {args.out} --out DATA_DIR{hint}", file=sys.stdout)
    return 0
