"""The small HTTP surface on the WebSocket port: /healthz, /metrics, /frames/…, /overlay, /console (and
its /streams, /models, /static/… in :mod:`streamwatch.server.console`), /report/….

Handlers take the parsed request and return a websockets ``Response``; blocking work (files, SQLite,
report rendering) runs in an executor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from streamwatch.config import Role
from streamwatch.errors import StreamwatchError
from streamwatch.events.codec import parse_iso
from streamwatch.events.store import EventStore
from streamwatch.i18n import LANGS, UIConfig
from streamwatch.outbound.signing import EVIDENCE_PREFIX, evidence_allowed
from streamwatch.report import collect, render
from streamwatch.server import console
from streamwatch.server.auth import Principal, TokenTable, token_from_request
from streamwatch.server.door import Door
from streamwatch.server.metrics import Metrics

logger = logging.getLogger(__name__)

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}
REASONS |= {405: "Method Not Allowed", 421: "Misdirected Request", 429: "Too Many Requests", 503: "Service Unavailable"}
# routes that take a token: rate-limited per token, and their failed authentications count at the door
TOKEN_ROUTES = ("/frames/", "/report/", "/search", "/streams", "/models")
REPORT_FORMATS = {"html": "text/html; charset=utf-8", "json": "application/json", "csv": "text/csv; charset=utf-8"}


def response(status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8", **headers: str) -> Response:
    data = body.encode() if isinstance(body, str) else body
    h = Headers()
    h["Content-Type"] = content_type
    h["Content-Length"] = str(len(data))
    h["Cache-Control"] = "no-store"
    h["X-Content-Type-Options"] = "nosniff"
    for k, v in headers.items():
        h[k.replace("_", "-")] = v
    return Response(status, REASONS.get(status, "Error"), h, data)


def json_response(status: int, payload: Any) -> Response:
    return response(status, json.dumps(payload, ensure_ascii=False, indent=1), "application/json")


@dataclass
class HttpContext:
    store: EventStore
    tokens: TokenTable
    metrics: Metrics
    health: Callable[[], dict[str, Any]]
    # frame search (vision encoder): (query, stream, limit) → JSON-ready hits; blocking
    search: Callable[[str, str | None, int], list[dict[str, Any]]] | None = None
    console: console.ConsoleData | None = None
    door: Door | None = None
    # token name → whether it may make one more HTTP request now (per-token rate limit)
    http_allow: Callable[[str], bool] | None = None
    now: Callable[[], float] | None = None  # monotonic clock of the limits
    ui: UIConfig = field(default_factory=UIConfig)  # the report's language and time zone


def _principal(ctx: HttpContext, request: Request) -> Principal | None:
    return ctx.tokens.lookup(token_from_request(request.path, request.headers.get("Authorization")))


def _door(ctx: HttpContext, request: Request, address: str) -> Response | None:
    """429 for an address past its failed authentications or a token past its request rate; counts a failure."""
    if ctx.door is None or ctx.now is None:
        return None
    now = ctx.now()
    if ctx.door.limited(address, now):
        return response(429, "too many failed authentications from this address", Retry_After="60")
    who = _principal(ctx, request)
    if who is None:  # the route answers 401 itself
        ctx.door.failed(address, now, 401)
        return None
    if ctx.http_allow is not None and not ctx.http_allow(who.name):
        return response(429, "too many requests for this token", Retry_After="1")
    return None


async def _evidence(ctx: HttpContext, rel: str, query: dict[str, str]) -> Response:
    """An evidence file by a signed, expiring link (webhook payloads): no token needed."""
    loop = asyncio.get_running_loop()
    key_file = ctx.store.data_dir / "evidence.key"
    try:
        key = bytes.fromhex((await loop.run_in_executor(None, key_file.read_text)).strip())
    except (OSError, ValueError):
        return response(403, "evidence links are not enabled")
    if not evidence_allowed(key, rel, query.get("exp", ""), query.get("sig", ""), time.time()):
        return response(403, "invalid or expired evidence link")
    file = ctx.store.frame_path(rel)
    if file is None:
        return response(404, "no such evidence file")
    data = await loop.run_in_executor(None, file.read_bytes)
    return response(200, data, mimetypes.guess_type(file.name)[0] or "application/octet-stream")


async def handle(ctx: HttpContext, request: Request, address: str = "") -> Response:
    url = urlsplit(request.path)
    path = unquote(url.path)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    loop = asyncio.get_running_loop()
    if path.startswith(TOKEN_ROUTES):
        refusal = _door(ctx, request, address)
        if refusal is not None:
            return refusal
    if path.startswith(EVIDENCE_PREFIX):
        return await _evidence(ctx, path[len(EVIDENCE_PREFIX) :], query)
    if path == "/healthz":
        return json_response(200, ctx.health())
    if path == "/metrics":
        return response(200, ctx.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
    if path == "/overlay":
        page = resources.files("streamwatch.server").joinpath("static/overlay.html").read_bytes()
        return response(200, page, "text/html; charset=utf-8")
    if path == "/console":
        page = resources.files("streamwatch.server").joinpath("static/console.html").read_bytes()
        return response(200, page, "text/html; charset=utf-8")
    if ctx.console is not None:
        answer = await console.handle(ctx.console, path, _principal(ctx, request), response, json_response)
        if answer is not None:
            return answer
    if path.startswith("/frames/"):
        if _principal(ctx, request) is None:
            return response(401, "token required")
        file = ctx.store.frame_path(path[len("/frames/") :])
        if file is None:
            return response(404, "no such evidence file")
        data = await loop.run_in_executor(None, file.read_bytes)
        return response(200, data, mimetypes.guess_type(file.name)[0] or "application/octet-stream")
    if path.startswith("/report/"):
        who = _principal(ctx, request)
        if who is None:
            return response(401, "token required")
        if who.role not in (Role.MODERATOR, Role.ADMIN):
            return response(403, "reports are for moderators and admins")
        return await _report(ctx, path[len("/report/") :], query)
    if path == "/search":
        who = _principal(ctx, request)
        if who is None:
            return response(401, "token required")
        if who.role not in (Role.MODERATOR, Role.ADMIN):
            return response(403, "search is for moderators and admins")
        return await _search(ctx, query)
    if path == "/":
        return response(200, "streamwatch: /ws (WebSocket), /overlay, /console, /healthz, /metrics, /report/{stream}, /search?q=\n")
    return response(404, "not found")


async def _search(ctx: HttpContext, query: dict[str, str]) -> Response:
    if ctx.search is None:
        return json_response(503, {"error": "no vision encoder is configured (analysis.encoder.path)"})
    q = query.get("q", "").strip()
    limit = query.get("limit", "20")
    if not q or len(q) > 200 or not limit.isdigit() or not 1 <= int(limit) <= 200:
        return json_response(400, {"error": "use /search?q=TEXT (≤200 chars)[&stream=ID][&limit=1..200]"})
    search = ctx.search
    try:
        hits = await asyncio.get_running_loop().run_in_executor(None, lambda: search(q, query.get("stream"), int(limit)))
    except StreamwatchError as e:
        return json_response(500, {"error": str(e)})
    return json_response(200, {"query": q, "hits": hits})


async def _report(ctx: HttpContext, stream: str, query: dict[str, str]) -> Response:
    fmt = query.get("format", "html")
    if fmt not in REPORT_FORMATS or not stream or "/" in stream:
        return response(400, "use /report/{stream}?format=html|json|csv[&from=ISO&to=ISO]")
    try:
        start = parse_iso(query["from"]) if "from" in query else None
        end = parse_iso(query["to"]) if "to" in query else None
        loop = asyncio.get_running_loop()
        inputs = await loop.run_in_executor(None, lambda: collect(ctx.store, stream, start, end, embed_images=fmt == "html"))
        if not inputs.events:
            return response(404, f"no events for stream {stream!r}")
        ui = ctx.ui
        if query.get("lang") in LANGS:  # ?lang=en|zh: this report in the other language
            ui = ui.model_copy(update={"language": query["lang"]})
        body = await loop.run_in_executor(None, render, inputs, fmt, ui)
    except StreamwatchError as e:
        return response(400, str(e))
    return response(200, body, REPORT_FORMATS[fmt])
