"""The texts of the simulated community: questions composed from topics, goals, openers
and situations (:func:`compose_prompts`), the hidden answer styles appended to the
answering model's prompt (:func:`generation_prompt`), and a responder that composes
answers from templates with no model (:func:`template_responder`: tests, ``model=template``).
Pure, seeded; :mod:`ambient_rlhf.data.simulate` re-exports every name."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ambient_rlhf.data.utility import content_words

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
