"""The HTTP layer under PRAW for ``ambient data crawl``: retries with backoff.

PRAW (through prawcore) already waits as the ``x-ratelimit-*`` headers ask and retries a
5xx twice with a random 0-4 s pause; it raises on a 429 and on a body that is not JSON.
:class:`RetryingRequestor` is a prawcore ``Requestor`` (PRAW's documented
``requestor_class`` hook), so every request — the OAuth token request included — goes
through it first:

* 429: waits ``Retry-After`` seconds (else ``x-ratelimit-reset``, else the backoff);
* 5xx, a connection dropped mid-body (``Content-Length`` not reached), a timeout, a
  200 whose JSON body is cut: waits ``backoff_base * 2**attempt`` (at most
  ``backoff_max``) and tries again, up to ``max_retries`` times;
* then gives up with :class:`GaveUp` (an error naming the request and the last cause),
  which prawcore passes on without its own retries.

Nothing here logs headers, bodies or form data: the token request carries the app's
secret (in its ``Authorization`` header) and, for a script app with a password, the
password (in its form data). Only the method and the URL path are logged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlparse

from ambient_rlhf.logging import get_logger

log = get_logger("data.crawl")


class GaveUp(Exception):
    """A request still failing after ``max_retries`` retries."""


@dataclass
class RetryPolicy:
    max_retries: int = 8
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    counts: dict[str, int] = field(default_factory=dict)  # cause -> retries, for the crawl report

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** attempt)


def _header_seconds(resp: Any, name: str) -> float | None:
    v = resp.headers.get(name)
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:  # an HTTP date: not sent by Reddit; fall back to the backoff
        return None


def _cut_json(resp: Any) -> bool:
    """A 200 that says it is JSON and does not parse (a body cut short)."""
    if resp.status_code != 200 or "json" not in resp.headers.get("content-type", ""):
        return False
    if not resp.content:
        return False
    try:
        json.loads(resp.content)
    except ValueError:
        return True
    return False


def make_requestor_class(policy: RetryPolicy):
    """A prawcore ``Requestor`` subclass that retries as ``policy`` says (built lazily so
    that importing this module does not need prawcore)."""
    import requests
    from prawcore.exceptions import RequestException
    from prawcore.requestor import Requestor

    transient = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                 requests.exceptions.Timeout)

    class RetryingRequestor(Requestor):
        def request(self, *args: Any, **kwargs: Any):
            method, url = (list(args) + [kwargs.get("method"), kwargs.get("url")])[:2]
            where = f"{method} {urlparse(str(url)).path}"
            attempt = 0
            while True:
                wait = None
                try:
                    resp = super().request(*args, **kwargs)
                except RequestException as e:
                    if not isinstance(e.original_exception, transient):
                        raise
                    cause = f"connection ({type(e.original_exception).__name__})"
                else:
                    status = resp.status_code
                    if status == 429:
                        cause = "429"
                        wait = _header_seconds(resp, "retry-after")
                        if wait is None:
                            wait = _header_seconds(resp, "x-ratelimit-reset")
                    elif 500 <= status < 600:
                        cause = str(status)
                    elif _cut_json(resp):
                        cause = "cut JSON body"
                    else:
                        return resp
                if attempt >= policy.max_retries:
                    raise RequestException(GaveUp(f"{where}: still failing after {attempt} retries "
                                                  f"(last: {cause})"), args, kwargs) from None
                if wait is None:
                    wait = policy.backoff(attempt)
                policy.counts[cause] = policy.counts.get(cause, 0) + 1
                log.warning("%s: %s; retry %d/%d in %.2f s", where, cause, attempt + 1, policy.max_retries, wait)
                policy.sleep(wait)
                attempt += 1

    return RetryingRequestor
