"""``ambient data simulate``: a simulated community whose answers come from a language model.

The pure simulation (prompts, hidden utility, votes, the Pushshift-format dump) is in
:mod:`ambient_rlhf.data.simulate`; this module adds what ``data/`` may not import: a
responder that samples the K answers of every question from a causal LM with
:func:`ambient_rlhf.train.generate.generate` (default SmolLM2), and the command line::

    ambient data simulate --out sim/ [--threads 48 --responses 4 --seed 0 --model default]
    ambient data build sim/ --out data/

``--model template`` uses the model-free template composer (instant).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ambient_rlhf.cli import common_parser, split_overrides
from ambient_rlhf.config import config_help, load_config
from ambient_rlhf.data.simulate import SimulateConfig, simulate as simulate_with, template_responder
from ambient_rlhf.logging import get_logger, progress, setup_logging

log = get_logger("simulate")


def model_responder(cfg: SimulateConfig) -> Callable[[list[str]], list[str]]:
    """A responder sampling one answer per generation prompt from ``cfg.model``.

    The model is loaded once; each call samples with its own seed (``cfg.seed`` and the
    call's index), so a simulation is reproducible batch by batch."""
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer, resolve_model
    from ambient_rlhf.train.generate import generate

    path = resolve_model(cfg.model)
    model = load_causal_lm(path)
    model.eval()
    tok = load_tokenizer(path, padding_side="left")
    calls = [0]

    def respond(gen_prompts: list[str]) -> list[str]:
        calls[0] += 1
        return generate((model, tok), gen_prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        batch_size=cfg.batch_size, seed=cfg.seed * 100_003 + calls[0])

    return respond


def simulate(out: str | Path, cfg: SimulateConfig, overwrite: bool = False) -> Path:
    """Simulate a community into ``out``, with answers from ``cfg.model`` (or templates)."""
    respond = template_responder(cfg.seed) if cfg.model == "template" else model_responder(cfg)
    total = cfg.threads * cfg.responses
    with progress(total=total, desc="simulate", unit="answer") as bar:
        return simulate_with(out, cfg, respond=respond, overwrite=overwrite, on_progress=bar.update)


def cli(argv: list[str]) -> int:
    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient data simulate", parents=[common_parser()],
                                description="Simulate a community with known preferences (a Pushshift-format dump "
                                            "plus utility.parquet with each answer's true utility).")
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
