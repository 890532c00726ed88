"""``ambient export trl DATA_DIR --out DIR``: argument parsing; the files are written by
:func:`ambient_rlhf.data.export.export_trl`."""

from __future__ import annotations

import argparse
import json

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import common_parser
from ambient_rlhf.logging import setup_logging

USAGE = """usage: ambient export trl DATA_DIR --out DIR [--format conversational|standard] [--overwrite]

  trl   pairs in TRL's preference format (prompt/chosen/rejected) and responses as
        prompt/completion, one JSON Lines file per split (datasets.load_dataset reads them)"""


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] != "trl":
        raise AmbientError(f"unknown export target '{argv[0]}'; valid: trl")
    from ambient_rlhf.data.export import FORMATS, export_trl

    p = argparse.ArgumentParser(prog="ambient export trl", parents=[common_parser()],
                                description="Write a data directory's pairs and responses as TRL datasets.")
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="data directory (from `ambient data build`)")
    p.add_argument("--out", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--format", choices=FORMATS, default="conversational",
                   help="conversational (default): chat messages, so TRL applies the tokenizer's chat "
                        "template; standard: plain strings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv[1:])
    setup_logging(args.verbose)
    if args.help_config:
        print("ambient export trl has no config keys; it takes DATA_DIR, --out, --format and --overwrite.")
        return 0
    if not args.data_dir:
        p.error("DATA_DIR is required")
    if not args.out:
        p.error("--out DIR is required")
    m = export_trl(args.data_dir, args.out, args.format, overwrite=args.overwrite)
    c = m["counts"]
    print(f"wrote {args.out}: " + json.dumps({k: c[k] for k in ("pairs_per_split", "responses_per_split",
                                                                "skipped_pairs", "skipped_responses")}))
    return 0
