"""``ambient label``: argument parsing for the labelling page and ``label export``."""

from __future__ import annotations

import argparse
import os

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import setup_logging


def _parser(prog: str, description: str, **kw) -> argparse.ArgumentParser:
    """Only ``-v`` of the common options: ``ambient label`` has no config keys."""
    p = argparse.ArgumentParser(prog=prog, description=description, **kw)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    return p


def _cli_export(argv: list[str]) -> int:
    from ambient_rlhf.label.export import export_labels, format_summary

    p = _parser("ambient label export", "judgements -> a data directory (pairs.parquet) for ambient rm, "
                                        "with the agreement between labellers and with the upvotes")
    p.add_argument("--db", required=True, help="the labelling database (ambient label --db)")
    p.add_argument("--out", required=True, help="output directory (pairs.parquet, responses.parquet, manifest.json)")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"),
                   help="the split every exported pair is in (default train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    print(format_summary(export_labels(args.db, args.out, args.split, args.overwrite)))
    print(args.out)
    return 0


def cli(argv: list[str]) -> int:
    if argv and argv[0] == "export":
        return _cli_export(argv[1:])
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise AmbientError("ambient label needs a web framework and server: pip install -e '.[label]' "
                           "(starlette, uvicorn; scripts/setup.sh installs them)") from None
    from ambient_rlhf.label.server import launch

    p = _parser("ambient label", "a local web page for explicit A/B comparisons (subcommand: export)",
                epilog="keys on the page: a / b (or arrows) pick, t tie, s skip, u undo, n note")
    p.add_argument("--samples", nargs="+", default=[],
                   help="ambient eval directories or samples.jsonl (policy vs reference), data directories or "
                        "pairs.parquet (upvote pairs), or run directories holding them; optional when --db "
                        "already has items")
    p.add_argument("--db", required=True, help="SQLite database of items and judgements (created when absent)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host; every API request then needs the access token")
    p.add_argument("--token", default=os.environ.get("AMBIENT_LABEL_TOKEN"),
                   help="access token (default $AMBIENT_LABEL_TOKEN; generated for a remote bind)")
    p.add_argument("--max-upvote-pairs", type=int, default=50,
                   help="upvote pairs taken from each data directory (a seeded choice; 0 = all)")
    p.add_argument("--upvote-split", default="", help="take upvote pairs of this split only (default: any)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    launch(args.db, args.samples, args.host, args.port, args.token, args.allow_remote,
           args.max_upvote_pairs, args.upvote_split, args.seed)
    return 0
