"""``ambient data simulate``: a simulated community whose answers come from a language model.

The pure simulation (prompts, hidden utility, votes, the Pushshift-format dump) is in
:mod:`ambient_rlhf.data.simulate`; this module adds what ``data/`` may not import: a
responder that samples the K answers of every question from a causal LM with
:func:`ambient_rlhf.train.generate.generate` (default SmolLM2).  The command
(:mod:`ambient_rlhf.cli.simulate`)::

    ambient data simulate --out sim/ [--threads 48 --responses 4 --seed 0 --model default]
    ambient data build sim/ --out data/

``--model template`` uses the model-free template composer (instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ambient_rlhf.data.simulate import SimulateConfig, simulate as simulate_with, template_responder
from ambient_rlhf.logging import get_logger

log = get_logger("simulate")


def model_responder(cfg: SimulateConfig) -> Callable[[list[str]], list[str]]:
    """A responder sampling one answer per generation prompt from ``cfg.model`` (in
    batches of ``cfg.batch_size``, seeded by ``cfg.seed``; generate's progress bar shows
    the batches)."""
    from ambient_rlhf.train.generate import generate, load_for_generation

    def respond(gen_prompts: list[str]) -> list[str]:
        from ambient_rlhf.models.load import resolve_model

        model = load_for_generation(resolve_model(cfg.model))
        log.info("sampling %d answers from %s", len(gen_prompts), cfg.model)
        return generate(model, gen_prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        batch_size=cfg.batch_size, seed=cfg.seed)

    return respond


def simulate(out: str | Path, cfg: SimulateConfig, overwrite: bool = False) -> Path:
    """Simulate a community into ``out``, with answers from ``cfg.model`` (or templates)."""
    respond = template_responder(cfg.seed) if cfg.model == "template" else model_responder(cfg)
    return simulate_with(out, cfg, respond=respond, overwrite=overwrite)


def evaluate_recovery(data_dir: str | Path, reward_models: dict[str, str], out: str | Path, split: str = "test",
                      batch_size: int = 8) -> dict:
    """What only a simulated community can show: how well the labels and the reward
    models recover the hidden utility, within threads.

    * ``labels``: the raw ``score`` and the confound-adjusted rank (``adjusted``) of the
      data stage, on every split and on ``split``;
    * ``reward_models``: each model's reward on the ``split`` answers (held out from all
      training), each reading the text as it was trained on (``models.reward_inputs``);
    * ``baselines``: text-only signals on the same answers: ``length`` (words; longer
      wins);
    * ``comparisons``: each reward model against the length baseline and against the raw
      score, as the mean within-thread Spearman difference with a thread-bootstrap
      interval (:func:`ambient_rlhf.data.simulate.compare_recovery`).
    Metrics: mean within-thread Spearman with the true utility and pair accuracy (see
    :func:`ambient_rlhf.data.simulate.recovery_stats`).  Writes ``out/eval.json`` and
    ``out/manifest.json`` (stage ``truth``); returns the result."""
    import time

    import pandas as pd

    from ambient_rlhf.data.schema import RESPONSES_FILE
    from ambient_rlhf.data.simulate import compare_recovery, recovery_stats, true_utility
    from ambient_rlhf.data.tables import community_name
    from ambient_rlhf.eval.policy_eval import load_judge, score
    from ambient_rlhf.io import atomic_dir, write_json, write_manifest

    t0 = time.time()
    df = pd.read_parquet(Path(data_dir) / RESPONSES_FILE)
    df["true_utility"] = [true_utility(p, r) for p, r in zip(df["prompt"], df["response"])]
    held = df[df["split"] == split].copy()
    result: dict = {"split": split, "labels": {"all": recovery_stats(df, ["score", "adjusted"], "true_utility"),
                                              split: recovery_stats(held, ["score", "adjusted"], "true_utility")},
                    "reward_models": {}}
    held["length"] = held["response"].str.split().str.len().astype(float)
    result["baselines"] = {"length": recovery_stats(held, ["length"], "true_utility")["length"]}
    result["comparisons"] = {}
    community = community_name(data_dir)
    for name, path in reward_models.items():
        rm, _ = load_judge(path)
        held[name] = score(rm, held["prompt"].tolist(), held["response"].tolist(), community, batch_size=batch_size)
        result["reward_models"][name] = recovery_stats(held, [name], "true_utility")[name]
        result["comparisons"][name] = {f"vs_{o}": compare_recovery(held, name, o, "true_utility") for o in ("length", "score")}
        del rm
    result["seconds"] = round(time.time() - t0, 1)
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "eval.json", result)
        held.drop(columns=["prompt"]).to_parquet(tmp / "scores.parquet", index=False)
        write_manifest(tmp, "truth", {"split": split, "reward_models": reward_models, "batch_size": batch_size},
                       inputs=[data_dir, *reward_models.values()], counts=result["labels"][split]["n"])
    log.info("true-utility recovery on %s (Spearman): score %.3f, adjusted %.3f, length %.3f; %s", split,
             result["labels"][split]["score"]["spearman"], result["labels"][split]["adjusted"]["spearman"],
             result["baselines"]["length"]["spearman"],
             ", ".join(f"{k} {v['spearman']:.3f}" for k, v in result["reward_models"].items()))
    return result

