"""The ``ambient`` command: the only entry point, and argument parsing only.

Each command is a module ``ambient_rlhf.cli.<command>`` with a ``cli(argv) -> int``
that parses its arguments, calls the library function doing the work, and prints the
result (``data simulate`` is :mod:`ambient_rlhf.cli.simulate`, reached through
``cli.data``).  The helpers below (:func:`common_parser`, :func:`split_overrides`,
:func:`parse_stage`) serve those modules only: no module outside this package imports
``ambient_rlhf.cli`` (``tests/test_import_graph.py`` checks it)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ambient_rlhf import AmbientError, __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("ambient_rlhf.cli.data", "build a data directory from dumps/tables (build), crawl Reddit into dumps (crawl), find dialog acts and their feedback (acts), or simulate a community (simulate)"),
    "sft": ("ambient_rlhf.cli.sft", "behaviour cloning: fine-tune a causal LM on prompt -> response"),
    "generate": ("ambient_rlhf.cli.generate", "sample completions from a model"),
    "rm": ("ambient_rlhf.cli.rm", "train (default), evaluate (eval) or combine (combine) reward models"),
    "rl": ("ambient_rlhf.cli.rl", "policy optimisation against a reward model: ppo, rloo, reinforce"),
    "dpo": ("ambient_rlhf.cli.dpo", "direct preference optimisation on upvote pairs (no reward model): dpo, ipo, ..."),
    "eval": ("ambient_rlhf.cli.eval", "compare a policy with its reference on held-out prompts"),
    "label": ("ambient_rlhf.cli.label", "a local web page for explicit A/B comparisons; export them as pairs (export)"),
    "export": ("ambient_rlhf.cli.export", "write a data directory as TRL / datasets files (trl)"),
    "report": ("ambient_rlhf.cli.report", "write report.html for a run directory"),
    "run": ("ambient_rlhf.cli.run", "the whole pipeline in one command"),
}


def common_parser() -> argparse.ArgumentParser:
    """Options every command accepts: ``-v``, ``--config``, ``--help-config``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--config", default=None, help="YAML file with config keys (overridden by key=value arguments)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    return p


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from the other arguments.

    An override is a token that does not start with ``-`` and whose part before the first
    ``=`` is a dotted identifier (``labels.min_score_ratio=3``)."""
    import re

    pat = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")
    rest, overrides = [], []
    after_dashdash = False
    for tok in argv:
        if tok == "--":
            after_dashdash = True
            continue
        if not after_dashdash and pat.match(tok):
            overrides.append(tok)
        else:
            rest.append(tok)
    return rest, overrides


PEFT_CHOICES = ("none", "lora", "prompt")
PEFT_HELP = ("lora: low-rank adapters; prompt: soft prompts only, every model weight frozen "
             "(peft prompt tuning); none: full fine-tuning (the default)")


def peft_overrides(argv: list[str]) -> list[str]:
    """``--peft lora|prompt|none`` as config overrides (``lora.enabled``,
    ``prompt_tuning.enabled``), appended after the user's own so the flag wins."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--peft", choices=PEFT_CHOICES)
    known, _ = pre.parse_known_args(argv)
    if known.peft is None:
        return []
    return [f"lora.enabled={str(known.peft == 'lora').lower()}",
            f"prompt_tuning.enabled={str(known.peft == 'prompt').lower()}"]


def parse_stage(parser: argparse.ArgumentParser, argv: list[str], config_cls: type,
                values: tuple[str, ...] = (), switches: tuple[str, ...] = ()):
    """The shared front half of a stage command.

    Parses ``argv`` (``key=value`` overrides split off first), sets up logging, and builds
    the stage config from defaults <- ``--config`` YAML <- flags <- overrides.  Flags named
    in ``values`` are shortcuts for the config key of the same name (used when given);
    ``switches`` (``store_true`` flags) set their key to true.  Returns ``(args, cfg)``, or
    ``(args, None)`` after printing the keys for ``--help-config``."""
    from ambient_rlhf.config import config_help, load_config
    from ambient_rlhf.logging import setup_logging

    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(config_cls))
        return args, None
    flags = [f"{k}={getattr(args, k)}" for k in values if getattr(args, k, None) is not None]
    flags += [f"{k}=true" for k in switches if getattr(args, k, False)]
    return args, load_config(config_cls, args.config, flags + overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"ambient {__version__}: train language models from community feedback\n")
        print("usage: ambient COMMAND [options] [key=value ...]\n\ncommands:")
        for name, (_, h) in COMMANDS.items():
            print(f"  {name:<9} {h}")
        print("\n`ambient COMMAND --help` for a command's options; `--help-config` for its config keys.")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        print(f"error: unknown command '{cmd}'; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    try:
        return int(module.cli(argv[1:]) or 0)
    except AmbientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
