"""``ambient data crawl``: collect whole threads of subreddits from the Reddit API with PRAW
into the Pushshift-style dump files that ``ambient data build`` reads.

A run has two phases (docs/data.md, "Crawling"):

1. **sweep**: page through every listing of the plan (``new``, ``hot``, ``top``/
   ``controversial`` per time filter, and search per query x sort x time filter) of each
   subreddit and journal the submission ids seen.  Each listing stops at ~1,000 items on
   Reddit; their union reaches further back than any one of them.
2. **fetch**: every id found and not yet fetched whose thread is at least ``mature_days``
   old is fetched with its whole comment tree (``replace_more(limit=None)``) and appended
   to the dump files, oldest first, with ``retrieved_on``.  Younger threads wait in the
   journal and are fetched by a later run once their scores have matured.

The dump files and the journal (:mod:`ambient_rlhf.data.crawl_store`) make a killed run
resumable: rerun the same command.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

from ambient_rlhf import AmbientError, __version__
from ambient_rlhf.config import ConfigError, at_least, check_bounds
from ambient_rlhf.data.crawl_http import RetryPolicy, make_requestor_class
from ambient_rlhf.data.crawl_store import JOURNAL, DumpWriter, Journal, dump_paths
from ambient_rlhf.logging import get_logger, progress

log = get_logger("data.crawl")
DAY = 86400.0
TIME_FILTERS = ("hour", "day", "week", "month", "year", "all")
LISTINGS = ("new", "hot", "rising", "top", "controversial")
SEARCH_SORTS = ("relevance", "hot", "top", "new", "comments")
USER_AGENT = f"python:ambient-rlhf-crawl:{__version__} (research crawler; set user_agent in praw.ini)"


@dataclass
class CrawlConfig:
    listings: list[str] = field(default_factory=lambda: [
        "new", "hot", "rising", "top:all", "top:year", "top:month", "top:week", "controversial:all",
        "controversial:year"])
    """Subreddit listings swept for submission ids: new, hot, rising, or top/controversial
    with a time filter (top:all, top:year, ...: hour, day, week, month, year, all).  Each
    stops at ~1,000 items on Reddit."""
    search_queries: list[str] = field(default_factory=lambda: ["self:yes", "self:no"])
    """Search queries run inside each subreddit (restrict_sr), each with every search_sorts
    x search_windows; [] = no search.  Reddit's search has no date range, so these slice
    the subreddit by kind of post and by relative time filter."""
    search_sorts: list[str] = field(default_factory=lambda: ["new", "top", "comments", "relevance"])
    """Sort orders of each search (relevance, hot, top, new, comments)."""
    search_windows: list[str] = field(default_factory=lambda: ["day", "week", "month", "year", "all"])
    """Time filters of each search (hour, day, week, month, year, all)."""
    mature_days: Annotated[float, at_least(0)] = 7.0
    """A thread is fetched once it is this many days old (its scores have settled; the data
    stage's filters.min_age_days, 7 by default, drops younger ones).  Younger threads wait in
    the journal for a later run."""
    window_days: Annotated[float, at_least(0)] = 183.0
    """The build's source.window_days: a thread written after comments more than this many
    days newer than it is counted as out_of_order (build those files with window_days=0)."""
    max_retries: Annotated[int, at_least(0)] = 8
    """Retries of one request after a 429, a 5xx, a dropped connection or a cut body."""
    backoff_base: Annotated[float, at_least(0)] = 2.0
    """Seconds before the first retry; doubled each retry (a 429's Retry-After wins)."""
    backoff_max: Annotated[float, at_least(0)] = 300.0
    """Longest wait between two retries, in seconds."""
    timeout: Annotated[float, at_least(1)] = 30.0
    """Seconds to wait for the server's answer to one request."""
    page_size: Annotated[int, at_least(1)] = 100
    """Items per listing page (the API's maximum is 100)."""

    def __post_init__(self) -> None:
        check_bounds(self)
        for spec in self.listings:
            name, _, t = spec.partition(":")
            if name not in LISTINGS or (t and (name not in ("top", "controversial") or t not in TIME_FILTERS)):
                raise ConfigError(f"config key 'listings': unknown listing {spec!r}; use new, hot, rising, "
                                   f"top:T or controversial:T with T in {', '.join(TIME_FILTERS)}")
        for s in self.search_sorts:
            if s not in SEARCH_SORTS:
                raise ConfigError(f"config key 'search_sorts': unknown sort {s!r}; use {', '.join(SEARCH_SORTS)}")
        for t in self.search_windows:
            if t not in TIME_FILTERS:
                raise ConfigError(f"config key 'search_windows': unknown time filter {t!r}; use "
                                   f"{', '.join(TIME_FILTERS)}")


def plan(subs: list[str], cfg: CrawlConfig) -> list[str]:
    """The sources of a sweep, as keys ``SUB/LISTING[:T]`` and ``SUB/search:SORT:T:QUERY``."""
    out = []
    for sub in subs:
        out += [f"{sub}/{spec}" for spec in cfg.listings]
        out += [f"{sub}/search:{s}:{t}:{q}" for q in cfg.search_queries for s in cfg.search_sorts
                for t in cfg.search_windows]
    return out


def source_request(key: str) -> tuple[str, dict[str, str]]:
    """The API path and parameters of a source key."""
    sub, spec = key.split("/", 1)
    if spec.startswith("search:"):
        _, sort, t, query = spec.split(":", 3)
        return f"r/{sub}/search", {"q": query, "restrict_sr": "on", "sort": sort, "t": t, "syntax": "lucene"}
    name, _, t = spec.partition(":")
    return f"r/{sub}/{name}", ({"t": t} if t else {})


def make_reddit(settings: dict[str, Any], site: str | None, cfg: CrawlConfig, policy: RetryPolicy):
    """A read-only ``praw.Reddit``: credentials from ``settings``, else the environment
    (``praw_client_id``, ``praw_client_secret``, ...), else praw.ini (section ``site``)."""
    try:
        import praw
        from praw.exceptions import MissingRequiredAttributeException
    except ImportError:
        raise AmbientError("ambient data crawl needs PRAW: pip install 'ambient-rlhf[crawl]' (or pip install praw)") from None
    kw = {"user_agent": USER_AGENT, **settings}
    try:
        reddit = praw.Reddit(site, requestor_class=make_requestor_class(policy), check_for_updates=False,
                             check_for_async=False, timeout=int(cfg.timeout), **kw)
    except MissingRequiredAttributeException as e:
        raise AmbientError(f"Reddit credentials missing ({str(e).splitlines()[0]}): set praw_client_id and "
                           f"praw_client_secret in the environment, or put them in a praw.ini section and pass "
                           f"--site NAME (docs/data.md, Crawling)") from None
    if reddit.config.username and reddit.config.password:
        log.info("using the script app's user login (praw_username); reads only")
    return reddit


def _api(call: Callable[[], Any], what: str) -> Any:
    """Run one API call; turn prawcore's errors into an error naming what failed."""
    import prawcore

    try:
        return call()
    except prawcore.exceptions.OAuthException as e:
        raise AmbientError(f"{what}: Reddit refused the app's credentials ({e}); check praw_client_id / "
                           f"praw_client_secret (a 'script' or 'web app', not an 'installed app')") from None
    except (prawcore.exceptions.NotFound, prawcore.exceptions.Forbidden, prawcore.exceptions.Redirect):
        raise  # the caller decides: a gone thread is skipped, a missing subreddit is an error
    except prawcore.exceptions.ResponseException as e:
        code = e.response.status_code
        if code == 401:
            raise AmbientError(f"{what}: Reddit refused the app's credentials (401); check praw_client_id / "
                               f"praw_client_secret") from None
        raise AmbientError(f"{what}: HTTP {code} from Reddit; the crawl state is saved, rerun the same "
                           f"command to resume") from None
    except prawcore.exceptions.RequestException as e:
        raise AmbientError(f"{what}: {e.original_exception}; the crawl state is saved, rerun the same "
                           f"command to resume") from None


def sweep(reddit, journal: Journal, cfg: CrawlConfig) -> None:
    """Phase 1: page through every source of the run not yet done; journal the ids."""
    import prawcore

    run = journal.state.run
    todo = [s for s in run.sources if s not in run.sources_done]
    with progress(total=len(todo), desc="sweep", unit="listing") as bar:
        for key in todo:
            path, params = source_request(key)
            sub = key.split("/", 1)[0]
            after = run.pages.get(key)
            # a last page journaled before a kill, its src_done not: the source is finished
            last_page_done = key in run.pages and after is None
            while not last_page_done:
                try:
                    listing = _api(lambda: reddit.get(path, params={**params, "limit": cfg.page_size,
                                                                     "after": after}), f"r/{sub}: {key}")
                except (prawcore.exceptions.NotFound, prawcore.exceptions.Forbidden,
                        prawcore.exceptions.Redirect) as e:
                    raise AmbientError(f"r/{sub}: {type(e).__name__} on {path}: no such subreddit, or it is "
                                       f"private, quarantined or banned") from None
                found = journal.state.found
                items = [[s.id, sub, float(s.created_utc)] for s in listing.children if s.id not in found]
                if items:
                    journal.append({"ev": "found", "items": items})
                before, after = after, listing.after
                journal.append({"ev": "page", "src": key, "after": after})
                if not after or not listing.children or after == before:  # the last page (or a stuck cursor)
                    break
            journal.append({"ev": "src_done", "src": key})
            bar.update(1)
    journal.append({"ev": "sweep_done"})


def _name(x: Any) -> str | None:
    return None if x is None else str(x)


SUBMISSION_FIELDS = ("id", "name", "title", "selftext", "created_utc", "score", "upvote_ratio", "num_comments",
                     "over_18", "stickied", "distinguished", "removed_by_category", "is_self", "permalink",
                     "link_flair_text", "locked")
COMMENT_FIELDS = ("id", "name", "link_id", "parent_id", "body", "created_utc", "score", "stickied",
                  "distinguished", "is_submitter", "controversiality", "edited")


def submission_record(s: Any, retrieved: int) -> dict[str, Any]:
    """A Pushshift-style submission line (read from the object's attributes, never through
    PRAW's lazy getattr, which would fetch)."""
    d = s.__dict__
    rec = {k: d.get(k) for k in SUBMISSION_FIELDS}
    rec["author"] = _name(d.get("author")) or "[deleted]"
    rec["subreddit"] = _name(d.get("subreddit"))
    rec["retrieved_on"] = retrieved
    return rec


def comment_records(comments: list[Any], retrieved: int) -> list[dict[str, Any]]:
    """Pushshift-style comment lines, parents before replies: ordered by (time, depth, id)."""
    recs = []
    for c in comments:
        d = c.__dict__
        rec = {k: d.get(k) for k in COMMENT_FIELDS}
        rec["author"] = _name(d.get("author")) or "[deleted]"
        rec["subreddit"] = _name(d.get("subreddit"))
        rec["retrieved_on"] = retrieved
        recs.append(rec)
    parent = {r["name"]: r["parent_id"] for r in recs}

    def depth(r: dict) -> int:
        n, p = 0, r["parent_id"]
        while p in parent and n < 10_000:
            n, p = n + 1, parent[p]
        return n

    recs.sort(key=lambda r: (r["created_utc"], depth(r), r["id"]))
    return recs


def fetch_thread(reddit, sid: str) -> tuple[Any, list[Any]] | None:
    """The submission and its whole comment tree; None when it is gone (404/403)."""
    import prawcore

    s = reddit.submission(sid)
    s.comment_sort = "old"
    s.comment_limit = 500
    from praw.exceptions import DuplicateReplaceException

    try:
        _api(lambda: s.comments.replace_more(limit=None), f"thread {sid}")
    except (prawcore.exceptions.NotFound, prawcore.exceptions.Forbidden) as e:
        log.info("thread %s: %s (gone or private); recorded and skipped", sid, type(e).__name__)
        return None
    except DuplicateReplaceException:  # api/morechildren sent a comment the tree already had
        log.warning("thread %s: Reddit sent a comment twice while loading the tree; recorded as gone", sid)
        return None
    return s, s.comments.list()


def _lines(recs: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in recs)


def fetch_due(reddit, journal: Journal, writer: DumpWriter, cfg: CrawlConfig, clock: Callable[[], float]) -> None:
    """Phase 2: fetch and append every due thread, oldest first; one journal line each."""
    st, run = journal.state, journal.state.run
    now = clock()
    due = sorted((created, sid, sub) for sid, (sub, created) in st.found.items()
                 if sid not in st.done and sub in run.subs and created + cfg.mature_days * DAY <= now)
    for created, sid, sub in progress(due, desc="threads", unit="thread"):
        got = fetch_thread(reddit, sid)
        if got is None:
            journal.append({"ev": "thread", "id": sid, "sub": sub, "status": "gone"})
            continue
        s, comments = got
        retrieved = int(clock())
        sub_rec = submission_record(s, retrieved)
        com_recs = comment_records(comments, retrieved)
        late = int(bool(com_recs) and st.stream_time.get(sub, 0.0) > created + cfg.window_days * DAY)
        sizes = writer.append(sub, _lines([sub_rec]), _lines(com_recs))
        journal.append({"ev": "thread", "id": sid, "sub": sub, "status": "written", "bytes": sizes,
                        "comments": len(com_recs), "retrieved_on": retrieved, "out_of_order": late,
                        "max_created": max((r["created_utc"] for r in com_recs), default=None)})


def crawl(subs: list[str], out: str | Path, cfg: CrawlConfig, settings: dict[str, Any] | None = None,
          site: str | None = None, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Crawl (or resume crawling) ``subs`` into ``out``; return a summary (also printed by
    the CLI).  ``settings`` go to ``praw.Reddit`` (credentials, ``oauth_url``, ...)."""
    if not subs:
        raise AmbientError("name at least one subreddit (without r/)")
    subs = [s[2:] if s.lower().startswith("r/") else s for s in subs]
    policy = RetryPolicy(cfg.max_retries, cfg.backoff_base, cfg.backoff_max, sleep)
    reddit = make_reddit(settings or {}, site, cfg, policy)  # no request yet: fails early on missing credentials
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / JOURNAL).exists():
        stray = [p for s in subs for p in dump_paths(out, s) if p.exists()]
        if stray:
            raise AmbientError(f"{stray[0]}: exists but {out / JOURNAL} does not, so it was not written by this "
                               f"crawl; crawl into a new --out directory")
    journal = Journal(out)
    st = journal.state
    sources = plan(subs, cfg)
    if st.run is None or st.run.finished:
        journal.append({"ev": "run", "subs": subs, "sources": sources, "at": clock()})
    elif st.run.subs != subs or st.run.sources != sources:
        raise AmbientError(f"{out / JOURNAL}: an unfinished crawl of {' '.join(st.run.subs)} (started "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(st.run.started))} UTC) with other "
                           f"subreddits or listings is in this directory; finish it first by rerunning it with "
                           f"the same subreddits and config")
    else:
        log.warning("resuming the unfinished crawl run in %s", out)
    writer = DumpWriter(out, st)
    writer.check(subs)
    try:
        if not st.run.sweep_done:
            sweep(reddit, journal, cfg)
        fetch_due(reddit, journal, writer, cfg, clock)
        journal.append({"ev": "run_done"})
    finally:
        writer.close()
        journal.close()
    return summary(st, subs, cfg, clock(), policy.counts)


def summary(st, subs: list[str], cfg: CrawlConfig, now: float, retries: dict[str, int]) -> dict[str, Any]:
    waiting = [created for sid, (sub, created) in st.found.items() if sid not in st.done and sub in subs]
    nxt = min(waiting, default=None)
    return {
        "found": sum(1 for sub, _ in st.found.values() if sub in subs),
        "written": sum(1 for v in st.done.values() if v == "written"),
        "gone": sum(1 for v in st.done.values() if v == "gone"),
        "waiting_to_mature": len(waiting),
        "next_due_utc": None if nxt is None else time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime(max(now, nxt + cfg.mature_days * DAY))),
        "out_of_order": st.out_of_order,
        "retries": retries,
        "runs": st.runs,
    }
