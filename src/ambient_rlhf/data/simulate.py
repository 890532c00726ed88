"""A simulated community with known preferences: the embedded default data.

No community text can ship with the package and nothing can be downloaded, yet
``ambient run`` must work on a fresh machine.  So the default data is generated, and
because the readers' preferences are known, a run can measure what real data never
allows: how well a reward model recovers the *true* utility, whether the confound
control of the data stage helps, and whether RL raised the true utility or only the
proxy reward.

The pure parts live here (no model, no transformers; ``data/`` stays light):

1. **Prompts** (:func:`compose_prompts`): a question title (topic x goal x situation)
   and a short body, seeded.
2. **The hidden utility** (:func:`true_utility`, in :mod:`ambient_rlhf.data.utility` with
   its components), a deterministic function of the prompt and response text.
3. **Votes with confounds** (:func:`expected_score`, :func:`thread_votes`): a thread
   draws ``readers`` ~ LogNormal (prompt popularity); an answer posted ``d`` hours after
   the question is seen by ``readers * exposure(d) * luck`` people, with
   ``exposure(d) = 1 / (1 + d / half_life)`` (early answers get more views) and
   ``luck`` ~ LogNormal(0, luck_sigma) (noise).  Each viewer likes the answer with
   ``p_like = sigmoid(slope * (utility - center))``; upvotes ~ Binomial(views,
   upvote_rate * p_like), downvotes ~ Binomial(views, downvote_rate * (1 - p_like)),
   score = 1 + up - down (Reddit's author self-vote).  The raw score therefore mixes
   quality with posting time, popularity and luck.
4. **Replies**: a few readers reply; a reply is friendly with probability ``p_like``
   (so reply sentiment carries signal too).
5. **The dump** (:func:`write_dump`): ``<community>_submissions.ndjson`` and
   ``<community>_comments.ndjson`` in the Pushshift / Arctic Shift format (the fields of
   the real dumps, ``retrieved_on`` included, sorted by ``created_utc``), plus
   ``utility.parquet`` (one row per answer: ids, texts, utility and its components, the
   vote variables) and ``manifest.json``.  The dump goes through the ordinary data stage:
   ``ambient data build SIMDIR --out DATA``.

Responses come from a *responder* ``respond(gen_prompts) -> list[str]`` (one answer per
generation prompt).  :func:`template_responder` composes answers from templates with no
model (tests, ``model=template``); ``ambient_rlhf.simulate`` samples them from a causal
LM (the default for ``ambient data simulate`` and the demo).

The question and answer texts (prompts, styles, the template responder) are in
:mod:`ambient_rlhf.data.sim_text`, the utility and the recovery statistics in
:mod:`ambient_rlhf.data.utility`; both are re-exported here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ambient_rlhf import AmbientError
from ambient_rlhf.data.sim_text import (OPENERS, SITUATIONS, STYLES, TOPICS, compose_prompts, generation_prompt,
                                        prompt_text, template_responder)
from ambient_rlhf.data.utility import (LENGTH_SIGMA, PREFERRED_WORDS, RELEVANCE_CAP, STOPWORDS, UTILITY_WEIGHTS,
                                       compare_recovery, content_words, recovery_stats, sentiment, thread_spearmans,
                                       true_utility, utility_components, within_thread_pair_accuracy,
                                       within_thread_spearman)
from ambient_rlhf.io import atomic_dir, write_manifest
from ambient_rlhf.logging import get_logger

log = get_logger("data.simulate")

__all__ = [  # the texts and the utility are re-exported: tests and the truth stage import them from here
    "TOPICS", "OPENERS", "SITUATIONS", "STYLES", "compose_prompts", "prompt_text", "generation_prompt",
    "template_responder", "UTILITY_WEIGHTS", "RELEVANCE_CAP", "PREFERRED_WORDS", "LENGTH_SIGMA", "STOPWORDS",
    "content_words", "sentiment", "utility_components", "true_utility", "thread_spearmans",
    "within_thread_spearman", "compare_recovery", "within_thread_pair_accuracy", "recovery_stats",
    "UTILITY_FILE", "VoteConfig", "SimulateConfig", "simulate_threads", "write_dump", "simulate", "load_utility",
]

UTILITY_FILE = "truth/utility.parquet"
"""The answers' true utility, in a subdirectory so that ``ambient data build SIMDIR``
reads only the dump."""


# ---- configuration ------------------------------------------------------------------------
@dataclass
class VoteConfig:
    mean_readers: float = 400.0
    """Median number of readers of a thread (the scale of prompt popularity). 400 with
    the rates below gives a typical good early answer ~40 points and a late one ~10, the
    range of a mid-sized subreddit, and most prompts clear the data stage's prompt-score
    threshold of 10."""
    popularity_sigma: float = 0.8
    """Log-normal sigma of a thread's readers: popular prompts get several times the
    votes of quiet ones (0.8: the 90th percentile is ~2.8x the median)."""
    delay_mean_hours: float = 4.0
    """Mean delay (exponential) between a question and an answer."""
    exposure_half_life_hours: float = 2.0
    """exposure(d) = 1 / (1 + d / half_life): an answer posted this many hours after the
    question is seen by half as many readers as the first one (the time-of-posting
    confound the adjusted rank is meant to remove)."""
    luck_sigma: float = 0.4
    """Log-normal sigma of per-answer luck on views (noise no label can explain)."""
    upvote_rate: float = 0.15
    """Fraction of viewers who upvote an answer they like."""
    downvote_rate: float = 0.03
    """Fraction of viewers who downvote an answer they dislike (Reddit readers downvote
    far less than they upvote)."""
    utility_center: float = 1.0
    """Utility at which half of the viewers like an answer: about the median utility of
    the default model's answers (1.05 measured over 64 of them), so likes spread over the
    whole range."""
    utility_slope: float = 4.0
    """p_like = sigmoid(slope * (utility - center)); 4 moves p_like from 0.12 to 0.88
    between center - 0.5 and center + 0.5 (about +-1.4 std of the default model's
    answers' utility), so quality shows through the confounds."""
    reply_rate: float = 0.01
    """Expected direct replies per viewer (Poisson), capped by ``max_replies``."""
    max_replies: int = 3
    """At most this many replies per answer (keeps the dump small)."""
    prompt_vote_rate: float = 0.05
    """Submission score = 1 + Binomial(readers, rate): 400 readers give ~21 points."""


@dataclass
class SimulateConfig:
    threads: int = 48
    """Questions (threads) to simulate. 48 x 4 answers from the default model take
    about 4 minutes on a 2-core CPU, a quarter of the demo's budget."""
    responses: int = 4
    """Answers per question (K). 4 gives 6 within-thread comparisons per thread."""
    seed: int = 0
    """Seed of prompts, answer styles, sampling and votes (same seed, same community)."""
    model: str = "default"
    """Where answers come from: a model name or directory (``default`` = SmolLM2,
    ``tiny-random`` for smoke tests), or ``template`` for the model-free template
    composer (instant; used by unit tests)."""
    styles: bool = True
    """Ask for each answer in a randomly drawn hidden style (brief, detailed, warm,
    blunt, off-topic, plain) that is appended to the generation prompt only, so one
    model's answers differ in length, tone and relevance like a crowd's do."""
    max_new_tokens: int = 64
    """Longest generated answer in tokens (~45 words; the readers like 40 words)."""
    trim_unfinished: bool = False
    """Cut an answer that stops mid-sentence (it ran out of ``max_new_tokens``) back to
    its last complete sentence; an answer without a complete sentence stays as it is.
    Off by default: trimmed answers are shorter than the readers' preferred 40 words, so
    "longer is better" explains much more of the utility (within-thread Spearman of
    length with utility 0.56 against 0.37 untrimmed, 200 x 4 answers of <= 48 tokens),
    which leaves a reward model less to find.  Untrimmed answers end mid-sentence, so
    give RL a response budget above ``max_new_tokens`` (the demo: 64 against 48) or
    most samples get the missing-EOS penalty."""
    temperature: float = 0.9
    """Sampling temperature of the answers: a little above the usual 0.7 so the K
    answers of one question differ."""
    batch_size: int = 32
    """Generation batch size. SmolLM2's tokens/s on a 2-core CPU rise with the batch:
    32 answers of 32 tokens took 54 CPU-s at batch 32 against 85 at batch 8 (1.6x)."""
    reuse_answers: bool = True
    """Read the answers back instead of sampling them when the same model (weights and
    configs), fed token ids, sampling settings and seed sampled them before: the demo's
    800 ship with the package, and every sampling is stored in ``answer_cache``.  The
    torch/transformers versions and CPU kind that sampled them are recorded, not keyed
    (float rounding may pick another token elsewhere, rarely; a mismatch is logged).
    false = always sample here (docs/simulate.md)."""
    answer_cache: str = ""
    """Where sampled answers are stored by key; empty = ``$AMBIENT_CACHE/answers``."""
    community: str = "AmbientSim"
    """Subreddit name written into the dump (file names and the ``subreddit`` field)."""
    start_utc: int = 1_700_000_000
    """created_utc of the first question (2023-11-14)."""
    span_days: float = 60.0
    """Questions are spread uniformly over this many days."""
    retrieval_age_days: float = 30.0
    """retrieved_on = the last question's time + this: every thread is at least this old
    when "scraped", so scores are mature for the data stage's minimum-age filter."""
    votes: VoteConfig = field(default_factory=VoteConfig)
    """The readers (vote model)."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.responses < 2:
            raise ValueError("responses must be >= 2 (preferences need two answers to a question)")


# ---- votes --------------------------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def exposure(delay_hours: np.ndarray, half_life_hours: float) -> np.ndarray:
    """Fraction of a thread's readers who see an answer posted ``delay_hours`` after the
    question: 1 / (1 + d / half_life)."""
    return 1.0 / (1.0 + np.asarray(delay_hours, dtype=float) / half_life_hours)


def p_like(utility: np.ndarray, vc: VoteConfig) -> np.ndarray:
    """Probability that a viewer likes an answer: sigmoid(slope * (utility - center))."""
    return sigmoid(vc.utility_slope * (np.asarray(utility, dtype=float) - vc.utility_center))


def expected_score(utility, delay_hours, readers: float, vc: VoteConfig) -> np.ndarray:
    """E[score] with luck = 1: 1 + views * (upvote_rate * p - downvote_rate * (1 - p)),
    views = readers * exposure(delay)."""
    p = p_like(utility, vc)
    views = readers * exposure(delay_hours, vc.exposure_half_life_hours)
    return 1.0 + views * (vc.upvote_rate * p - vc.downvote_rate * (1.0 - p))


def thread_votes(utility: Sequence[float], delay_hours: Sequence[float], readers: float, vc: VoteConfig,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sample views, up/down votes, score and reply counts for one thread's answers.

    Args:
        utility: (K,) true utility of each answer.
        delay_hours: (K,) hours between the question and each answer.
        readers: the thread's readers (its popularity).
    Returns: dict of (K,) arrays ``views, up, down, score, p_like, replies``.
    """
    u = np.asarray(utility, dtype=float)
    luck = rng.lognormal(0.0, vc.luck_sigma, size=u.shape) if vc.luck_sigma > 0 else np.ones_like(u)
    views = rng.poisson(readers * exposure(delay_hours, vc.exposure_half_life_hours) * luck)
    p = p_like(u, vc)
    up = rng.binomial(views, vc.upvote_rate * p)
    down = rng.binomial(views, vc.downvote_rate * (1.0 - p))
    replies = np.minimum(rng.poisson(views * vc.reply_rate), vc.max_replies)
    return {"views": views, "up": up, "down": down, "score": 1 + up - down, "p_like": p, "replies": replies}


_REPLY_GOOD = ("Thanks, this really helped!", "Great advice, it worked for me.", "This is exactly what I needed, thank you.",
               "Love this answer.")
_REPLY_BAD = ("This is wrong and not helpful.", "That makes no sense at all.", "Terrible advice, please ignore this.",
              "How is this even an answer?")


# ---- the whole community ------------------------------------------------------------------
def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = digits[r] + s
        if n == 0:
            return s


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """``text`` up to and including its last sentence end (``.``, ``!`` or ``?``, with
    closing quotes or brackets, followed by whitespace or the end); unchanged when it
    already ends a sentence or has no sentence end at all."""
    text = text.rstrip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] == len(text):
        return text
    return text[: ends[-1]]


def thread_records(cfg: SimulateConfig, tid: str, slug: str, p: dict, resp: list[str], styles: list[str],
                   created: int, readers: float, op_name: str, retrieved_on: int,
                   rng: np.random.Generator) -> tuple[dict, list[dict], list[dict]]:
    """One thread of the community: its submission, its comments (answers and replies) and
    one utility-table row per answer.  The readers' rules live here once: the simulated
    community and the feedback on a policy's answers (``data.feedback``) both call it.

    ``p`` has the question's ``title``, ``body`` and ``topic``; ``resp`` the answers (each
    gets a fresh posting delay, views and votes from ``rng``); ``styles`` one label per answer."""
    vc = cfg.votes
    text = prompt_text(p["title"], p["body"])
    k = len(resp)
    comments: list[dict] = []
    rows: list[dict] = []
    comps = [utility_components(text, r) for r in resp]
    util = np.array([sum(UTILITY_WEIGHTS[c] * d[c] for c in UTILITY_WEIGHTS) for d in comps])
    delay_h = np.maximum(rng.exponential(vc.delay_mean_hours, size=k), 1 / 60)  # at least a minute
    v = thread_votes(util, delay_h, readers, vc, rng)
    prompt_score = 1 + int(rng.binomial(int(readers), vc.prompt_vote_rate))
    permalink = f"/r/{cfg.community}/comments/{tid}/{slug}/"
    n_replies_total = int(v["replies"].sum())
    sub = {
        "id": tid, "name": f"t3_{tid}", "title": p["title"], "selftext": p["body"], "author": op_name,
        "subreddit": cfg.community, "created_utc": int(created), "score": prompt_score,
        "upvote_ratio": round(float(1 - vc.downvote_rate), 2), "num_comments": k + n_replies_total,
        "over_18": False, "is_self": True, "stickied": False, "edited": False, "permalink": permalink,
        "retrieved_on": retrieved_on,
    }
    for j in range(k):
        cid = f"c{tid[1:]}x{j}"
        c_created = int(created + round(delay_h[j] * 3600))
        comments.append({
            "id": cid, "name": f"t1_{cid}", "author": f"sim_reader_{_base36(int(rng.integers(36**3, 36**4)))}",
            "body": resp[j], "created_utc": c_created, "score": int(v["score"][j]), "link_id": f"t3_{tid}",
            "parent_id": f"t3_{tid}", "subreddit": cfg.community, "permalink": f"{permalink}{cid}/",
            "retrieved_on": retrieved_on, "stickied": False, "distinguished": None,
        })
        for m in range(int(v["replies"][j])):
            rid = f"{cid}r{m}"
            good = rng.random() < v["p_like"][j]
            comments.append({
                "id": rid, "name": f"t1_{rid}", "author": f"sim_reader_{_base36(int(rng.integers(36**3, 36**4)))}",
                "body": str(rng.choice(_REPLY_GOOD if good else _REPLY_BAD)),
                "created_utc": c_created + int(rng.exponential(3600)) + 60, "score": int(1 + rng.poisson(2 if good else 0.5)),
                "link_id": f"t3_{tid}", "parent_id": f"t1_{cid}", "subreddit": cfg.community,
                "permalink": f"{permalink}{rid}/", "retrieved_on": retrieved_on, "stickied": False, "distinguished": None,
            })
        rows.append({
            "thread_id": tid, "response_id": cid, "response_name": f"t1_{cid}", "prompt": text, "response": resp[j],
            "topic": p["topic"], "style": styles[j], "utility": float(util[j]), **{f"u_{c}": float(comps[j][c]) for c in UTILITY_WEIGHTS},
            "delay_hours": float(delay_h[j]), "readers": float(readers), "prompt_score": prompt_score,
            "views": int(v["views"][j]), "up": int(v["up"][j]), "down": int(v["down"][j]),
            "score": int(v["score"][j]), "replies": int(v["replies"][j]),
        })
    return sub, comments, rows


def _questions(cfg: SimulateConfig):
    """The seeded draws before the answers: (rng to continue with, questions, each
    question's K hidden styles, the K x questions generation prompts in order)."""
    rng = np.random.default_rng([cfg.seed, 3])
    prompts = compose_prompts(cfg.threads, cfg.seed)
    style_names = [name for name, _ in STYLES] if cfg.styles else ["plain"]
    styles = [[str(rng.choice(style_names)) for _ in range(cfg.responses)] for _ in prompts]
    gen_prompts = [generation_prompt(prompt_text(p["title"], p["body"]), s) for p, ss in zip(prompts, styles) for s in ss]
    return rng, prompts, styles, gen_prompts


def generation_prompts(cfg: SimulateConfig) -> list[str]:
    """What the answering model is asked, in the order ``respond`` gets it: each
    question with each of its answers' hidden style."""
    return _questions(cfg)[3]


def simulate_threads(cfg: SimulateConfig, respond: Callable[[list[str]], list[str]]) -> tuple[list[dict], list[dict], pd.DataFrame]:
    """Simulate the community: returns (submissions, comments, utility table).

    ``respond`` is called once with every generation prompt (the K answers of a question
    are consecutive) and returns one answer per prompt."""
    vc = cfg.votes
    rng, prompts, styles, gen_prompts = _questions(cfg)
    answers = [a.strip() for a in respond(gen_prompts)]
    if len(answers) != len(gen_prompts):
        raise AmbientError(f"responder returned {len(answers)} answers for {len(gen_prompts)} prompts")
    if cfg.trim_unfinished:
        answers = [trim_to_sentence(a) for a in answers]

    span = cfg.span_days * 86400
    created = np.sort(cfg.start_utc + rng.uniform(0, span, size=cfg.threads)).astype(np.int64)
    retrieved_on = int(created.max() + cfg.retrieval_age_days * 86400)
    readers = rng.lognormal(math.log(vc.mean_readers), vc.popularity_sigma, size=cfg.threads)
    subs, comments, rows = [], [], []
    op_names = [f"sim_asker_{_base36(int(x))}" for x in rng.integers(36**3, 36**4, size=cfg.threads)]
    for i, p in enumerate(prompts):
        tid = "s" + _base36(1_000_000 + i)
        sub, coms, rws = thread_records(cfg, tid, f"q{i}", p, answers[i * cfg.responses:(i + 1) * cfg.responses],
                                        styles[i], int(created[i]), float(readers[i]), op_names[i], retrieved_on, rng)
        subs.append(sub)
        comments.extend(coms)
        rows.extend(rws)
    comments.sort(key=lambda c: (c["created_utc"], c["id"]))
    return subs, comments, pd.DataFrame(rows)


def write_dump(out: Path, cfg: SimulateConfig, subs: list[dict], comments: list[dict], table: pd.DataFrame,
               extra: dict | None = None) -> None:
    """Write the NDJSON dump, ``truth/utility.parquet`` and ``manifest.json`` into ``out``."""
    from ambient_rlhf.config import to_dict

    with open(out / f"{cfg.community}_submissions.ndjson", "w") as f:
        for s in subs:
            f.write(json.dumps(s) + "\n")
    with open(out / f"{cfg.community}_comments.ndjson", "w") as f:
        for c in comments:
            f.write(json.dumps(c) + "\n")
    (out / UTILITY_FILE).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / UTILITY_FILE, index=False)
    summary = {
        "utility_mean": float(table["utility"].mean()),
        "utility_std": float(table["utility"].std()),
        "spearman_score_utility": within_thread_spearman(table, "score"),
        "spearman_score_delay": within_thread_spearman(table, "score", target="delay_hours"),
        "mean_by_style": {k: float(v) for k, v in table.groupby("style")["utility"].mean().items()},
    }
    write_manifest(out, "simulate", to_dict(cfg), inputs=[],
                   counts={"threads": len(subs), "responses": len(table), "comments": len(comments)},
                   utility_weights=UTILITY_WEIGHTS, summary=summary, **(extra or {}))


def simulate(out: str | Path, cfg: SimulateConfig, respond: Callable[[list[str]], list[str]] | None = None,
             overwrite: bool = False, extra: dict | None = None) -> Path:
    """Simulate a community into ``out`` (a Pushshift-format dump + truth/utility.parquet).

    ``respond`` produces the answers; when omitted, ``cfg.model`` must be ``template``
    (model answers need :func:`ambient_rlhf.simulate.simulate`, outside ``data/``).
    ``extra``: more manifest fields, read after ``respond`` has run (it may fill them)."""
    if respond is None:
        if cfg.model != "template":
            raise AmbientError(f"model={cfg.model!r} needs a model responder: use ambient_rlhf.simulate.simulate "
                               "(or `ambient data simulate`), or set model=template")
        respond = template_responder(cfg.seed)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        subs, comments, table = simulate_threads(cfg, respond)
        write_dump(tmp, cfg, subs, comments, table, extra)
    log.info("simulated %d threads, %d answers into %s", len(subs), len(table), out)
    return out


def load_utility(sim_dir: str | Path) -> pd.DataFrame:
    """The utility table of a simulated dump (``truth/utility.parquet``)."""
    p = Path(sim_dir) / UTILITY_FILE
    if not p.is_file():
        raise AmbientError(f"{p}: no utility table; is {sim_dir} a simulated community (ambient data simulate)?")
    return pd.read_parquet(p)
