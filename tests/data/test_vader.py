"""The fast VADER port (data/vader.py) against vaderSentiment itself, the reference it ports.

Every expected value is ``vaderSentiment``'s ``polarity_scores(text)["compound"]``,
computed here by the original package, never by the code under test.
"""

import io
import json

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from ambient_rlhf.data import labels as L
from ambient_rlhf.data import utility, vader


@pytest.fixture(scope="module")
def reference():
    sia = SentimentIntensityAnalyzer()
    return lambda text: sia.polarity_scores(text)["compound"]


# one text per rule of polarity_scores / sentiment_valence, and the corner cases of the port
RULES = [
    "",                                           # no words
    "   \n\t ",                                   # whitespace only
    "The book was good.",                         # one lexicon word
    "VADER is smart, handsome, and funny!",       # punctuation emphasis (!)
    "Is it good?? Really???? Why?",               # question marks: 2-3 and 4+
    "Great!!!!!! wow",                            # exclamations capped at 4
    "VADER is VERY SMART, handsome, and FUNNY.",  # ALL CAPS emphasis (some words only)
    "GOOD GREAT NICE",                            # all words in caps: no emphasis
    "VERY good, but BAD in places",               # booster in caps, caps on a negative
    "The book was only kind of good.",            # "kind of" dampener
    "The plot was kind but slow",                 # "kind" without "of" is a lexicon word
    "It is not good, isn't great, and never bad", # negations, n't
    "Never so good; never this bad",              # "never so/this" amplifies
    "without a doubt, an excellent idea",         # "without ... doubt" is no negation
    "no good",                                    # "no" negates the next lexicon word
    "no problem at all, no",                      # "no" before a lexicon word, and alone last
    "no joy or fun",                              # "no X or Y"
    "no, not like this nor that or happy",
    "At least it isn't a horrible book.",         # "at least"
    "one of the least compelling ideas",          # "least" negates
    "the very least helpful answer",              # "very least"
    "least bad",                                  # "least" at position 0
    "With VADER, sentiment analysis is the shit!",  # special case "the shit"
    "this is the kiss of death for us",           # three-word special case
    "yeah right, what a bad ass",                 # special cases after the word
    "the bomb is good",                           # special case two and three words back
    "he was sort of happy and just enough good",  # booster n-grams "sort of"
    "good good good but bad bad good",            # "but" with repeated values (the quirk)
    "I love it but it is awful but fine",         # two "but": the first counts
    "nice but okay",                              # quirk: okay (0.9) equals nice once halved,
                                                  # so nice is halved twice, okay not scaled
    "BUT nothing good",                           # "but" in caps, first word
    "happy :) sad :( and :D or :-D",              # emoticons survive the stripping
    "Catch utf-8 emoji such as 💘 and 💋 and 😁",  # emojis -> their descriptions
    "no space before😁emoji and after 💋there",
    "café naïve ünïcode GOOD résumé",             # non-ASCII without emojis
    "'good' \"bad\" (great) [awful] ...nice...",  # punctuation around lexicon words
    "a ab abc :-) -- ?? !!",                      # tokens of <= 2 chars after stripping
    "really extremely incredibly amazing",        # boosters at distance 1, 2, 3
    "SO very GOOD but not TERRIBLE",
    "kind of",                                    # "kind" last word
    "Today only kinda sux! But I'll get by, lol",
]


@pytest.mark.parametrize("text", RULES)
def test_compound_equals_vadersentiment(reference, text):
    assert vader.compound(text) == reference(text)


def test_batch_and_wrappers_equal_vadersentiment(reference):
    texts = RULES + RULES[:5]  # duplicates too
    assert vader.compounds(texts) == [reference(t) for t in texts]
    assert L.sentiment("great") == reference("great") == round(3.1 / (3.1**2 + 15) ** 0.5, 4)
    assert utility.sentiment("not bad at all") == reference("not bad at all")


@pytest.mark.slow
def test_every_direct_reply_of_the_real_dump(shared_data, reference):
    """Every direct reply to a top-level comment of the AskAcademia dump (the replies the
    ingest scores, 19,132 of them): the same compound score to 1e-6 (in fact the same float)."""
    import zstandard

    top, replies = set(), []
    with open(shared_data / "reddit-askacademia" / "AskAcademia_comments.ndjson.zst", "rb") as fh:
        stream = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh)
        for line in io.BufferedReader(stream):
            o = json.loads(line)
            if o["parent_id"] == o["link_id"]:
                top.add(o["name"])
            elif o["parent_id"] in top:
                replies.append(o["body"])
    assert len(replies) == 19132
    got = vader.compounds(replies)
    want = [reference(t) for t in replies]
    worst = max(range(len(replies)), key=lambda i: abs(got[i] - want[i]))
    assert abs(got[worst] - want[worst]) <= 1e-6, replies[worst][:300]
    assert sum(g == w for g, w in zip(got, want)) == len(replies)
