"""A small Reddit API on 127.0.0.1 for the crawl tests: it speaks the JSON of the real API
(OAuth token endpoint, subreddit listings, search, comment pages, ``api/morechildren``)
so PRAW can be pointed at it through its ``oauth_url``/``reddit_url`` settings.

What it imitates of the real service, because the crawler must cope with it:

* every listing (``new``, ``top``, ...) stops after ``cap`` items (1,000 on Reddit) and
  search after ``search_cap``; pages of at most 100, cursor ``after`` = the last fullname;
* comment pages show ``inline`` top-level comments and replies down to ``depth`` levels;
  the rest hides behind ``more`` objects (``api/morechildren``, 100 ids per call) and
  "continue this thread" links (``count: 0``), as ``replace_more`` expects;
* faults queued with :meth:`RedditAPI.fail`: 429 with ``Retry-After``, 5xx, a body cut
  before its ``Content-Length`` (connection closed), a body cut *with* a matching length
  (broken JSON), and rate-limit headers that say "0 requests left, reset in 1 s".

Every request is logged as ``(monotonic time, method, path, status)``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WINDOWS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 31 * 86400, "year": 366 * 86400}


def b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = digits[r] + s
        if n == 0:
            return s


class RedditAPI:
    """The world (``subs``: name -> list of submission dicts, ``comments``: submission id ->
    list of comment dicts with ``parent_id``) and the server that serves it."""

    def __init__(self, client_id: str = "cid", secret: str = "sekrit-123", cap: int = 1000,
                 search_cap: int = 250, inline: int = 5, depth: int = 3, now: float | None = None):
        self.client_id, self.secret = client_id, secret
        self.cap, self.search_cap, self.inline, self.depth = cap, search_cap, inline, depth
        self.now = time.time() if now is None else now
        self.subs: dict[str, list[dict]] = {}
        self.comments: dict[str, list[dict]] = {}
        self.faults: list[tuple[str, str]] = []  # (path substring, kind), used in order
        self.log: list[tuple[float, str, str, int]] = []
        self.tokens_issued = 0
        self.on_request = None  # called with each request's path before it is served; True = hang up unanswered
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ the world
    def add_submission(self, sub: str, sid: str, created: float, score: int, title: str, selftext: str = "",
                       author: str = "op", is_self: bool = True, **extra) -> dict:
        d = {"id": sid, "name": "t3_" + sid, "subreddit": sub, "title": title, "selftext": selftext,
             "author": author, "created_utc": float(created), "score": score, "num_comments": 0,
             "over_18": False, "stickied": False, "distinguished": None, "removed_by_category": None,
             "is_self": is_self, "permalink": f"/r/{sub}/comments/{sid}/x/", "upvote_ratio": 0.9}
        d.update(extra)
        self.subs.setdefault(sub, []).append(d)
        self.comments.setdefault(sid, [])
        return d

    def add_comment(self, sid: str, cid: str, parent: str, created: float, score: int, body: str,
                    author: str = "someone") -> dict:
        sub = next(s["subreddit"] for v in self.subs.values() for s in v if s["id"] == sid)
        d = {"id": cid, "name": "t1_" + cid, "link_id": "t3_" + sid, "parent_id": parent, "subreddit": sub,
             "body": body, "author": author, "created_utc": float(created), "score": score,
             "stickied": False, "distinguished": None, "is_submitter": False, "controversiality": 0}
        self.comments[sid].append(d)
        for s in self.subs[sub]:
            if s["id"] == sid:
                s["num_comments"] += 1
        return d

    def fail(self, path_part: str, kind: str, times: int = 1) -> None:
        """Queue a fault for the next ``times`` requests whose path contains ``path_part``:
        ``404``, ``429``, ``500``, ``503``, ``cut`` (connection closed mid-body), ``badjson`` (body cut,
        length matching), ``ratelimit0`` (a good answer saying 0 requests left for 1 s)."""
        self.faults.extend([(path_part, kind)] * times)

    # ------------------------------------------------------------------ serving
    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall per request

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                api._handle(self, "GET")

            def do_POST(self):
                api._handle(self, "POST")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a killed client: nothing to report
                pass

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _take_fault(self, path: str) -> str | None:
        with self.lock:
            for i, (part, kind) in enumerate(self.faults):
                if part in path:
                    del self.faults[i]
                    return kind
        return None

    def _send(self, h, status: int, obj, headers: dict | None = None, kind: str | None = None) -> None:
        body = json.dumps(obj).encode()
        with self.lock:
            self.log.append((time.monotonic(), h.command, urlparse(h.path).path.rstrip("/"), status))
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=UTF-8")
        rl = {"x-ratelimit-remaining": "590", "x-ratelimit-used": "10", "x-ratelimit-reset": "300"}
        if kind == "ratelimit0":
            rl = {"x-ratelimit-remaining": "0", "x-ratelimit-used": "600", "x-ratelimit-reset": "1"}
        for k, v in {**rl, **(headers or {})}.items():
            h.send_header(k, v)
        if h.close_connection:  # the request said "Connection: close" (prawcore's token requests do)
            h.send_header("Connection", "close")
        if kind == "cut":  # promise the whole body, send half, hang up
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if kind == "badjson":  # a proxy cut the body and fixed up the length
            body = body[: len(body) // 2]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h, method: str) -> None:
        url = urlparse(h.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        n = int(h.headers.get("Content-Length") or 0)
        form = {k: v[-1] for k, v in parse_qs(h.rfile.read(n).decode()).items()} if n else {}
        path = url.path.rstrip("/")
        if self.on_request is not None and self.on_request(path):
            h.close_connection = True
            return
        if path == "/api/v1/access_token":
            if self._take_fault(path) == "503":
                return self._send(h, 503, {"message": "server error", "error": 503})
            want = "Basic " + base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
            if h.headers.get("Authorization") != want or form.get("grant_type") != "client_credentials":
                return self._send(h, 401, {"message": "Unauthorized", "error": 401})
            self.tokens_issued += 1
            return self._send(h, 200, {"access_token": "tok-1", "token_type": "bearer", "expires_in": 86400,
                                       "scope": "*"})
        if h.headers.get("Authorization") != "bearer tok-1":
            return self._send(h, 401, {"message": "Unauthorized", "error": 401})
        kind = self._take_fault(path)
        if kind == "429":
            return self._send(h, 429, {"message": "Too Many Requests", "error": 429}, {"Retry-After": "1"})
        if kind == "404":
            return self._send(h, 404, {"message": "Not Found", "error": 404})
        if kind in ("500", "503"):
            return self._send(h, int(kind), {"message": "server error", "error": int(kind)})
        parts = path.strip("/").split("/")
        if parts[0] == "r" and len(parts) == 3:
            items = self._search(parts[1], q) if parts[2] == "search" else self._listing(parts[1], parts[2], q)
            if items is None:
                return self._send(h, 404, {"message": "Not Found", "error": 404})
            return self._send(h, 200, self._page(items, q, "t3"), kind=kind)
        if parts[0] == "comments" and len(parts) in (2, 4):
            sub = self._find(parts[1])
            if sub is None:
                return self._send(h, 404, {"message": "Not Found", "error": 404})
            focus = "t1_" + parts[3] if len(parts) == 4 else None
            return self._send(h, 200, self._comment_page(sub, focus), kind=kind)
        if path == "/api/morechildren" and method == "POST":
            return self._send(h, 200, self._morechildren(form["link_id"][3:], form["children"].split(",")), kind=kind)
        return self._send(h, 404, {"message": "Not Found", "error": 404})

    # ------------------------------------------------------------------ listings
    def _listing(self, sub: str, sort: str, q: dict) -> list[dict] | None:
        if sub not in self.subs:
            return None
        items = list(self.subs[sub])
        if sort in ("top", "controversial"):
            items = self._window(items, q.get("t", "day"))
        if sort == "new":
            items.sort(key=lambda s: (-s["created_utc"], s["id"]))
        elif sort in ("top", "hot", "rising"):
            items.sort(key=lambda s: (-s["score"], s["id"]))
        elif sort == "controversial":
            items.sort(key=lambda s: (s["upvote_ratio"], s["id"]))
        else:
            return None
        return items[: self.cap]

    def _window(self, items: list[dict], t: str) -> list[dict]:
        if t == "all":
            return items
        return [s for s in items if s["created_utc"] >= self.now - WINDOWS[t]]

    def _search(self, sub: str, q: dict) -> list[dict] | None:
        if sub not in self.subs:
            return None
        query = q.get("q", "")
        items = self._window(list(self.subs[sub]), q.get("t", "all"))
        if query in ("self:yes", "self:no"):
            items = [s for s in items if s["is_self"] == (query == "self:yes")]
        else:
            items = [s for s in items if query.lower() in s["title"].lower()]
        sort = q.get("sort", "relevance")
        key = {"new": lambda s: (-s["created_utc"], s["id"]), "comments": lambda s: (-s["num_comments"], s["id"])}
        items.sort(key=key.get(sort, lambda s: (-s["score"], s["id"])))
        return items[: self.search_cap]

    def _page(self, items: list[dict], q: dict, kind: str) -> dict:
        limit = min(int(q.get("limit", 25)), 100)
        start = 0
        if q.get("after"):
            names = [s["name"] for s in items]
            start = names.index(q["after"]) + 1 if q["after"] in names else len(items)
        page = items[start: start + limit]
        after = page[-1]["name"] if page and start + limit < len(items) else None
        return {"kind": "Listing", "data": {"after": after, "before": None, "dist": len(page),
                                            "children": [{"kind": kind, "data": s} for s in page]}}

    # ------------------------------------------------------------------ comments
    def _find(self, sid: str) -> dict | None:
        for v in self.subs.values():
            for s in v:
                if s["id"] == sid:
                    return s
        return None

    def _children(self, sid: str, parent: str) -> list[dict]:
        return sorted((c for c in self.comments[sid] if c["parent_id"] == parent),
                      key=lambda c: (c["created_utc"], c["id"]))

    def _descendants(self, sid: str, parent: str) -> list[dict]:
        """Parents before children (what ``api/morechildren`` returns, flat)."""
        out = []
        for c in self._children(sid, parent):
            out.append(c)
            out.extend(self._descendants(sid, c["name"]))
        return out

    def _tree(self, sid: str, c: dict, depth: int) -> dict:
        d = dict(c, depth=depth, replies="")
        kids = self._children(sid, c["name"])
        if kids:
            if depth + 1 >= self.depth:  # "continue this thread"
                more = {"kind": "more", "data": {"count": 0, "name": "t1__", "id": "_", "parent_id": c["name"],
                                                 "depth": depth + 1, "children": []}}
                d["replies"] = {"kind": "Listing", "data": {"after": None, "children": [more]}}
            else:
                d["replies"] = {"kind": "Listing", "data": {
                    "after": None, "children": [{"kind": "t1", "data": self._tree(sid, k, depth + 1)} for k in kids]}}
        return d

    def _comment_page(self, sub: dict, focus: str | None) -> list[dict]:
        sid = sub["id"]
        head = {"kind": "Listing", "data": {"after": None, "children": [{"kind": "t3", "data": sub}]}}
        if focus is not None:  # comments/<sid>/_/<cid>: that comment as the root of a page
            c = next(c for c in self.comments[sid] if c["name"] == focus)
            roots = [{"kind": "t1", "data": self._tree(sid, c, 0)}]
        else:
            top = self._children(sid, sub["name"])
            roots = [{"kind": "t1", "data": self._tree(sid, c, 0)} for c in top[: self.inline]]
            hidden = [x["id"] for c in top[self.inline:] for x in [c] + self._descendants(sid, c["name"])]
            if hidden:
                roots.append({"kind": "more", "data": {"count": len(hidden), "name": "t1_" + hidden[0],
                                                       "id": hidden[0], "parent_id": sub["name"], "depth": 0,
                                                       "children": hidden}})
        return [head, {"kind": "Listing", "data": {"after": None, "children": roots}}]

    def _morechildren(self, sid: str, ids: list[str]) -> dict:
        by_id = {c["id"]: c for c in self.comments[sid]}
        take, rest = ids[:100], ids[100:]
        things = [{"kind": "t1", "data": dict(by_id[i], replies="")} for i in take]
        if rest:
            things.append({"kind": "more", "data": {"count": len(rest), "name": "t1_" + rest[0], "id": rest[0],
                                                    "parent_id": "t3_" + sid, "depth": 0, "children": rest}})
        return {"json": {"errors": [], "data": {"things": things}}}
