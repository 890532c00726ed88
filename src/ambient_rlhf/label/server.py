"""The labelling web application: Starlette, served by uvicorn.

Routes: ``GET /`` (the page), ``GET /static/label.js|label.css``, ``GET /api/next``,
``POST /api/judge``, ``POST /api/undo``.  The page holds no data: the script asks for
each item as JSON and puts every text into the page with ``textContent`` (never parsed as
HTML), under a Content-Security-Policy that allows only the page's own script file.

Every request is checked before it reaches the database:

* the ``Host`` header must name this server (loopback names, or the bound address), which
  stops a DNS-rebinding page from talking to it;
* with an access token (required for any non-loopback address), every ``/api/`` request
  must carry it (``X-Label-Token`` header, or ``?token=``), compared in constant time; the
  page and its script hold no data and load without it (the script reads the token from
  the page's ``?token=`` and sends it);
* ``POST`` bodies: ``Content-Type: application/json``, at most 16 KiB, an ``Origin`` (when
  the browser sends one) equal to this server's, exactly the expected fields, each of the
  expected type and form (labeller names ``[A-Za-z0-9 _.-]``, 1-40 characters; notes at
  most 2000 characters).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ambient_rlhf.label.store import CHOICES, Conflict, Store

STATIC = Path(__file__).parent / "static"
# checked with fullmatch (a "$" would let a trailing newline through)
LABELLER = re.compile(r"[A-Za-z0-9_.-][A-Za-z0-9 _.-]{0,39}")
ITEM_ID = re.compile(r"[0-9a-f]{20}")
SUBMISSION_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
MAX_BODY = 16 * 1024
MAX_NOTE = 2000
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _fail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def make_app(store: Store, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> Starlette:
    """The application for ``store``, bound at ``host:port``; ``token`` (when given) is
    required on every ``/api/`` request."""
    names = {"127.0.0.1", "localhost", "[::1]"} if is_loopback(host) else {host if ":" not in host else f"[{host}]"}

    def check(request: Request, need_token: bool) -> None:
        h = request.headers.get("host", "")
        name = h.rsplit(":", 1)[0] if not h.endswith("]") else h
        if host not in ("0.0.0.0", "::") and name not in names:
            raise BadRequest(403, f"host {h!r} is not this server")
        if token is not None and need_token:
            given = request.headers.get("x-label-token") or request.query_params.get("token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise BadRequest(401, "missing or wrong access token")

    async def body(request: Request, fields: dict[str, type]) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise BadRequest(415, "Content-Type must be application/json")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise BadRequest(403, f"origin {origin!r} is not this server")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise BadRequest(413, f"body larger than {MAX_BODY} bytes")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest(400, "body is not JSON") from None
        if not isinstance(data, dict) or set(data) != set(fields):
            raise BadRequest(400, f"body must be an object with exactly the fields {sorted(fields)}")
        for k, t in fields.items():
            if not isinstance(data[k], t):
                raise BadRequest(400, f"field '{k}' must be {t.__name__}")
        return data

    def labeller_of(name: object) -> str:
        if not isinstance(name, str) or not LABELLER.fullmatch(name):
            raise BadRequest(400, "labeller: 1-40 characters of letters, digits, space, _ . -")
        return name

    def guarded(fn, need_token: bool = True):
        async def endpoint(request: Request) -> Response:
            try:
                check(request, need_token)
                return await fn(request)
            except BadRequest as e:
                return _fail(e.status, str(e))
        return endpoint

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "label.html", headers=HEADERS, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("label.js", "label.css"):
            raise BadRequest(404, "no such file")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, headers=HEADERS, media_type=f"{kind}; charset=utf-8")

    async def next_item(request: Request) -> Response:
        who = labeller_of(request.query_params.get("labeller"))
        item = store.next_item(who)
        return JSONResponse({"item": item, "progress": store.progress(who)}, headers=HEADERS)

    async def judge(request: Request) -> Response:
        d = await body(request, {"labeller": str, "item_id": str, "choice": str, "note": str, "submission_id": str})
        who = labeller_of(d["labeller"])
        if not ITEM_ID.fullmatch(d["item_id"]):
            raise BadRequest(400, "item_id: 20 hexadecimal digits")
        if d["choice"] not in CHOICES:
            raise BadRequest(400, f"choice: one of {list(CHOICES)}")
        if len(d["note"]) > MAX_NOTE:
            raise BadRequest(400, f"note: at most {MAX_NOTE} characters")
        if not SUBMISSION_ID.fullmatch(d["submission_id"]):
            raise BadRequest(400, "submission_id: 8-64 characters of letters, digits and -")
        try:
            status = store.judge(who, d["item_id"], d["choice"], d["note"], d["submission_id"])
        except KeyError:
            raise BadRequest(404, "no such item") from None
        except Conflict as e:
            raise BadRequest(409, str(e)) from None
        return JSONResponse({"status": status, "progress": store.progress(who)}, headers=HEADERS)

    async def undo(request: Request) -> Response:
        d = await body(request, {"labeller": str})
        who = labeller_of(d["labeller"])
        return JSONResponse({"undone": store.undo(who), "progress": store.progress(who)}, headers=HEADERS)

    # the page and its two static files hold no data: no token (the page reads it from its URL)
    routes = [Route("/", guarded(page, False)), Route("/static/{name}", guarded(static, False)),
              Route("/api/next", guarded(next_item)), Route("/api/judge", guarded(judge), methods=["POST"]),
              Route("/api/undo", guarded(undo), methods=["POST"])]
    return Starlette(routes=routes)


def serve(store: Store, host: str, port: int, token: str | None) -> None:
    """Run the application until interrupted (uvicorn, one process)."""
    import uvicorn

    uvicorn.run(make_app(store, host, port, token), host=host, port=port, log_level="warning",
                limit_concurrency=64, timeout_keep_alive=5)


def launch(db: str | Path, sources: list[str], host: str = "127.0.0.1", port: int = 8765,
           token: str | None = None, allow_remote: bool = False, max_upvote_pairs: int = 50,
           upvote_split: str = "", seed: int = 0, announce=None) -> None:
    """``ambient label``: add the items of ``sources`` to ``db`` and serve the page.

    A non-loopback ``host`` needs ``allow_remote`` and a ``token`` (one is generated
    when none is given; ``announce`` prints the address with it)."""
    import secrets

    from ambient_rlhf import AmbientError
    from ambient_rlhf.label.items import find_items

    if not is_loopback(host):
        if not allow_remote:
            raise AmbientError(f"--host {host}: not a loopback address; anyone who can reach it could label. "
                               f"Pass --allow-remote (an access token is then required) or keep 127.0.0.1")
        token = token or secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise AmbientError("--token: at least 16 characters")
    if not 1 <= port <= 65535:
        raise AmbientError(f"--port {port}: 1..65535")
    if max_upvote_pairs < 0:
        raise AmbientError(f"--max-upvote-pairs {max_upvote_pairs}: 0 (all) or more")
    announce = announce or (lambda line: print(line, flush=True))
    import socket

    try:  # a clear error before anything is printed (uvicorn would exit with a log line)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise AmbientError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                           f"choose another --port") from None
    counts: dict = {}
    items = find_items(sources, max_upvote_pairs, seed, upvote_split, counts) if sources else []
    store = Store(db)
    try:
        new = store.add_items(items)
        if store.n_items() == 0:
            raise AmbientError(f"{db}: no items to label; pass --samples (an ambient eval directory, a data "
                               f"directory or a run directory)")
        shown = host if ":" not in host else f"[{host}]"
        url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        read = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no --samples"
        announce(f"{store.n_items()} items in {db} ({new} new; read: {read})")
        announce(f"labelling page: {url}  (Ctrl+C stops; judgements are saved as they are made)")
        serve(store, host, port, token)
    finally:
        store.close()
