"""The data directory contract: file names and columns every later stage reads.

``ambient data build`` writes, in its output directory:

* ``responses.parquet``: one row per kept response (``RESPONSE_COLUMNS`` at least);
* ``pairs.parquet``: one row per preference pair (``PAIR_COLUMNS`` at least);
* ``rankings.parquet``: one row per thread with >= 2 responses (``RANKING_COLUMNS``):
  the thread's responses ordered best-first by ``adjusted``, for K-way ranking losses;
* ``manifest.json`` and ``report.md`` (+ PNG plots);
* after ``ambient data acts`` (optional): ``acts.parquet`` (one row per act and comment) and
  ``act_pairs.parquet`` (``PAIR_COLUMNS``; ``ambient rm pairs=acts``).

``split`` is one of ``SPLITS``; ``tier`` one of ``TIERS`` (or null before tiers exist).
``reply_sentiment`` is null when a response has no direct replies.
"""

RESPONSES_FILE = "responses.parquet"
PAIRS_FILE = "pairs.parquet"
RANKINGS_FILE = "rankings.parquet"
ACTS_FILE = "acts.parquet"  # ``ambient data acts`` (docs/acts.md), optional
ACT_PAIRS_FILE = "act_pairs.parquet"  # its pairs, in the PAIR_COLUMNS contract
SPLITS = ("train", "valid", "test")
TIERS = ("good", "ok", "bad")

RESPONSE_COLUMNS = (
    "thread_id", "response_id", "prompt", "response", "score", "created_utc",
    "prompt_score", "prompt_created_utc", "rank", "rank_z", "delay_z", "adjusted",
    "tier", "reply_sentiment", "split",
)
PAIR_COLUMNS = (
    "thread_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score",
    "chosen_created_utc", "rejected_created_utc", "score_ratio", "seconds_difference", "split",
)
RANKING_COLUMNS = (
    "thread_id", "prompt", "responses", "scores", "adjusted", "split",
)
