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
2. **The hidden utility** (:func:`true_utility`), a deterministic function of the
   prompt and response text, fixed here so that every stage and the report compute the
   same number::

       utility = 1.0 * relevance + 0.5 * sentiment + 0.5 * length - 1.0 * repetition

   * ``relevance`` = min(#shared content words, 4) / 4: content words of the response
     that also occur in the prompt (lower-cased alphabetic words of >= 4 letters, not
     stopwords, a trailing plural ``s`` removed); 4 shared words count as fully on topic.
   * ``sentiment`` = VADER compound score of the response, in [-1, 1] (readers like a
     friendly tone).
   * ``length`` = exp(-ln(n / 40)^2 / (2 * 0.5^2)) for n whitespace-separated words
     (1 at 40 words, 0.38 at 20 or 80 words, 0 for an empty response).
   * ``repetition`` = 1 - distinct / total content words of the response (0 when it
     has none): readers punish loops, the usual symptom of reward over-optimisation.
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

from ambient_rlhf import AmbientError, stats
from ambient_rlhf.io import atomic_dir, write_manifest
from ambient_rlhf.logging import get_logger

log = get_logger("data.simulate")

UTILITY_FILE = "truth/utility.parquet"
"""The answers' true utility, in a subdirectory so that ``ambient data build SIMDIR``
reads only the dump."""

# ---- the hidden utility -------------------------------------------------------------------
UTILITY_WEIGHTS = {"relevance": 1.0, "sentiment": 0.5, "length": 0.5, "repetition": -1.0}
"""utility = sum(weight * component); see the module docstring for each component."""
RELEVANCE_CAP = 4
"""Shared content words at which an answer counts as fully on topic."""
PREFERRED_WORDS = 40
"""Answer length (words) the readers like best."""
LENGTH_SIGMA = 0.5
"""Width of the length preference in log-words."""

STOPWORDS = frozenset("""
about above after again against all also always another any anyone anything are around
back because been before being below between both cannot could does doing done down
during each either else even ever every everyone everything first from further get gets
getting give going good have having here hers herself himself into just know like make
many maybe might more most much must myself need never next only other others ought ours
over own really same should some something still such than that their theirs them
themselves then there these they thing things think this those though through thus too
under until upon very want well were what whatever when where whether which while will
with within without would your yours yourself yourselves you'd you'll you're you've i'm
i've it's don't that's there's can't won't isn't doesn't didn't
""".split())
_WORD = re.compile(r"[a-z][a-z']*")


def content_words(text: str) -> list[str]:
    """Content words of ``text`` in order: lower-cased alphabetic words of >= 4 letters
    that are not stopwords, with one trailing plural ``s`` removed (``starters`` ->
    ``starter``; ``glass`` stays)."""
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.strip("'")
        if len(w) < 4 or w in STOPWORDS:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


_VADER = None


def sentiment(text: str) -> float:
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert 2014)."""
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return float(_VADER.polarity_scores(text)["compound"])


def utility_components(prompt: str, response: str) -> dict[str, float]:
    """The four components of :func:`true_utility` (each documented in the module docstring)."""
    n_words = len(response.split())
    resp = content_words(response)
    shared = set(content_words(prompt)) & set(resp)
    length = math.exp(-math.log(n_words / PREFERRED_WORDS) ** 2 / (2 * LENGTH_SIGMA**2)) if n_words else 0.0
    return {
        "relevance": min(len(shared), RELEVANCE_CAP) / RELEVANCE_CAP,
        "sentiment": sentiment(response) if response.strip() else 0.0,
        "length": length,
        "repetition": 1.0 - len(set(resp)) / len(resp) if resp else 0.0,
    }


def true_utility(prompt: str, response: str) -> float:
    """The simulated readers' hidden utility of ``response`` to ``prompt`` (higher is better).

    Deterministic; about -1.5 (an off-topic, hostile, looping answer) to 2.0."""
    c = utility_components(prompt, response)
    return float(sum(UTILITY_WEIGHTS[k] * c[k] for k in UTILITY_WEIGHTS))


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


# ---- prompts ------------------------------------------------------------------------------
# (topic phrase, goals, body sentences).  Titles: "{opener} {goal} {situation}?"
TOPICS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("sourdough", ("keep my sourdough starter alive", "get a crispier crust on sourdough bread", "stop my sourdough dough from spreading flat"),
     ("My starter bubbles for a day and then goes flat.", "I bake in a regular home oven with a cast iron pot.", "I use bread flour and feed the starter once a day.")),
    ("running", ("train for my first marathon", "run faster without getting injured", "keep running through the winter"),
     ("I currently run about twenty kilometres a week.", "My knees start hurting after long runs.", "I can only train early in the morning before work.")),
    ("houseplants", ("keep my houseplants from dying", "get my monstera to grow new leaves", "water succulents properly"),
     ("The leaves turn yellow and droop after a few weeks.", "My apartment gets very little direct sunlight.", "I travel often and forget to water them.")),
    ("python", ("learn Python programming", "write cleaner Python code", "debug a slow Python script"),
     ("I know some basic loops and functions but get lost in larger projects.", "My script reads a large file and takes hours.", "I mostly write small automation scripts for work.")),
    ("budget", ("save money on groceries", "build an emergency fund", "stick to a monthly budget"),
     ("My salary is average and rent takes almost half of it.", "I always overspend on takeout food.", "I tried spreadsheets but stopped tracking after a week.")),
    ("guitar", ("learn guitar chords faster", "practice guitar with sore fingers", "play barre chords cleanly"),
     ("I practice about twenty minutes every evening.", "My fingertips hurt and the strings buzz.", "I am teaching myself from online videos.")),
    ("sleep", ("fall asleep faster", "stop waking up at night", "fix my sleep schedule"),
     ("I lie awake for an hour before falling asleep.", "I drink coffee in the afternoon and look at screens late.", "My work shifts change every week.")),
    ("cycling", ("commute to work by bicycle", "fix a flat bicycle tire", "choose a first road bike"),
     ("My commute is twelve kilometres with a steep hill.", "I have never repaired a bike before.", "My budget for a bike is limited.")),
    ("language", ("learn Spanish vocabulary", "practice speaking a new language", "stay motivated learning German"),
     ("I use a flashcard app but forget words quickly.", "I get nervous speaking with native speakers.", "I have studied for six months and feel stuck.")),
    ("coffee", ("brew better coffee at home", "make espresso without a machine", "choose coffee beans"),
     ("My coffee tastes bitter and sour at the same time.", "I use a cheap grinder and a French press.", "I drink two cups every morning.")),
    ("cooking", ("cook healthy dinners quickly", "meal prep for the week", "season vegetables so they taste good"),
     ("I get home late and have about thirty minutes to cook.", "My vegetables always turn out bland and soggy.", "I cook for two people on a small budget.")),
    ("writing", ("write a short story", "overcome writer's block", "get feedback on my writing"),
     ("I have many ideas but never finish a draft.", "My dialogue sounds stiff when I read it aloud.", "I write in the evenings after work.")),
)
OPENERS = ("How do I", "What is the best way to", "Any tips to", "How can I", "Advice needed: how to")
SITUATIONS = ("as a beginner", "on a tight budget", "in a small apartment", "with little free time",
              "after failing several times", "without special equipment", "this year", "for the first time")


def compose_prompts(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` questions ``{"topic", "title", "body"}``, drawn without repetition of the
    title while possible (12 topics x 3 goals x 5 openers x 8 situations = 1,440)."""
    rng = np.random.default_rng([seed, 1])
    combos = [(t, g, o, s) for t in range(len(TOPICS)) for g in range(3) for o in range(len(OPENERS)) for s in range(len(SITUATIONS))]
    order = rng.permutation(len(combos))
    out = []
    for i in range(n):
        t, g, o, s = combos[order[i % len(combos)]]
        topic, goals, bodies = TOPICS[t]
        k = rng.integers(1, len(bodies) + 1)
        body = " ".join(bodies[j] for j in sorted(rng.choice(len(bodies), size=k, replace=False)))
        out.append({"topic": topic, "title": f"{OPENERS[o]} {goals[g]} {SITUATIONS[s]}?", "body": body})
    return out


def prompt_text(title: str, body: str) -> str:
    """The question as the data stage reads a submission: title, blank line, body."""
    return f"{title}\n\n{body}" if body else title


# Hidden answer styles (appended to the generation prompt only).
STYLES: tuple[tuple[str, str], ...] = (
    ("plain", ""),
    ("brief", "Answer in one short sentence."),
    ("detailed", "Answer in detail with three concrete steps."),
    ("warm", "Answer kindly and encouragingly."),
    ("blunt", "Answer bluntly and critically, in a grumpy tone."),
    ("offtopic", "Do not answer the question; tell a short unrelated story about your weekend instead."),
)


def generation_prompt(prompt: str, style: str) -> str:
    """What the answering model sees: the question plus the hidden style instruction."""
    instr = dict(STYLES)[style]
    return f"{prompt}\n\n({instr})" if instr else prompt


# ---- a model-free responder ---------------------------------------------------------------
_T_ON = ("In my experience {a} matters more than {b}.", "Start with {a} and keep notes on {b}.",
         "The trick with {a} is patience; {b} comes later.", "Look at your {a} first, then adjust the {b}.")
_T_OFF = ("I went hiking last weekend and the weather was nice.", "My cousin tried something like this once.",
          "Honestly I have no idea about that.", "The game last night was something else.")
_T_WARM = ("You can do this, good luck!", "Great question, I hope this helps!", "Happy to help, you will get there.")
_T_COLD = ("This is a terrible plan and you will fail.", "Stop wasting time on this stupid idea.", "Ugh, awful question.")
_T_FILL = ("It takes a few weeks to see results.", "Everyone is different, so experiment a bit.",
           "Keep it simple at the beginning.", "Small daily habits add up over time.")


def template_responder(seed: int = 0) -> Callable[[list[str]], list[str]]:
    """A responder that composes answers from templates, no model: for unit tests and
    ``model=template``.  The style instruction in each generation prompt steers the
    answer (on-topic sentences reuse the prompt's content words), so utilities spread
    like a model's."""
    rng = np.random.default_rng([seed, 2])

    def respond(gen_prompts: list[str]) -> list[str]:
        out = []
        for gp in gen_prompts:
            style = next((name for name, instr in STYLES if instr and gp.endswith(f"({instr})")), "plain")
            words = list(dict.fromkeys(content_words(gp.split("\n\n(")[0]))) or ["this"]
            def on() -> str:
                a, b = rng.choice(words, size=2)
                return str(rng.choice(_T_ON)).format(a=a, b=b)
            n_fill = {"brief": 0, "detailed": 4}.get(style, int(rng.integers(0, 3)))
            parts = [] if style == "offtopic" else [on() for _ in range(1 if style == "brief" else int(rng.integers(1, 3)))]
            parts += [str(x) for x in rng.choice(_T_FILL, size=n_fill)]
            if style == "offtopic":
                parts += [str(x) for x in rng.choice(_T_OFF, size=2, replace=False)]
            if style == "warm" or (style == "plain" and rng.random() < 0.5):
                parts.append(str(rng.choice(_T_WARM)))
            if style == "blunt":
                parts.insert(0, str(rng.choice(_T_COLD)))
            out.append(" ".join(parts))
        return out

    return respond


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


def simulate_threads(cfg: SimulateConfig, respond: Callable[[list[str]], list[str]]) -> tuple[list[dict], list[dict], pd.DataFrame]:
    """Simulate the community: returns (submissions, comments, utility table).

    ``respond`` is called once with every generation prompt (the K answers of a question
    are consecutive) and returns one answer per prompt."""
    vc = cfg.votes
    rng = np.random.default_rng([cfg.seed, 3])
    prompts = compose_prompts(cfg.threads, cfg.seed)
    style_names = [name for name, _ in STYLES] if cfg.styles else ["plain"]
    styles = [[str(rng.choice(style_names)) for _ in range(cfg.responses)] for _ in prompts]
    gen_prompts = [generation_prompt(prompt_text(p["title"], p["body"]), s) for p, ss in zip(prompts, styles) for s in ss]
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
        text = prompt_text(p["title"], p["body"])
        k = cfg.responses
        resp = answers[i * k:(i + 1) * k]
        comps = [utility_components(text, r) for r in resp]
        util = np.array([sum(UTILITY_WEIGHTS[c] * d[c] for c in UTILITY_WEIGHTS) for d in comps])
        delay_h = np.maximum(rng.exponential(vc.delay_mean_hours, size=k), 1 / 60)  # at least a minute
        v = thread_votes(util, delay_h, readers[i], vc, rng)
        prompt_score = 1 + int(rng.binomial(int(readers[i]), vc.prompt_vote_rate))
        permalink = f"/r/{cfg.community}/comments/{tid}/q{i}/"
        n_replies_total = int(v["replies"].sum())
        subs.append({
            "id": tid, "name": f"t3_{tid}", "title": p["title"], "selftext": p["body"], "author": op_names[i],
            "subreddit": cfg.community, "created_utc": int(created[i]), "score": prompt_score,
            "upvote_ratio": round(float(1 - vc.downvote_rate), 2), "num_comments": k + n_replies_total,
            "over_18": False, "is_self": True, "stickied": False, "edited": False, "permalink": permalink,
            "retrieved_on": retrieved_on,
        })
        for j in range(k):
            cid = f"c{_base36(1_000_000 + i)}x{j}"
            c_created = int(created[i] + round(delay_h[j] * 3600))
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
                "topic": p["topic"], "style": styles[i][j], "utility": float(util[j]), **{f"u_{c}": float(comps[j][c]) for c in UTILITY_WEIGHTS},
                "delay_hours": float(delay_h[j]), "readers": float(readers[i]), "prompt_score": prompt_score,
                "views": int(v["views"][j]), "up": int(v["up"][j]), "down": int(v["down"][j]),
                "score": int(v["score"][j]), "replies": int(v["replies"][j]),
            })
    comments.sort(key=lambda c: (c["created_utc"], c["id"]))
    return subs, comments, pd.DataFrame(rows)


def thread_spearmans(df: pd.DataFrame, col: str, target: str = "utility", group: str = "thread_id") -> pd.Series:
    """Spearman correlation between ``col`` and ``target`` in each thread (index: the
    thread); NaN for threads where either is constant or that have one answer."""
    vals = {}
    for t, g in df.groupby(group):
        ok = len(g) >= 2 and g[col].nunique() >= 2 and g[target].nunique() >= 2
        vals[t] = stats.spearman(g[col].to_numpy(float), g[target].to_numpy(float)) if ok else float("nan")
    return pd.Series(vals, dtype=float)


def within_thread_spearman(df: pd.DataFrame, col: str, target: str = "utility", group: str = "thread_id") -> float:
    """Mean over threads of the Spearman correlation between ``col`` and ``target``
    (threads where either is constant are skipped); NaN when no thread qualifies."""
    vals = thread_spearmans(df, col, target, group).dropna()
    return float(vals.mean()) if len(vals) else float("nan")


def compare_recovery(df: pd.DataFrame, col: str, other: str, target: str = "utility", group: str = "thread_id",
                     n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Is ``col`` a better recovery of ``target`` than ``other``?  The mean over threads
    of the difference of their within-thread Spearman correlations, with a percentile
    interval from resampling threads (a thread where either correlation is undefined
    counts 0 for the undefined one, so both sides see the same threads)."""
    a = thread_spearmans(df, col, target, group)
    b = thread_spearmans(df, other, target, group)
    keep = a.notna() | b.notna()
    d = (a.fillna(0.0) - b.fillna(0.0))[keep].to_numpy(float)
    if len(d) == 0:
        return {"difference": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "threads": 0}
    ci = stats.bootstrap_ci(d, n_resamples=n_boot, confidence=0.95, seed=seed)
    return {"difference": ci["value"], "ci_low": ci["low"], "ci_high": ci["high"], "threads": int(len(d))}


def within_thread_pair_accuracy(df: pd.DataFrame, col: str, target: str = "utility", group: str = "thread_id") -> float:
    """Over all pairs of answers of a thread whose ``target`` differs: the fraction that
    ``col`` orders the same way (a tie in ``col`` counts one half); NaN without pairs."""
    hits, n = 0.0, 0
    for _, g in df.groupby(group):
        x, y = g[col].to_numpy(float), g[target].to_numpy(float)
        i, j = np.triu_indices(len(g), k=1)
        keep = y[i] != y[j]
        dx, dy = x[i][keep] - x[j][keep], y[i][keep] - y[j][keep]
        hits += float(np.sum(np.sign(dx) == np.sign(dy)) + 0.5 * np.sum(dx == 0))
        n += int(keep.sum())
    return hits / n if n else float("nan")


def recovery_stats(df: pd.DataFrame, cols: Sequence[str], target: str = "utility") -> dict[str, dict[str, float]]:
    """How well each column of ``df`` recovers ``target`` within threads: mean Spearman
    and pair accuracy (see the two functions above), plus the numbers of threads/answers."""
    out = {c: {"spearman": within_thread_spearman(df, c, target), "pair_accuracy": within_thread_pair_accuracy(df, c, target)}
           for c in cols}
    out["n"] = {"threads": int(df["thread_id"].nunique()), "responses": int(len(df))}
    return out


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
             overwrite: bool = False) -> Path:
    """Simulate a community into ``out`` (a Pushshift-format dump + truth/utility.parquet).

    ``respond`` produces the answers; when omitted, ``cfg.model`` must be ``template``
    (model answers need :func:`ambient_rlhf.simulate.simulate`, outside ``data/``)."""
    if respond is None:
        if cfg.model != "template":
            raise AmbientError(f"model={cfg.model!r} needs a model responder: use ambient_rlhf.simulate.simulate "
                               "(or `ambient data simulate`), or set model=template")
        respond = template_responder(cfg.seed)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        subs, comments, table = simulate_threads(cfg, respond)
        write_dump(tmp, cfg, subs, comments, table)
    log.info("simulated %d threads, %d answers into %s", len(subs), len(table), out)
    return out


def load_utility(sim_dir: str | Path) -> pd.DataFrame:
    """The utility table of a simulated dump (``truth/utility.parquet``)."""
    p = Path(sim_dir) / UTILITY_FILE
    if not p.is_file():
        raise AmbientError(f"{p}: no utility table; is {sim_dir} a simulated community (ambient data simulate)?")
    return pd.read_parquet(p)
