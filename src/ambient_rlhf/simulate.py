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


PACKAGED_ANSWERS = Path(__file__).parent / "presets" / "demo-answers.json.gz"
"""The demo community's answers (``ambient run``'s 200 x 4) as SmolLM2 sampled them on a
2-core AVX2 CPU (``parts.stack`` in the file): read back instead of sampled again (5-8
minutes of a fresh machine's first run) when their key matches."""

_LOADING_ONLY = {"transformers_version", "local_files_only", "_commit_hash", "_name_or_path"}
"""Config keys that record how a file was written or loaded, not what the model computes."""


def _json_digest(file: Path) -> str:
    import hashlib
    import json

    d = json.loads(file.read_text())
    d = {k: v for k, v in d.items() if k not in _LOADING_ONLY} if isinstance(d, dict) else d
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def answers_key(model_dir: str, gen_prompts: list[str], cfg: SimulateConfig) -> tuple[str, dict]:
    """The key of sampled answers: what decides them -- the model's weights (SHA-256 of
    every ``*.safetensors``), its ``config.json`` and ``generation_config.json`` (without
    the keys that only record the writing transformers version), the token ids the model
    is fed (the generation prompts as :func:`~ambient_rlhf.train.generate.generate`
    renders them with the model's tokenizer and template), the sampling settings and seed.
    Returns (hex key, its parts); ``parts["stack"]`` (torch, transformers, device and CPU
    kind, which fix the float rounding) is recorded beside the key, not in it."""
    import hashlib
    import json

    from ambient_rlhf.io import sha256_file
    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.train.generate import encode_prompts

    d = Path(model_dir)
    model: dict[str, str] = {}
    for f in sorted(d.glob("*.safetensors")):
        model[f.name] = sha256_file(f)
    for name in ("config.json", "generation_config.json"):
        if (d / name).is_file():
            model[name] = _json_digest(d / name)
    ids = encode_prompts(load_tokenizer(str(d), padding_side="left"), str(d), gen_prompts)
    parts = {
        "model": model,
        "prompt_ids": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "batch_size": cfg.batch_size,
        "seed": cfg.seed,
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    parts["stack"] = sampling_stack()
    return key, parts


def sampling_stack() -> dict[str, str]:
    """What fixes the float rounding of sampling here: torch and transformers versions and
    the device (on a CPU, its instruction set)."""
    import torch
    import transformers

    from ambient_rlhf.models.load import default_device

    device = default_device()
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "device": device.type if device.type != "cpu" else f"cpu-{torch.backends.cpu.get_cpu_capability()}"}


def _read_answers(file: Path, key: str, n: int) -> tuple[list[str], dict] | None:
    """The answers stored in ``file`` under ``key`` (n of them) and their key's parts
    (with the stack that sampled them), else None (said why when the file is damaged)."""
    import gzip
    import json

    try:
        got = json.loads(gzip.decompress(file.read_bytes()))
    except (OSError, ValueError, EOFError) as e:
        log.warning("%s: unreadable (%s); the answers are sampled again", file, e)
        return None
    if not isinstance(got, dict) or got.get("key") != key:
        return None
    answers = got.get("answers")
    if not isinstance(answers, list) or len(answers) != n or not all(isinstance(a, str) for a in answers):
        log.warning("%s: %s answers stored for %d prompts; the answers are sampled again", file,
                    len(answers) if isinstance(answers, list) else "no", n)
        return None
    return answers, got.get("parts") or {}


def write_answers(file: Path, key: str, parts: dict, answers: list[str]) -> None:
    """Store sampled answers under their key (gzip JSON, written atomically)."""
    import gzip
    import json
    import os

    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_bytes(gzip.compress(json.dumps({"key": key, "parts": parts, "answers": answers}).encode(), mtime=0))
    os.replace(tmp, file)


def model_responder(cfg: SimulateConfig, info: dict | None = None) -> Callable[[list[str]], list[str]]:
    """A responder sampling one answer per generation prompt from ``cfg.model`` (in
    batches of ``cfg.batch_size``, seeded by ``cfg.seed``; generate's progress bar shows
    the batches).  With ``cfg.reuse_answers``, answers sampled before under the same key
    (:func:`answers_key`) are read back instead: the package's demo answers, or
    ``cfg.answer_cache`` (``$AMBIENT_CACHE/answers/``), where every sampling is stored.
    ``info`` (a dict) gets where the answers came from (``answers_from``: package, cache
    or sampled), the key and the stack that sampled them (``answers_stack``)."""
    from ambient_rlhf.train.generate import generate, load_for_generation

    info = {} if info is None else info

    def respond(gen_prompts: list[str]) -> list[str]:
        from ambient_rlhf.models.load import cache_dir, resolve_model

        path = resolve_model(cfg.model)
        key = parts = store = None
        if cfg.reuse_answers:
            key, parts = answers_key(path, gen_prompts, cfg)
            store = Path(cfg.answer_cache or cache_dir() / "answers") / f"{key[:32]}.json.gz"
            for source, file in (("package", PACKAGED_ANSWERS), ("cache", store)):
                got = _read_answers(file, key, len(gen_prompts)) if file.is_file() else None
                if got is None:
                    continue
                answers, stored = got
                log.info("%d answers of %s read back from %s: the same model, fed tokens, sampling settings and "
                         "seed (simulate.reuse_answers=false samples them)", len(answers), cfg.model,
                         "the package" if source == "package" else file)
                if stored.get("stack") != parts["stack"]:
                    log.info("they were sampled with %s; sampling with %s may differ in rare tokens (float rounding)",
                             stored.get("stack"), parts["stack"])
                info.update(answers_from=source, answers_key=key, answers_stack=stored.get("stack"))
                return answers
        model = load_for_generation(path)
        log.info("sampling %d answers from %s", len(gen_prompts), cfg.model)
        answers = generate(model, gen_prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           batch_size=cfg.batch_size, seed=cfg.seed)
        if store is not None:
            try:
                write_answers(store, key, parts, answers)
            except OSError as e:  # a read-only cache costs the next run the sampling, nothing else
                log.warning("could not store the sampled answers in %s: %s", store, e)
        info.update(answers_from="sampled", answers_key=key, answers_stack=sampling_stack())
        return answers

    return respond


def simulate(out: str | Path, cfg: SimulateConfig, overwrite: bool = False) -> Path:
    """Simulate a community into ``out``, with answers from ``cfg.model`` (or templates);
    the manifest says where the answers came from (``answers_from``)."""
    if cfg.model == "template":
        return simulate_with(out, cfg, respond=template_responder(cfg.seed), overwrite=overwrite)
    info: dict = {}
    return simulate_with(out, cfg, respond=model_responder(cfg, info), overwrite=overwrite, extra=info)


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
    from ambient_rlhf.eval.policy_eval import Judges, load_judge
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
    # all the models at once: layers they share (a proxy and a gold model from one base) run once
    scored = Judges([load_judge(path)[0] for path in reward_models.values()], batch_size).score(
        held["prompt"].tolist(), held["response"].tolist(), community)
    for name, values in zip(reward_models, scored):
        held[name] = values
        result["reward_models"][name] = recovery_stats(held, [name], "true_utility")[name]
        result["comparisons"][name] = {f"vs_{o}": compare_recovery(held, name, o, "true_utility") for o in ("length", "score")}
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

