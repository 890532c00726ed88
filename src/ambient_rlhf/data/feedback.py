"""Feedback on a policy's own answers, and the reward model's data of the next round.

Iterated RLHF (``ambient run rounds=N``) asks, after each policy round, for preferences
over what the policy now writes.  The pure parts live here (numpy, pandas; no model):

1. **Simulated community** (:func:`feedback_threads`): each chosen question is asked
   again in a *fresh* thread (new id, time, popularity) where the policy's answers sit
   beside human answers of the original thread.  Every answer gets a new posting delay,
   views and votes from the same readers (:func:`ambient_rlhf.data.simulate.thread_records`:
   one function for the community and for this), so the votes stay the only signal the
   reward model sees; the dump goes through the ordinary data stage, with its rules.
2. **Explicit labels** (``source=labels``): a ``pairs.parquet`` of side-by-side choices
   (``ambient label``) in the data stage's pair layout (:func:`labels_data`).
3. **The next reward model's data** (:func:`mix_data`): the run's data directory (the
   proxy's half of the train threads, all valid/test threads) plus every earlier round's
   feedback threads, in the train split, with a mixing weight and a recency decay.
4. **Does the reward model rank the policy's answers right** (:func:`judge_metrics`):
   Spearman with the true utility and within-thread pair accuracy on the policy's samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
import pandas as pd

from ambient_rlhf import AmbientError
from ambient_rlhf.config import above, at_least
from ambient_rlhf.data import schema
from ambient_rlhf.data.simulate import SimulateConfig, _base36, prompt_text, thread_records
from ambient_rlhf.data.splits import half_of


FEEDBACK_FILE = "feedback.json"
"""In a run's ``feedback-r/``: counts, the source and the judge metrics on the policy's answers."""


@dataclass
class FeedbackConfig:
    """The rounds of ``ambient run`` after the first (``rounds: N``)."""

    source: Literal["simulated", "held-out-rm", "labels"] = "simulated"
    """Where new preferences over the policy's answers come from: ``simulated`` (the
    simulated readers vote on them in fresh threads; simulated communities only),
    ``held-out-rm`` (a reward model that neither RL nor the judge uses ranks them; named
    as such in every output, since it is a model and not people), or ``labels`` (a
    ``pairs.parquet`` of explicit comparisons, ``labels``)."""
    prompts: Annotated[int, at_least(1)] = 32
    """Questions asked again per round: a seeded choice per round among the train-split
    threads of the proxy's half (``a``), so the gold judge's threads never reach the
    proxy's data (fewer when the half has fewer)."""
    policy_answers: Annotated[int, at_least(1)] = 2
    """Policy answers per fresh thread."""
    human_answers: Annotated[int, at_least(0)] = 2
    """Answers of the original thread placed beside them (the community's, re-voted)."""
    held_out_rm: str = ""
    """``held-out-rm``: the reward-model directory that ranks the answers."""
    labels: str = ""
    """``labels``: a pairs.parquet of explicit comparisons (columns thread_id, prompt,
    chosen, rejected; e.g. from ``ambient label``); every round adds the same labels."""
    weight: Annotated[float, at_least(0)] = 1.0
    """Mixing weight of a round's feedback threads in the reward model's train split:
    each thread enters ``floor(w)`` times, plus once more for a seeded ``w - floor(w)``
    fraction of them (1 = as many as collected, 0 = none)."""
    recency: Annotated[float, above(0)] = 1.0
    """Feedback of ``j`` rounds ago enters with ``weight * recency**j`` (1 = all rounds
    alike; 0.5 halves older feedback each round)."""
    max_new_tokens: Annotated[int, at_least(1)] = 64
    """Longest policy answer sampled for feedback."""
    temperature: Annotated[float, above(0)] = 0.7
    """Sampling temperature of those answers (the RL stage's default)."""
    seed: int = 0
    """Seed of the question choice, sampling and votes (round r uses ``[seed, r]``)."""


# ---- 1. fresh threads voted on by the simulated readers -----------------------------------
def feedback_threads(items: Sequence[dict], cfg: SimulateConfig, round_: int,
                     seed: int = 0) -> tuple[list[dict], list[dict], pd.DataFrame]:
    """Fresh threads with the policy's answers beside human ones; (subs, comments, table).

    ``items``: one dict per question with ``title``, ``body``, ``topic``, ``human`` (list of
    answers) and ``policy`` (list of answers).  Thread ids are ``f<round>z<n>``; the table
    has the simulator's columns plus ``source`` (``human``/``policy``) and
    ``original_thread`` (when the item names one)."""
    vc = cfg.votes
    rng = np.random.default_rng([seed, 5, round_])
    n = len(items)
    created = np.sort(cfg.start_utc + rng.uniform(0, cfg.span_days * 86400, size=n)).astype(np.int64)
    retrieved_on = int(created.max() + cfg.retrieval_age_days * 86400) if n else cfg.start_utc
    readers = rng.lognormal(math.log(vc.mean_readers), vc.popularity_sigma, size=n)
    subs, comments, rows = [], [], []
    for i, it in enumerate(items):
        tid = f"f{round_}z{_base36(i)}"
        answers = [*it["human"], *it["policy"]]
        sources = ["human"] * len(it["human"]) + ["policy"] * len(it["policy"])
        op = f"sim_asker_{_base36(int(rng.integers(36**3, 36**4)))}"
        sub, coms, rws = thread_records(cfg, tid, f"r{round_}q{i}", it, answers, sources, int(created[i]),
                                        float(readers[i]), op, retrieved_on, rng)
        for r, src in zip(rws, sources):
            r["source"] = src
            r["original_thread"] = it.get("thread_id")
        subs.append(sub)
        comments.extend(coms)
        rows.extend(rws)
    comments.sort(key=lambda c: (c["created_utc"], c["id"]))
    return subs, comments, pd.DataFrame(rows)


def feedback_items(sim_dir: str | Path, data_dir: str | Path, n: int, human: int, round_: int,
                   seed: int = 0, half: str = "a") -> list[dict]:
    """``n`` train-split questions of a simulated run (a seeded choice per round) from the
    proxy's ``half`` (``a``; ``all`` for every one: the gold judge's half would then reach
    the proxy's data), each with its title, body, topic and ``human`` of its original
    answers (a seeded choice)."""
    from ambient_rlhf.data.simulate import load_utility
    from ambient_rlhf.data.tables import read_table

    sim_dir = Path(sim_dir)
    subs_files = sorted(sim_dir.glob("*_submissions.ndjson"))
    if not subs_files:
        raise AmbientError(f"{sim_dir}: no *_submissions.ndjson; source=simulated needs the run's simulate/ directory")
    subs = {}
    for line in subs_files[0].read_text().splitlines():
        s = json.loads(line)
        subs[s["id"]] = s
    util = load_utility(sim_dir)
    train = sorted(set(read_table(data_dir, schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS, "train")["thread_id"]))
    train = [t for t in train if t in subs and (half == "all" or half_of(t) == half)]
    if not train:
        raise AmbientError(f"{data_dir}: no train-split thread of {sim_dir} in half {half}; nothing to ask again")
    rng = np.random.default_rng([seed, 7, round_])
    pick = [train[i] for i in np.sort(rng.permutation(len(train))[:n])]
    items = []
    for t in pick:
        answers = util[util["thread_id"] == t]
        take = np.sort(rng.permutation(len(answers))[:human])
        items.append({"thread_id": t, "title": subs[t]["title"], "body": subs[t].get("selftext", ""),
                      "prompt": prompt_text(subs[t]["title"], subs[t].get("selftext", "")),
                      "topic": str(answers["topic"].iloc[0]) if len(answers) else "",
                      "human": [str(a) for a in answers["response"].iloc[take]], "policy": []})
    return items


def data_items(data_dir: str | Path, n: int, human: int, round_: int, seed: int = 0,
               half: str = "a") -> list[dict]:
    """Like :func:`feedback_items` for any data directory (a real community): ``n``
    train-split threads of ``half`` (a seeded choice per round), each with its prompt and
    ``human`` of its answers."""
    from ambient_rlhf.data.tables import read_table

    df = read_table(data_dir, schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS, "train")
    train = sorted(t for t in set(df["thread_id"].astype(str)) if half == "all" or half_of(t) == half)
    if not train:
        raise AmbientError(f"{data_dir}: no train-split thread in half {half}; nothing to ask again")
    rng = np.random.default_rng([seed, 7, round_])
    items = []
    for t in [train[i] for i in np.sort(rng.permutation(len(train))[:n])]:
        answers = df[df["thread_id"].astype(str) == t]
        take = np.sort(rng.permutation(len(answers))[:human])
        items.append({"thread_id": t, "prompt": str(answers["prompt"].iloc[0]),
                      "human": [str(a) for a in answers["response"].iloc[take]], "policy": []})
    return items


def model_ranked_data(items: Sequence[dict], scores: Sequence[Sequence[float]], out: str | Path, community: str,
                      labeller: str, round_: int) -> dict:
    """A data directory in the data stage's layout whose preferences come from a model's
    scores (``source=held-out-rm``): per item a fresh thread of its human and policy answers,
    ranked by ``scores`` (one list per item, human answers first); every pair with different
    scores, the higher chosen.  Every table names the ``labeller``.  Returns counts."""
    resp_rows, pair_rows, rank_rows = [], [], []
    for i, (it, sc) in enumerate(zip(items, scores)):
        tid = f"f{round_}z{_base36(i)}"
        answers = [*it["human"], *it["policy"]]
        sources = ["human"] * len(it["human"]) + ["policy"] * len(it["policy"])
        sc = np.asarray(sc, dtype=float)
        order = np.argsort(-sc, kind="mergesort")
        rank = np.empty(len(sc), dtype=int)
        rank[order] = np.arange(1, len(sc) + 1)
        z = (sc - sc.mean()) / (sc.std() or 1.0)
        for j, a in enumerate(answers):
            resp_rows.append({"thread_id": tid, "response_id": f"{tid}x{j}", "prompt": it["prompt"], "response": a,
                              "score": float(sc[j]), "created_utc": 0, "prompt_score": None, "prompt_created_utc": 0,
                              "rank": int(rank[j]), "rank_z": float(-z[j]), "delay_z": 0.0, "adjusted": float(z[j]),
                              "tier": None, "reply_sentiment": None, "split": "train", "source": sources[j],
                              "labeller": labeller})
        for a in range(len(answers)):
            for b in range(len(answers)):
                if sc[a] > sc[b]:
                    pair_rows.append({"thread_id": tid, "prompt": it["prompt"],
                                      "chosen": answers[a], "rejected": answers[b],
                                      "chosen_score": float(sc[a]), "rejected_score": float(sc[b]),
                                      "chosen_created_utc": 0, "rejected_created_utc": 0, "score_ratio": float("nan"),
                                      "seconds_difference": 0, "split": "train", "labeller": labeller})
        rank_rows.append({"thread_id": tid, "prompt": it["prompt"], "responses": [answers[k] for k in order],
                          "scores": [float(sc[k]) for k in order], "adjusted": [float(z[k]) for k in order],
                          "split": "train", "labeller": labeller})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for rows, cols, name in ((resp_rows, [*schema.RESPONSE_COLUMNS, "source"], schema.RESPONSES_FILE),
                             (pair_rows, list(schema.PAIR_COLUMNS), schema.PAIRS_FILE),
                             (rank_rows, list(schema.RANKING_COLUMNS), schema.RANKINGS_FILE)):
        pd.DataFrame(rows, columns=[*cols, "labeller"]).to_parquet(out / name, index=False)
    counts = {"threads": len(rank_rows), "responses": len(resp_rows), "pairs": len(pair_rows)}
    (out / "manifest.json").write_text(json.dumps({"stage": "feedback-data", "community": community,
                                                   "labeller": labeller, "counts": counts}))
    return counts


# ---- 2. explicit labels ------------------------------------------------------------------
def labels_data(pairs_file: str | Path, out: str | Path, community: str) -> dict:
    """A data directory of explicit comparisons: the pairs (split forced to train) and a
    two-answer ranking per pair (chosen first), so pairwise and ranking reward models can
    both use them.  Returns counts."""
    p = Path(pairs_file)
    if not p.is_file():
        raise AmbientError(f"{p}: no such file; feedback.labels must be a pairs.parquet of explicit comparisons")
    df = pd.read_parquet(p)
    need = ("thread_id", "prompt", "chosen", "rejected")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise AmbientError(f"{p}: missing columns {missing}; a labels file needs {list(need)}")
    n0 = len(df)
    df = df.dropna(subset=list(need))
    df = df[df["chosen"] != df["rejected"]].reset_index(drop=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = pd.DataFrame({c: df[c] if c in df.columns else None for c in schema.PAIR_COLUMNS})
    pairs["split"] = "train"
    pairs.to_parquet(out / schema.PAIRS_FILE, index=False)
    rank = pd.DataFrame({"thread_id": df["thread_id"].astype(str) + "#" + df.index.astype(str), "prompt": df["prompt"],
                         "responses": [[c, r] for c, r in zip(df["chosen"], df["rejected"])],
                         "scores": [[1, 0]] * len(df), "adjusted": [[1.0, 0.0]] * len(df), "split": "train"})
    rank.to_parquet(out / schema.RANKINGS_FILE, index=False)
    resp = pd.DataFrame({c: pd.Series(dtype=object) for c in schema.RESPONSE_COLUMNS})
    resp.to_parquet(out / schema.RESPONSES_FILE, index=False)
    counts = {"labels_read": n0, "labels_kept": len(df), "labels_dropped": n0 - len(df)}
    (out / "manifest.json").write_text(json.dumps({"stage": "labels", "community": community, "counts": counts}))
    return counts


# ---- 3. the next reward model's data ------------------------------------------------------
def round_weights(rounds: Sequence[int], current: int, weight: float, recency: float) -> dict[int, float]:
    """Weight of each feedback round at ``current``: ``weight * recency**(current - r)``."""
    return {r: weight * recency ** (current - r) for r in rounds}


def thread_copies(threads: Sequence[str], w: float, rng: np.random.Generator) -> dict[str, int]:
    """How many times each thread enters at weight ``w``: ``floor(w)``, plus one for a
    seeded ``w - floor(w)`` share of the threads (rounded to whole threads)."""
    threads = sorted(set(threads))
    whole = int(math.floor(w))
    extra = {threads[i] for i in rng.permutation(len(threads))[: int(round((w - whole) * len(threads)))]}
    return {t: whole + (t in extra) for t in threads}


def _repeat(df: pd.DataFrame, copies: dict[str, int]) -> pd.DataFrame:
    """The rows of each thread ``copies[thread]`` times; copy k > 0 gets ``~k`` after the id."""
    parts = []
    for k in range(max(copies.values(), default=0)):
        keep = [t for t, c in copies.items() if c > k]
        part = df[df["thread_id"].isin(keep)].copy()
        part["thread_id"] = part["thread_id"].astype(str) + (f"~{k}" if k else "")
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else df.iloc[:0]


def mix_data(base: str | Path, feedback: dict[int, str | Path], out: str | Path, current: int, half: str,
             weight: float, recency: float, seed: int = 0) -> dict:
    """Write the data directory of round ``current``'s reward model into ``out``.

    ``base``: the run's data directory; its train threads of ``half`` (``a``: the proxy's;
    ``all``: every one) and all its valid/test threads.  ``feedback``: round -> data
    directory of that round's feedback; all its threads join the train split with the
    weight of :func:`round_weights`.  Returns the manifest (counts per round)."""
    from ambient_rlhf.data.tables import community_name, read_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = round_weights(sorted(feedback), current, weight, recency)
    copies = {}
    for r in sorted(feedback):  # one choice of threads per round, used for every table
        threads = read_table(feedback[r], schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS)["thread_id"].astype(str)
        copies[r] = thread_copies(threads, weights[r], np.random.default_rng([seed, 11, current, r]))
    per_round: dict[str, dict] = {str(r): {"weight": weights[r], "threads": int(sum(copies[r].values()))}
                                  for r in sorted(feedback)}
    for name, cols in ((schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS), (schema.PAIRS_FILE, schema.PAIR_COLUMNS),
                       (schema.RANKINGS_FILE, schema.RANKING_COLUMNS)):
        df = read_table(base, name, cols)
        keep = (df["split"] != "train") | (half == "all") | np.array([half_of(str(t)) == half for t in df["thread_id"]],
                                                                          dtype=bool)
        parts = [df[keep]]
        for r in sorted(feedback):
            sub = _repeat(read_table(feedback[r], name, cols).assign(split="train"), copies[r])
            per_round[str(r)][name.split(".")[0]] = int(len(sub))
            parts.append(sub)
        pd.concat(parts, ignore_index=True).to_parquet(out / name, index=False)
    manifest = {"stage": "mix", "community": community_name(base), "base": str(base), "half": half,
                "round": current, "feedback": {str(r): str(p) for r, p in feedback.items()}, "rounds": per_round}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ---- 4. does the reward model rank the policy's answers right? ------------------------------
def judge_metrics(table: pd.DataFrame, score_col: str, n_resamples: int = 1000, seed: int = 0) -> dict:
    """On the policy's answers of the feedback threads: Spearman of ``score_col`` with the
    true utility (interval), and within-thread pair accuracy over the pairs that involve a
    policy answer (policy vs policy and policy vs human)."""
    from ambient_rlhf.stats import pair_accuracy, spearman_interval

    pol = table["source"] == "policy"
    u = table["utility"]
    return {"spearman_policy": spearman_interval(table.loc[pol, score_col], u[pol], n_resamples, seed),
            "pair_accuracy_policy": pair_accuracy(table[score_col], u, table["thread_id"], pol.to_numpy())}
