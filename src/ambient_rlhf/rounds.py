"""Iterated RLHF in ``ambient run``: ``rounds: N`` adds rounds 2..N after the first.

Round 1 is the ordinary run (``rm-proxy/``, ``rl/``, ``eval/``).  Round ``r >= 2``::

    feedback-r/   the round r-1 policy answers train-split questions again; new preferences
                  over its answers (feedback.source): the simulated readers vote on them in
                  fresh threads beside human answers (simulated community), a held-out
                  reward model ranks them (named as such), or explicit labels are read.
                  data/ is in the data stage's layout; feedback.json says how the round
                  r-1 proxy and the gold judge rank the policy's answers there.
    mix-r/        the reward model's data: the run's data (the proxy's half of the train
                  threads, every valid/test thread) + the feedback of rounds 2..r in the
                  train split (feedback.weight, feedback.recency)
    rm-proxy-r/   the proxy reward model retrained on mix-r (same recipe and seed)
    rl-r/         RL from the round r-1 policy against rm-proxy-r, KL to sft/ (the original
                  reference)
    eval-r/       rl-r vs sft/ judged by rm-gold/ (the judge stays fixed across rounds)

Every one is an ordinary stage of :func:`ambient_rlhf.run.execute`: keyed, skipped when
done, resumed from its checkpoint (reward model, RL) after an interruption, per round.
The report's round table (``eval/report/rounds.py``) reads eval/, eval-r/ and feedback-r/.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ambient_rlhf import AmbientError
from ambient_rlhf.config import to_dict
from ambient_rlhf.data.feedback import FEEDBACK_FILE, FeedbackConfig
from ambient_rlhf.logging import get_logger

log = get_logger("rounds")



def plan_rounds(cfg: Any, stages: list, stage_cls: type) -> list:
    """``stages`` (round 1, ending with the report) with rounds 2..``cfg.rounds`` inserted
    before the report; the report then depends on every stage."""
    if cfg.rounds < 1:
        raise AmbientError(f"run: rounds={cfg.rounds}; give rounds=1 (the plain run) or more")
    if cfg.rounds == 1:
        return stages
    fb: FeedbackConfig = cfg.feedback
    if fb.source == "simulated" and cfg.sources:
        raise AmbientError("run: feedback.source=simulated needs the simulated community (sources empty); for real "
                           "data use feedback.source=held-out-rm (feedback.held_out_rm=DIR) or feedback.source=labels "
                           "(feedback.labels=pairs.parquet)")
    if fb.source == "held-out-rm" and not fb.held_out_rm:
        raise AmbientError("run: feedback.source=held-out-rm needs feedback.held_out_rm=DIR, a reward model that "
                           "neither RL nor the judge uses")
    if fb.source == "labels" and not fb.labels:
        raise AmbientError("run: feedback.source=labels needs feedback.labels=FILE (a pairs.parquet of comparisons)")
    run = Path(cfg.out)
    r = dataclasses.replace
    report = stages[-1]
    assert report.kind == "report", "the report is the plan's last stage"
    out = stages[:-1]
    d = lambda name: str(run / name)  # noqa: E731
    rm_model, rm_deps = (d("sft"), ["sft"]) if cfg.rm_init == "sft" else (cfg.model, [])
    prev_rl, prev_rm = "rl", "rm-proxy"
    for k in range(2, cfg.rounds + 1):
        fb_spec = {"round": k, "feedback": to_dict(fb), "policy": d(prev_rl), "data": d("data"),
                   "simulate": "" if cfg.sources else d("simulate"), "votes": to_dict(cfg.simulate),
                   "data_config": to_dict(cfg.data), "proxy": d(prev_rm), "judge": d("rm-gold"),
                   "batch_size": cfg.eval.batch_size, "max_prompt_tokens": cfg.rl.max_prompt_tokens}
        fb_deps = ["data", prev_rl, prev_rm, "rm-gold"] + ([] if cfg.sources else ["simulate"])
        out.append(stage_cls(f"feedback-{k}", "feedback", fb_spec, fb_deps))
        feedback_dirs = {j: str(run / f"feedback-{j}" / "data") for j in range(2, k + 1)}
        mix = {"base": d("data"), "feedback": feedback_dirs, "round": k, "half": "a", "weight": fb.weight,
               "recency": fb.recency, "seed": fb.seed}
        out.append(stage_cls(f"mix-{k}", "mix", mix, ["data"] + [f"feedback-{j}" for j in range(2, k + 1)]))
        rm = r(cfg.rm, data=[d(f"mix-{k}")], model=rm_model, out=d(f"rm-proxy-{k}"), train_half="all",
               seed=cfg.rm.seed, feature_cache="")
        rm = _volatile_off(rm)
        out.append(stage_cls(f"rm-proxy-{k}", "rm", rm, [f"mix-{k}", *rm_deps], resumable=hasattr(rm, "resume")))
        rl = _volatile_off(r(cfg.rl, policy=d(prev_rl), reference=d("sft"), reward=d(f"rm-proxy-{k}"), data=d("data"),
                             out=d(f"rl-{k}"), seed=cfg.rl.seed + k - 1))
        out.append(stage_cls(f"rl-{k}", "rl", rl, ["data", "sft", prev_rl, f"rm-proxy-{k}"], resumable=True))
        ev = next(s for s in stages if s.name == "eval").config
        ev = r(ev, policy=d(f"rl-{k}"), proxy=d(f"rm-proxy-{k}"), out=d(f"eval-{k}"))
        out.append(stage_cls(f"eval-{k}", "eval", ev, ["data", "sft", "rm-gold", f"rm-proxy-{k}", f"rl-{k}"]))
        prev_rl, prev_rm = f"rl-{k}", f"rm-proxy-{k}"
    out.append(r(report, deps=[s.name for s in out]))
    return out


def _volatile_off(c: Any) -> Any:
    kw = {k: v for k, v in (("resume", False), ("overwrite", True)) if hasattr(c, k)}
    return dataclasses.replace(c, **kw) if kw else c


# ---- runners -------------------------------------------------------------------------------
def run_feedback(spec: dict, resume: bool, out: str) -> None:
    """Sample the policy on the round's questions, collect preferences over its answers
    (the configured source) into ``out/data``, and write ``feedback.json``."""
    import pandas as pd

    from ambient_rlhf.config import from_dict
    from ambient_rlhf.data import feedback as F
    from ambient_rlhf.data.build import DataConfig, build
    from ambient_rlhf.data.simulate import SimulateConfig, write_dump
    from ambient_rlhf.data.tables import community_name
    from ambient_rlhf.io import atomic_dir, write_json, write_manifest

    fb = from_dict(FeedbackConfig, spec["feedback"], prefix="feedback.")
    k = spec["round"]
    community = community_name(spec["data"])
    with atomic_dir(out, overwrite=True) as tmp:
        result: dict[str, Any] = {"round": k, "source": fb.source, "policy": spec["policy"]}
        if fb.source == "labels":
            counts = F.labels_data(fb.labels, tmp / "data", community)
            result.update(counts=counts, labeller=f"explicit labels ({fb.labels})")
        else:
            if fb.source == "simulated":
                items = F.feedback_items(spec["simulate"], spec["data"], fb.prompts, fb.human_answers, k, fb.seed)
            else:
                items = F.data_items(spec["data"], fb.prompts, fb.human_answers, k, fb.seed)
            policy_answers = _sample(spec, fb, [it["prompt"] for it in items], k)
            for n, it in enumerate(items):
                it["policy"] = policy_answers[n * fb.policy_answers:(n + 1) * fb.policy_answers]
            if fb.source == "simulated":
                sim_cfg = from_dict(SimulateConfig, spec["votes"], prefix="simulate.")
                subs, comments, table = F.feedback_threads(items, sim_cfg, k, fb.seed)
                (tmp / "dump").mkdir()
                write_dump(tmp / "dump", sim_cfg, subs, comments, table, extra={"feedback_round": k})
                data_cfg = from_dict(DataConfig, spec["data_config"], prefix="data.")
                dump = sorted(str(p) for p in (tmp / "dump").glob("*.ndjson"))
                m = build(dump, str(tmp / "data"), data_cfg)
                counts = {"threads": len(subs), "policy_answers": int((table["source"] == "policy").sum()),
                          "human_answers": int((table["source"] == "human").sum()),
                          "pairs": int(sum(m["counts"].get("pairs_per_split", {}).values())),
                          "ranked_comparisons": _ranked_comparisons(tmp / "data")}
                result.update(counts=counts, labeller="the simulated readers' votes")
                table = table.copy()
            else:
                rm_scores = _score_items(fb.held_out_rm, items, community, spec["batch_size"])
                labeller = f"held-out reward model {fb.held_out_rm} (a model, not people)"
                counts = F.model_ranked_data(items, rm_scores, tmp / "data", community, labeller, k)
                counts["ranked_comparisons"] = _ranked_comparisons(tmp / "data")
                result.update(counts=counts, labeller=labeller)
                table = _items_table(items)
            # does the reward model of the previous round (and the judge) rank these answers right?
            if "utility" in table.columns:
                for name in ("proxy", "judge"):
                    table[name] = _score_table(spec[name], table, community, spec["batch_size"])
                    result[name] = {"model": spec[name], **F.judge_metrics(table, name, seed=fb.seed)}
                table.to_parquet(tmp / "answers.parquet", index=False)
            else:
                pd.DataFrame(_items_table(items)).to_parquet(tmp / "answers.parquet", index=False)
        write_json(tmp / FEEDBACK_FILE, result)
        write_manifest(tmp, "feedback", spec, inputs=[], counts=result["counts"], source=fb.source,
                       labeller=result.get("labeller"))
    log.info("feedback round %d: %s", k, result["counts"])


def _sample(spec: dict, fb: FeedbackConfig, prompts: list[str], k: int) -> list[str]:
    from ambient_rlhf.train.generate import generate, load_for_generation

    model = load_for_generation(spec["policy"])
    rep = [p for p in prompts for _ in range(fb.policy_answers)]
    return [a.strip() for a in generate(model, rep, max_new_tokens=fb.max_new_tokens, temperature=fb.temperature,
                                        batch_size=spec["batch_size"], seed=fb.seed + k,
                                        max_prompt_tokens=spec["max_prompt_tokens"])]


def _items_table(items: list[dict]):
    import pandas as pd

    from ambient_rlhf.data.simulate import _base36

    rows = [{"thread_id": it.get("thread_id", _base36(n)), "prompt": it["prompt"], "response": a, "source": src}
            for n, it in enumerate(items) for src in ("human", "policy") for a in it[src]]
    return pd.DataFrame(rows)


def _score_table(path: str, table, community: str, batch_size: int):
    from ambient_rlhf.eval.policy_eval import load_judge, score

    rm, _ = load_judge(path)
    return score(rm, list(table["prompt"]), list(table["response"]), community, None, batch_size)


def _score_items(path: str, items: list[dict], community: str, batch_size: int) -> list[list[float]]:
    table = _items_table(items)
    s = _score_table(path, table, community, batch_size)
    out, i = [], 0
    for it in items:
        n = len(it["human"]) + len(it["policy"])
        out.append([float(x) for x in s[i:i + n]])
        i += n
    return out


def _ranked_comparisons(data_dir: Path) -> int:
    """Within-thread comparisons of the rankings (K answers: K (K - 1) / 2)."""
    import pandas as pd

    df = pd.read_parquet(data_dir / "rankings.parquet", columns=["responses"])
    return int(sum(len(r) * (len(r) - 1) // 2 for r in df["responses"]))


def run_mix(spec: dict, resume: bool, out: str) -> None:
    from ambient_rlhf.data.feedback import mix_data
    from ambient_rlhf.io import atomic_dir

    with atomic_dir(out, overwrite=True) as tmp:
        mix_data(spec["base"], {int(j): p for j, p in spec["feedback"].items()}, tmp, spec["round"], spec["half"],
                 spec["weight"], spec["recency"], spec["seed"])


RUNNERS = {"feedback": run_feedback, "mix": run_mix}
"""The stage kinds the rounds add to :data:`ambient_rlhf.run.RUNNERS`."""
