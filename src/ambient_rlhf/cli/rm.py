"""``ambient rm``: argument parsing for training, ``rm eval`` and ``rm combine``."""

from __future__ import annotations

import argparse
import os

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import common_parser, split_overrides
from ambient_rlhf.config import config_help, load_config
from ambient_rlhf.logging import setup_logging
from ambient_rlhf.train.reward.config import OBJECTIVES, RewardConfig


def _cli_eval(argv: list[str]) -> int:
    from ambient_rlhf.eval.reward_eval import evaluate_reward, format_summary

    p = argparse.ArgumentParser(prog="ambient rm eval", parents=[common_parser()],
                                description="evaluate a reward model on a data directory's pairs, with baselines")
    p.add_argument("--model", required=True, help="reward model directory (ambient rm / rm combine)")
    p.add_argument("--data", required=True, help="data directory (any community)")
    p.add_argument("--split", default="test", help="split whose pairs are evaluated (default test)")
    p.add_argument("--out", default=None, help="where eval.json and plots go (default MODEL/eval/<community>-<split>)")
    p.add_argument("--loglik-model", default="auto", help="auto | none | self | a model for the log-likelihood baseline")
    p.add_argument("--max-pairs", type=int, default=0, help="evaluate at most this many pairs (whole threads; 0 = all)")
    p.add_argument("--batch-size", type=int, default=8, help="texts scored together (default 8)")
    p.add_argument("--feature-cache", default=None, help="feature_cache directory of a head-only model's training")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    res = evaluate_reward(args.model, args.data, split=args.split, out=args.out, loglik_model=args.loglik_model,
                          max_pairs=args.max_pairs, batch_size=args.batch_size, feature_cache=args.feature_cache)
    print(format_summary(res))
    return 0


def _cli_combine(argv: list[str]) -> int:
    from ambient_rlhf.train.reward.combine import combine

    p = argparse.ArgumentParser(prog="ambient rm combine", parents=[common_parser()],
                                description="weighted sum of normalised rewards, usable as one reward model")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="reward-model directories (ambient rm output); each reward is used normalised")
    p.add_argument("--weights", default=None, help="comma-separated, one per model (default: all 1)")
    p.add_argument("--out", required=True, help="output directory of the combined reward model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        w = [float(x) for x in args.weights.split(",")] if args.weights else [1.0] * len(args.models)
    except ValueError:
        raise AmbientError(f"--weights {args.weights!r}: expected numbers separated by commas") from None
    print(combine(args.models, w, args.out, overwrite=args.overwrite))
    return 0


def cli(argv: list[str]) -> int:
    if argv and argv[0] == "eval":
        return _cli_eval(argv[1:])
    if argv and argv[0] == "combine":
        return _cli_combine(argv[1:])
    from ambient_rlhf.train.reward.loop import train_reward

    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient rm", parents=[common_parser()],
                                description="train a reward model (subcommands: eval, combine)",
                                epilog="any config key as key=value; --help-config lists them")
    p.add_argument("--data", nargs="+", default=None, help="data directories (several = one merged model)")
    p.add_argument("--model", default=None,
                   help="model to start from: the SFT output directory (best), default, tiny-random or a model dir")
    p.add_argument("--out", default=None, help="output directory (a *ForSequenceClassification model dir)")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="pairwise (default): Bradley-Terry on pairs; ranking: K-way; tiers: good/ok/bad "
                        "classifier; reply-sentiment: regress the replies' sentiment")
    p.add_argument("--train-half", default=None, choices=("all", "a", "b"),
                   help="train on all threads (default) or half a/b (a proxy and a gold judge on disjoint threads)")
    p.add_argument("--train-layers", type=int, default=None, help="-1 all, 0 head only, N top layers")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(RewardConfig))
        return 0
    flags = []
    if args.data:
        flags.append("data=" + ",".join(args.data))
    for key, val in (("model", args.model), ("out", args.out), ("objective", args.objective),
                     ("train_half", args.train_half), ("train_layers", args.train_layers)):
        if val is not None:
            flags.append(f"{key}={val}")
    if args.resume:
        flags.append("resume=true")
    if args.overwrite:
        flags.append("overwrite=true")
    cfg = load_config(RewardConfig, args.config, flags + overrides)
    out = train_reward(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one line from several processes
        print(out)
    return 0
