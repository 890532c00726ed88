"""Configuration of ``ambient data build``: input format and column mapping, filters,
labels and the SHP pair rule, splits.

Its own module so that the readers (:mod:`ambient_rlhf.data.threads`) and the build
(:mod:`ambient_rlhf.data.build`) can both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ambient_rlhf import AmbientError
from ambient_rlhf.config import at_least, between, check_bounds

@dataclass
class ColumnMap:
    """Column names of a responses table (defaults: the reddit_writing_prompts CSV)."""

    prompt_id: str = "prompt_id"
    """Thread id column; rows of one thread must be adjacent (as in the public CSV)."""
    prompt: str = "prompt"
    """Prompt text column."""
    prompt_score: str = "prompt_score"
    """Prompt score column (integer)."""
    prompt_created_utc: str = "prompt_created_utc"
    """Prompt creation time column (unix seconds)."""
    response_id: str = "response_id"
    """Response id column."""
    response: str = "response"
    """Response text column."""
    response_score: str = "response_score"
    """Response score column (integer)."""
    response_created_utc: str = "response_created_utc"
    """Response creation time column (unix seconds)."""
    response_children: str = "response_children"
    """Optional: JSON list of the direct replies (texts, or objects with body/text) used for
    reply_sentiment; ignored when the table has no such column."""
    prompt_author: str = "prompt_author"
    """Optional: prompt author column (enables the prompt-author filter)."""
    response_author: str = "response_author"
    """Optional: response author column (enables the deleted-author, bot and prompt-author
    filters; without it those filters cannot apply)."""
    retrieved_utc: str = "retrieved_utc"
    """Optional: when the row's scores were retrieved (unix seconds), for score maturity."""


@dataclass
class SourceConfig:
    format: Literal["auto", "reddit", "table", "shp"] = "auto"
    """Input format; auto detects from file names (*_submissions/*_comments, .csv/.jsonl/
    .parquet) and content (SHP columns, comment/submission fields)."""
    window_days: Annotated[float, at_least(0)] = 183.0
    """A dump thread is closed (labelled, written, forgotten) once the comment stream is this
    many days past its submission; later comments are counted as comments.late.  183: Reddit
    archives threads after six months, so nothing arrives later there.  0 = keep every
    thread open until the end (memory then grows with the dump)."""
    columns: ColumnMap = field(default_factory=ColumnMap)
    """Column mapping for responses tables."""
    keep_damaged: bool = False
    """What to do with a truncated or corrupt ``.zst`` file.  false (the default): stop
    with an error naming the file and the byte offset -- a half-copied dump would
    otherwise build "successfully" from part of the data, with the threads open at the cut
    labelled from incomplete answer sets.  true (``--keep-damaged``): keep every line that
    can be decoded (after a corrupt stretch, from the next intact frame on), drop the
    threads the gap may have touched, and count both in the manifest (``counts.damage``,
    ``bad_records.damaged_streams``).  NDJSON dumps and JSONL tables only; a damaged
    ``.csv.zst`` or SHP file is always an error (docs/data.md, "Damaged files")."""


def _default_bots() -> list[str]:
    return ["AutoModerator", "RemindMeBot", "WikiTextBot", "sneakpeekbot", "RepostSleuthBot",
            "LinkifyBot", "GifReversingBot", "timezone_bot", "converter-bot", "B0tRank"]


@dataclass
class FilterConfig:
    subreddit: str | None = None
    """Keep only records of this subreddit (case-insensitive); None keeps all."""
    bots: list[str] = field(default_factory=_default_bots)
    """Bot accounts whose comments and replies are dropped (case-insensitive); AutoModerator
    and a few bots that post in every subreddit."""
    drop_nsfw: bool = True
    """Drop threads whose submission is marked over_18 (on by default: training text)."""
    min_prompt_score: int = 0
    """Drop threads whose prompt scored below this.  0 keeps every Reddit thread (scores there
    are >= 0) and drops only downvoted Stack Exchange questions; pairs have their own,
    stricter threshold (labels.min_prompt_score)."""
    max_prompt_chars: Annotated[int, at_least(1)] = 10000
    """Drop threads whose prompt (title + body) is longer than this many characters (walls of
    text are rarely questions; 10k chars is ~2.5k tokens)."""
    max_chars: Annotated[int, at_least(1)] = 5000
    """Drop responses longer than this many characters (~1.2k tokens: longer than any response
    a small model is trained to write)."""
    min_responses: Annotated[int, at_least(1)] = 2
    """Drop threads with fewer kept responses (a ranking needs two)."""
    min_age_days: Annotated[float, at_least(0)] = 7.0
    """Score maturity: a record counts only when its thread was at least this old when the
    record's score was retrieved (retrieved_on - thread created_utc).  Reddit votes mostly
    arrive in the first days; 7 days is the SHP convention."""
    allow_missing_retrieved_on: bool = False
    """Keep records without a retrieval time (their maturity is unknown; they are counted as
    kept_without_retrieved_on).  Needed for tables and SHP files, which carry no retrieval
    time, when their scores are known to be final (e.g. a Stack Exchange data dump)."""


@dataclass
class LabelConfig:
    rank_weight: float = 1.0
    """Weight of -rank_z in adjusted (higher rank_z = worse rank)."""
    delay_weight: float = 0.5
    """Weight of delay_z in adjusted: a late answer that still ranks well overcame the early-
    answer advantage.  With both z-scores standardised, regressing rank_z on delay_z gives a
    slope equal to their pooled within-thread correlation, so -rank_z + corr * delay_z is the
    rank with the linear time effect removed; corr is 0.50 on AskAcademia (0.35 on the beer
    table).  Every build reports it for its data as labels.rank_delay_correlation in the
    manifest, to set this from."""
    tier_quantiles: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    """Quantiles of adjusted (over the train split) that separate bad | ok | good; terciles."""
    reply_sentiment: bool = True
    """Compute reply_sentiment (VADER over direct replies).  It is most of the build's CPU
    time; false leaves the column null."""
    sentiment_process: bool = True
    """Score reply sentiment in a second process while the reader parses (the same numbers;
    uses a second core).  false scores in the reading process (e.g. when each core already
    runs a build; a local ``--workers N`` on N cores or fewer sets it by itself)."""
    min_score: Annotated[int, at_least(1)] = 2
    """Pairs: both responses need at least this score (SHP: 2)."""
    min_prompt_score: int = 10
    """Pairs: the prompt needs at least this score (SHP: 10); unknown prompt scores pass."""
    min_score_ratio: Annotated[float, at_least(1)] = 2.0
    """Pairs: chosen score >= this times the rejected score (SHP: 2)."""
    max_pairs_per_thread: Annotated[int, at_least(1)] = 5
    """Pairs: at most this many per thread in train (those with the largest score ratio;
    SteamSHP used 5); valid and test keep all."""
    time_rule: bool = True
    """Pairs: the chosen response was written no earlier than the rejected one (SHP).  false
    builds pairs without it, for the "earlier answer wins" baseline; pairs.parquet then
    breaks the SHP rule on purpose (manifest records it)."""


@dataclass
class SplitConfig:
    train: Annotated[float, between(0, 1)] = 0.9
    """Fraction of threads in train (by a hash of the thread id)."""
    valid: Annotated[float, between(0, 1)] = 0.05
    """Fraction of threads in valid."""
    test: Annotated[float, between(0, 1)] = 0.05
    """Fraction of threads in test; the three must sum to 1."""
    salt: str = ""
    """Mixed into the hash; change it for a different (still deterministic) split."""


@dataclass
class DataConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    """Input format, dump windowing, table column mapping."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    """What is dropped before labelling (each filter has a counter in the manifest)."""
    labels: LabelConfig = field(default_factory=LabelConfig)
    """Adjusted-rank weights, tiers, reply sentiment, and the SHP pair rule."""
    splits: SplitConfig = field(default_factory=SplitConfig)
    """Train/valid/test fractions."""
    max_bad_fraction: Annotated[float, between(0, 1)] = 0.01
    """Fail when more than this fraction of the records read is malformed (1%: a few bad
    lines are normal in scraped dumps, many mean a wrong file or format)."""

    def validate(self) -> None:
        check_bounds(self)  # declared on the fields (load_config checks them too)
        s = self.splits
        fr = (s.train, s.valid, s.test)
        if min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise AmbientError(f"splits.train/valid/test must be >= 0 and sum to 1, got {fr}")
        q = self.labels.tier_quantiles
        if len(q) != 2 or not (0 < q[0] <= q[1] < 1):
            raise AmbientError(f"labels.tier_quantiles must be two numbers 0 < lo <= hi < 1, got {q}")
        if self.labels.min_score < 1:
            raise AmbientError("labels.min_score must be >= 1 (score ratios need positive scores)")
        if self.labels.min_score_ratio < 1:
            raise AmbientError("labels.min_score_ratio must be >= 1")
        if self.labels.max_pairs_per_thread < 1:
            raise AmbientError("labels.max_pairs_per_thread must be >= 1")
        if self.filters.min_responses < 1:
            raise AmbientError("filters.min_responses must be >= 1")
        if not 0 <= self.max_bad_fraction <= 1:
            raise AmbientError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
