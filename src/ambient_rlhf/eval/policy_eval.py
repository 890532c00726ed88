"""``ambient eval``: a policy against its reference on held-out prompts, judged by a gold
reward model.

    ambient eval --policy RUN/rl --reference RUN/sft --judge RUN/rm-gold --data RUN/data \\
                 [--proxy RUN/rm-proxy] [--out DIR] [--goal good]

The judge must not be the reward model that RL optimised (that one is the *proxy*:
its score rises by construction and says nothing about quality; Gao et al. 2022).

Steps of :func:`evaluate_policy`:

1. take ``n_prompts`` prompts of the ``split`` (one per thread, a seeded choice);
2. sample ``samples_per_prompt`` answers per prompt from the policy (with the goal token
   when ``goal`` is set) and from the reference, with ``train.generate.generate``;
3. sequence KL(policy || reference) per policy sample: the sum over its response tokens
   of ``logp_policy - logp_ref``, both at the sampling temperature (the k1 estimator, the
   quantity the RL stage penalises); its mean over samples estimates the KL;
4. score every answer with the judge (and the proxy, when given);
5. optionally the simulated community's hidden ``true_utility(prompt, response)``;
6. win rate of policy over reference (sample i of the policy against sample i of the
   reference for the same prompt; ties count half), with a percentile bootstrap interval
   over prompts (samples of one prompt are not independent); length and distinct-n;
7. write ``eval.json``, ``samples.jsonl``, ``samples.csv`` and ``manifest.json``.

Step 6 (:func:`summarize`, :func:`verdict`) is pure and lives in
:mod:`ambient_rlhf.eval.policy_summary`; the command line is :mod:`ambient_rlhf.cli.eval`.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np

from ambient_rlhf import AmbientError
from ambient_rlhf.config import above, at_least, check_bounds, to_dict
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.eval.policy_sides import (Side, _load_side, _sample, response_lengths,  # noqa: F401
                                            response_logprobs)  # (response_*: re-exported)
from ambient_rlhf.eval.policy_summary import summarize, verdict  # noqa: F401  (verdict: re-exported)
from ambient_rlhf.io import atomic_dir, write_json, write_manifest
from ambient_rlhf.logging import get_logger

log = get_logger("eval")

TrueUtility = Callable[[str, str], float]


@dataclass
class EvalConfig:
    policy: str = ""
    """The model under test: a model directory (RL output, or the tier-conditioned SFT
    model with ``goal``) or a model name (``tiny-random``, ``default``). Required."""
    reference: str = ""
    """The model it is compared with, usually the plain SFT model (RL's KL anchor). Required."""
    judge: str = ""
    """Gold reward model directory that scores both sides. Must not be the reward model
    RL optimised: that one is ``proxy``. Required."""
    data: str = ""
    """Data directory (``responses.parquet``) whose ``split`` prompts are used. Required."""
    out: str = "eval"
    """Output directory (eval.json, samples.jsonl, samples.csv, manifest.json)."""
    overwrite: bool = False
    """Replace ``out`` if it exists (otherwise an existing ``out`` is an error, so a
    finished evaluation is never clobbered by accident)."""
    proxy: str | None = None
    """Optional: the reward model RL optimised. Both sides are scored with it too, so the
    report can set the proxy gain beside the gold gain (reward over-optimisation)."""
    split: str = "test"
    """Split whose prompts are used: ``test`` is held out from every training stage."""
    n_prompts: Annotated[int, at_least(1)] = 64
    """Number of prompts (threads). 64 prompts x 2 samples gives a win-rate interval of
    about +-0.1 at 0.5, and takes a minute or two for the default model on a CPU."""
    samples_per_prompt: Annotated[int, at_least(1)] = 2
    """Answers sampled per prompt from each side. More than one averages out sampling
    noise; the bootstrap resamples prompts, not samples, so this does not fake precision."""
    max_new_tokens: Annotated[int, at_least(1)] = 64
    """Longest answer in tokens. 64 matches the RL stage's default response length, so
    the policy is judged on answers of the length it was trained to write."""
    temperature: Annotated[float, above(0)] = 0.7
    """Sampling temperature for both sides, and the temperature of the log-probs in the
    KL. 0.7 matches the RL stage's sampling (lm-human-preferences), so the KL here is the
    one RL controlled."""
    goal: str | None = None
    """Quality tier (``good``, ``ok``, ``bad``) whose control token is added to the
    *policy's* prompts: for the tier-conditioned SFT model (``--goal good``), compared
    with plain SFT on the same judge. None for RL policies."""
    reference_goal: str | None = None
    """Quality tier whose control token is added to the *reference's* prompts. With the
    same tier-conditioned model on both sides, ``goal=good reference_goal=bad`` is the
    **steering test**: only the goal token differs between the two sides (same prompts,
    same sampling seed), so every difference is the goal's effect, and eval.json gains a
    ``steering`` block (good minus bad on the true utility, the judge and the length, with
    intervals over threads) and ``token_shift`` (per-token KL between the two goals and
    the tokens whose probabilities move most). None: the reference is prompted plainly."""
    token_shift_top: Annotated[int, at_least(1)] = 12
    """Steering test only: how many tokens ``token_shift`` lists as gaining and as losing
    the most probability under ``goal`` against ``reference_goal``."""
    batch_size: Annotated[int, at_least(1)] = 8
    """Sequences per forward pass when sampling, computing log-probs and scoring. 8 keeps
    the default model's logits under ~200 MB on a CPU."""
    bootstrap_resamples: Annotated[int, at_least(1)] = 1000
    """Bootstrap resamples for every interval; 1000 makes the 95% ends stable to ~0.01."""
    seed: int = 0
    """Seed of the prompt choice, the sampling and the bootstrap (same seed, same numbers)."""
    template: str = "auto"
    """Prompt template: ``auto`` uses, for each model, the template recorded when it was
    trained (``ambient_model.json``; a reward model's ``reward_config.json``), else the
    tokenizer's chat template, else ``plain``; ``chat`` or ``plain`` force one for all."""
    max_prompt_tokens: Annotated[int, at_least(1)] = 256
    """Prompt budget in tokens; longer prompts are cut from the left (the end of a
    question is nearest the answer), as in training."""
    true_utility: Literal["auto", "on", "off"] = "auto"
    """Also compute the simulated community's hidden utility of every answer
    (``ambient_rlhf.data.simulate.true_utility``): ``auto`` when the data directory
    comes from ``ambient data simulate``, ``on`` always (an error when unavailable),
    ``off`` never."""
    sample_cache: str | None = None
    """Directory of sampled answers, keyed by model (its files' names, sizes and times),
    goal, prompts and sampling settings: a side sampled before under the same key is read
    back instead of sampled again -- the same text, since each side samples from ``seed``
    alone. ``ambient run`` points its evaluations at ``OUT/cache/eval-samples``, where
    the SFT reference of eval/, eval-dpo/ and eval-goal/ (and the goal-conditioned side of
    eval-goal/ and eval-steer/) is sampled once. None: always sample."""
    n_table: Annotated[int, at_least(0)] = 8
    """Prompts shown in the side-by-side sample table of eval.json (all samples are in
    samples.jsonl)."""


def _validate(cfg: EvalConfig) -> None:
    for key in ("policy", "reference", "judge", "data"):
        if not getattr(cfg, key):
            raise AmbientError(f"eval: config key '{key}' is required (--{key} DIR)")
    check_bounds(cfg)  # declared on the fields (load_config checks them too)
    for key in ("goal", "reference_goal"):
        if getattr(cfg, key) is not None and getattr(cfg, key) not in TIERS:
            raise AmbientError(f"eval: {key}={getattr(cfg, key)!r}; expected one of {', '.join(TIERS)}")
    if cfg.n_prompts < 1 or cfg.samples_per_prompt < 1 or cfg.max_new_tokens < 1:
        raise AmbientError("eval: n_prompts, samples_per_prompt and max_new_tokens must be >= 1")
    if cfg.temperature <= 0:
        raise AmbientError(f"eval: temperature={cfg.temperature}; must be > 0 (the KL is taken at it)")


# ---- step 1: prompts -----------------------------------------------------------------------
def load_prompts(data_dir: str | Path, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (thread_id, prompt) of ``split``, a seeded choice among its threads."""
    import pandas as pd

    from ambient_rlhf.data.schema import RESPONSES_FILE

    path = Path(data_dir) / RESPONSES_FILE
    if not path.is_file():
        raise AmbientError(f"{path}: not found; --data must be a data directory from `ambient data build`")
    df = pd.read_parquet(path, columns=["thread_id", "prompt", "split"])
    sub = df[df["split"] == split].drop_duplicates("thread_id").sort_values("thread_id")
    if sub.empty:
        counts = df.drop_duplicates("thread_id")["split"].value_counts().to_dict()
        raise AmbientError(f"{path}: no threads in split '{split}' (threads per split: {counts}); choose split=...")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(sub))[:n]
    sub = sub.iloc[np.sort(idx)]
    if len(sub) < n:
        log.warning("split '%s' has %d threads; evaluating on all of them (n_prompts=%d)", split, len(sub), n)
    return list(zip(sub["thread_id"].astype(str), sub["prompt"].astype(str)))


# ---- step 4: reward models -----------------------------------------------------------------
def load_judge(path: str, device=None):
    """A reward model (single or composite) and its tokenizer, in eval mode on ``device``."""
    from ambient_rlhf.models.reward_model import load_reward_model

    rm = load_reward_model(path)
    if device is not None:
        rm.to(device)
    rm.eval()
    return rm, rm.tokenizer


def score(rm, prompts: list[str], responses: list[str], community: str | None = None,
          ended: list[bool] | np.ndarray | None = None, batch_size: int = 8, device=None) -> np.ndarray:
    """Normalised reward of each (prompt, response), (N,).  No goal token: the judge sees
    the question and the answer only, rendered as it was trained (its own template,
    community prefix and budgets; ``models.reward_inputs``).  ``ended``: whether each
    answer stopped by itself (no EOS for one cut at the generation limit); default all."""
    from ambient_rlhf.models.reward_inputs import RewardFunction

    fn = RewardFunction(rm, device=device, batch_size=batch_size)
    ended_l = [bool(e) for e in ended] if ended is not None else None
    return fn.texts(prompts, responses, [community] * len(prompts), ended_l).double().numpy()


class Judges:
    """Several reward models scoring the same texts (:meth:`score`): the same numbers as
    :func:`score` with each alone, with the bottom layers they share (a proxy and a gold
    model trained from one base) run once per batch (``RewardFunction.of_models``; its
    one-time check is shared by every call).  Combined models score on their own (their
    members share among themselves)."""

    def __init__(self, rms: list, batch_size: int = 8, device=None):
        from ambient_rlhf.models.reward_inputs import RewardFunction

        self.rms, self.batch_size, self.device = rms, batch_size, device
        self.single = [k for k, rm in enumerate(rms) if getattr(rm, "members", None) is None]
        self.fn = (RewardFunction.of_models([rms[k] for k in self.single], device=device, batch_size=batch_size)
                   if self.single else None)

    def score(self, prompts: list[str], responses: list[str], community: str | None = None,
              ended: list[bool] | np.ndarray | None = None) -> list[np.ndarray]:
        """Each model's normalised rewards (N,) of the (prompt, response) pairs."""
        out: list = [None] * len(self.rms)
        if self.fn is not None:
            ended_l = [bool(e) for e in ended] if ended is not None else None
            for k, r in zip(self.single, self.fn.each_texts(prompts, responses, [community] * len(prompts), ended_l)):
                out[k] = r.double().numpy()
        for k, rm in enumerate(self.rms):
            if out[k] is None:
                out[k] = score(rm, prompts, responses, community, ended, self.batch_size, self.device)
        return out


# ---- step 5: the simulated community's hidden utility -------------------------------------
def is_simulated(data_dir: str | Path) -> bool:
    """Whether a data directory was built from ``ambient data simulate`` output: its
    manifest says ``"simulated": true``, or one of its inputs (or the input's folder) has
    the simulator's ``utility.parquet`` or a manifest whose stage is ``simulate``."""
    m_path = Path(data_dir) / "manifest.json"
    try:
        m = json.loads(m_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if m.get("simulated") or m.get("stage") == "simulate":
        return True
    from ambient_rlhf.data.simulate import UTILITY_FILE

    for inp in m.get("inputs", []) or []:
        p = Path(inp.get("path", "")) if isinstance(inp, dict) else Path(str(inp))
        # input paths are recorded as given (maybe relative to another working directory):
        # also look for the dump's folder beside the data directory, as `ambient run` lays it out
        for d in (p, p.parent, Path(data_dir).parent / p.parent.name):
            if (d / UTILITY_FILE).is_file():
                return True
            try:
                if json.loads((d / "manifest.json").read_text()).get("stage") == "simulate":
                    return True
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
    return False


def resolve_true_utility(cfg: EvalConfig) -> TrueUtility | None:
    if cfg.true_utility == "off" or (cfg.true_utility == "auto" and not is_simulated(cfg.data)):
        return None
    try:
        from ambient_rlhf.data.simulate import true_utility
    except ImportError as e:
        if cfg.true_utility == "on":
            raise AmbientError(f"true_utility=on but ambient_rlhf.data.simulate.true_utility is unavailable ({e})") from None
        log.warning("data looks simulated but true_utility is unavailable (%s); skipping it", e)
        return None
    return true_utility


# ---- the evaluation ------------------------------------------------------------------------
def evaluate_policy(cfg: EvalConfig, true_utility: TrueUtility | None = None) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; return eval.json's content.

    ``true_utility``: a ``(prompt, response) -> float`` to use instead of the simulated
    community's (tests pass one); otherwise chosen by ``cfg.true_utility``."""
    from ambient_rlhf.checkpoint import seed_everything
    from ambient_rlhf.data.tables import community_name
    from ambient_rlhf.models.load import default_device

    _validate(cfg)
    t0 = time.time()
    timings: dict[str, float] = {}
    device = default_device()
    seed_everything(cfg.seed)
    utility = true_utility or resolve_true_utility(cfg)

    # step 1. prompts, each repeated once per sample
    chosen = load_prompts(cfg.data, cfg.split, cfg.n_prompts, cfg.seed)
    k = cfg.samples_per_prompt
    tids = [t for t, _ in chosen for _ in range(k)]
    prompts = [p for _, p in chosen for _ in range(k)]
    community = community_name(cfg.data)
    log.info("evaluating on %d prompts x %d samples", len(chosen), k)

    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        # steps 2-3. samples from both sides; KL(policy || reference) on the policy's own
        # samples.  One language model in memory at a time.
        t = time.time()
        pol = _load_side(cfg.policy, cfg, cfg.goal, device)
        pol_text = _sample(pol, prompts, cfg, cfg.policy)
        timings["generate_s"] = time.time() - t
        t = time.time()
        lp_pol, _ = response_logprobs(pol, prompts, pol_text, cfg)
        n_pol, stop_pol = response_lengths(pol, prompts, pol_text, cfg)
        timings["logprobs_s"] = time.time() - t
        # the steering test: one model, two goals -- reuse the loaded weights
        same = cfg.reference == cfg.policy
        if same:
            ref = Side(pol.model, pol.tok, pol.template, cfg.reference_goal)
        else:
            del pol
            gc.collect()
            ref = _load_side(cfg.reference, cfg, cfg.reference_goal, device)
        t = time.time()
        ref_text = _sample(ref, prompts, cfg, cfg.reference)
        timings["generate_s"] += time.time() - t
        t = time.time()
        lp_ref, _ = response_logprobs(ref, prompts, pol_text, cfg)
        n_ref, stop_ref = response_lengths(ref, prompts, ref_text, cfg)
        timings["logprobs_s"] += time.time() - t
        shift = None
        if same and cfg.goal != cfg.reference_goal:  # only the input differs: how far does it move p?
            from ambient_rlhf.eval.goal_shift import token_shift

            t = time.time()
            shift = token_shift(ref.model, ref.tok, ref.template, prompts, tids, pol_text, ref_text, cfg.goal,
                                cfg.reference_goal, cfg)
            timings["token_shift_s"] = time.time() - t
        del ref
        pol = None
        gc.collect()
        kl = lp_pol - lp_ref  # (N,) sequence k1 estimate per policy sample

        # step 4. judge (and proxy) scores
        t = time.time()
        judges = [(name, path) for name, path in (("judge", cfg.judge), ("proxy", cfg.proxy)) if path]
        # together: the layers they share run once
        both = Judges([load_judge(path, device)[0] for _, path in judges], cfg.batch_size, device)
        on_pol = both.score(prompts, pol_text, community, stop_pol)
        on_ref = both.score(prompts, ref_text, community, stop_ref)
        scores: dict[str, tuple[np.ndarray, np.ndarray]] = {
            name: (a, b) for (name, _), a, b in zip(judges, on_pol, on_ref)}
        del both
        gc.collect()
        timings["score_s"] = time.time() - t

        # step 5. hidden utility of the simulated community
        util = None
        if utility is not None:
            util = (np.array([utility(p, r) for p, r in zip(prompts, pol_text)], dtype=float),
                    np.array([utility(p, r) for p, r in zip(prompts, ref_text)], dtype=float))

        # step 6. statistics
        rows = []
        for i in range(len(prompts)):
            row = {
                "thread_id": tids[i], "sample": i % k, "prompt": prompts[i],
                "reference": ref_text[i], "policy": pol_text[i],
                "reference_score": float(scores["judge"][1][i]), "policy_score": float(scores["judge"][0][i]),
                "kl": float(kl[i]), "policy_tokens": int(n_pol[i]), "reference_tokens": int(n_ref[i]),
                "policy_stopped": bool(stop_pol[i]), "reference_stopped": bool(stop_ref[i]),
            }
            if "proxy" in scores:
                row["reference_proxy"] = float(scores["proxy"][1][i])
                row["policy_proxy"] = float(scores["proxy"][0][i])
            if util is not None:
                row["reference_true_utility"] = float(util[1][i])
                row["policy_true_utility"] = float(util[0][i])
            rows.append(row)
        result = summarize(rows, cfg)
        if shift is not None:
            result["token_shift"] = shift
        result["seconds"] = {**{k_: round(v, 2) for k_, v in timings.items()}, "total_s": round(time.time() - t0, 2)}

        # step 7. files
        write_json(tmp / "eval.json", result)
        with (tmp / "samples.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        import pandas as pd

        pd.DataFrame(rows).to_csv(tmp / "samples.csv", index=False)
        inputs = [p for p in (cfg.policy, cfg.reference, cfg.judge, cfg.data, cfg.proxy) if p and Path(p).exists()]
        write_manifest(tmp, "eval", to_dict(cfg), inputs=inputs,
                       counts={"prompts": len(chosen), "samples": len(rows)}, seconds=result["seconds"])
    log.info("eval: win rate %.3f [%.3f, %.3f], KL %.2f -> %s", result["win_rate"]["value"],
             result["win_rate"]["low"], result["win_rate"]["high"], result["kl"]["value"], cfg.out)
    return result
