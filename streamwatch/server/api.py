"""The HTTP API port (``server.api_port``): ``POST /vlm/infer``, stream management and ``GET /healthz``.

A separate port because the WebSocket server's HTTP parser takes no request bodies. HTTP/1.1 with
keep-alive via ``h11``. ``POST /vlm/infer {"image": base64, "question": "…"}`` → ``{"answer": …,
"model": …}``: the same token roles, size and pixel limits, per-token rate limit and image checks as
WebSocket submissions; the image passes the local detectors and policy before any model sees it.

Streams at run time (admin token; see :mod:`streamwatch.server.control`): ``GET /streams`` → ``{"streams":
[…]}``; ``POST /streams {"id", "source", "listen"?, "every_s"?, "policy"?}`` → 201 + the stream as listed;
``DELETE /streams/{id}`` → 200 ``{"removed": id}``.

Errors are ``{"error": {"code": …, "message": …}}`` with a fitting status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11

from streamwatch.config import Role, ServerConfig
from streamwatch.errors import ServerError
from streamwatch.server.auth import Principal, RateLimiter, TokenTable, token_from_request
from streamwatch.server.control import HTTP_STATUS, StreamAdmin
from streamwatch.server.metrics import Metrics
from streamwatch.server.protocol import ProtocolError
from streamwatch.server.submit import InferRequest, Inferrer, check_image, decode_base64

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 15.0
INFER_TIMEOUT_S = 120.0
INFER_ROLES = frozenset({Role.SUBMITTER, Role.MODERATOR, Role.ADMIN})
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed"}
_REASONS |= {413: b"Content Too Large", 415: b"Unsupported Media Type", 422: b"Unprocessable Content", 429: b"Too Many Requests"}
_REASONS |= {201: b"Created", 409: b"Conflict"}
_REASONS |= {500: b"Internal Server Error", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]


def _error(status: int, code: str, message: str, **extra: Any) -> _Reply:
    return _Reply(status, {"error": {"code": code, "message": message, **extra}})


class ApiServer:
    def __init__(
        self,
        cfg: ServerConfig,
        tokens: TokenTable,
        inferrer: Inferrer | None,
        limiter: Callable[[str], RateLimiter],
        metrics: Metrics,
        streams: set[str],
        stream_admin: StreamAdmin | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokens = tokens
        self.inferrer = inferrer
        self.limiter = limiter
        self.metrics = metrics
        self.streams = streams
        self.stream_admin = stream_admin
        self.max_body = int(cfg.max_submission_mb * 1024 * 1024)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        assert self.cfg.api_port is not None
        try:
            self._server = await asyncio.start_server(self._connection, self.cfg.host, self.cfg.api_port, limit=1 << 16)
        except OSError as e:
            raise ServerError(f"cannot listen on {self.cfg.host}:{self.cfg.api_port} (API): {e.strerror or e}") from e
        logger.info("HTTP API on http://%s:%d (POST /vlm/infer)", self.cfg.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 16)
        try:
            while True:
                request = await self._next(conn, reader, h11.Request)
                if request is None:
                    break
                reply = await self._handle(conn, reader, request)
                await self._send(conn, writer, reply)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, TimeoutError, ConnectionError) as e:
            logger.debug("API connection dropped: %s", e)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(conn, writer, _error(400, "bad_request", "malformed or too slow HTTP request"), close=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("API connection failed")
        finally:
            self._conns.discard(task)
            writer.close()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader, want: type) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    data = await reader.read(1 << 16)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, want) or event is h11.PAUSED:
                return event
            if isinstance(event, h11.EndOfMessage | h11.Data) and want is h11.Request:
                continue
            return event

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader, request: h11.Request) -> bytes | _Reply:
        length = next((int(v) for k, v in request.headers if k == b"content-length" and v.isdigit()), 0)
        if length > self.max_body:  # refused before reading it
            return _error(413, "too_large", f"body is {length} bytes; the limit is {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next(conn, reader, h11.Data)
            if not isinstance(event, h11.Data):
                return b"".join(chunks)
            size += len(event.data)
            if size > self.max_body:  # chunked bodies are capped as they arrive
                return _error(413, "too_large", f"body is over the limit of {self.max_body} bytes")
            chunks.append(bytes(event.data))

    async def _handle(self, conn: h11.Connection, reader: asyncio.StreamReader, request: h11.Request) -> _Reply:
        path = request.target.decode("ascii", "replace")
        route = path.split("?", 1)[0]
        method = request.method.decode()
        if route == "/healthz" and method == "GET":
            return _Reply(200, {"ok": True})
        streams = route == "/streams" or route.startswith("/streams/")
        if route != "/vlm/infer" and not streams:
            return _error(404, "not_found", f"no route {route}")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        principal = self.tokens.lookup(token_from_request(path, headers.get("authorization")))
        if streams:
            return await self._streams(conn, reader, request, route, method, headers, principal)
        if method != "POST":
            return _error(405, "method_not_allowed", "use POST")
        if principal is None:
            return _error(401, "unauthorized", "a valid token is required (Authorization: Bearer …)")
        if principal.role not in INFER_ROLES:
            return _error(403, "forbidden", f"role {principal.role.value!r} may not use /vlm/infer")
        if "json" not in headers.get("content-type", "application/json"):
            return _error(415, "bad_content_type", "send application/json")
        body = await self._body(conn, reader, request)
        if isinstance(body, _Reply):
            return body
        if not self.limiter(principal.name).allow(time.monotonic()):
            return _error(429, "rate_limited", f"more than {self.cfg.rate_per_s}/s for this token; slow down")
        if self.inferrer is None:
            return _error(503, "no_responder", "no VLM tier is configured")
        try:
            req = await self._parse(body, principal.name)
        except ProtocolError as e:
            status = 413 if e.code == "image_too_large" else 400
            return _error(status, e.code, e.message)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(INFER_TIMEOUT_S):
                result = await self.inferrer.infer(req)
        except TimeoutError:
            return _error(504, "timeout", f"no answer within {INFER_TIMEOUT_S:g}s")
        self.metrics.stage_latency.labels("vlm_infer").observe(time.perf_counter() - t0)
        if result.answer is None:
            return _error(422, "rejected", result.message or "the image was refused", reason=result.rejected)
        return _Reply(200, {"id": req.id, "answer": result.answer, "model": result.model})

    async def _streams(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        request: h11.Request,
        route: str,
        method: str,
        headers: dict[str, str],
        principal: Principal | None,
    ) -> _Reply:
        """``GET``/``POST /streams``, ``DELETE /streams/{id}`` (admin)."""
        allowed = "GET, POST" if route == "/streams" else "DELETE"
        if method not in allowed.split(", "):
            return _error(405, "method_not_allowed", f"{route} takes {allowed}")
        if principal is None:
            return _error(401, "unauthorized", "a valid admin token is required (Authorization: Bearer …)")
        if principal.role is not Role.ADMIN:
            return _error(403, "forbidden", f"role {principal.role.value!r} may not manage streams")
        if self.stream_admin is None:
            return _error(503, "no_control", "this server does not manage streams at run time")
        try:
            if method == "GET":
                return _Reply(200, {"streams": self.stream_admin.list()})
            if method == "DELETE":
                sid = route[len("/streams/") :]
                await self.stream_admin.remove(sid, principal.name)
                return _Reply(200, {"removed": sid})
            if "json" not in headers.get("content-type", "application/json"):
                return _error(415, "bad_content_type", "send application/json")
            body = await self._body(conn, reader, request)
            if isinstance(body, _Reply):
                return body
            try:
                d = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                return _error(400, "bad_json", f"not valid JSON: {e}")
            if isinstance(d, dict) and set(d) == {"stream"}:  # the WebSocket message's shape is taken too
                d = d["stream"]
            return _Reply(201, {"stream": await self.stream_admin.add(d, principal.name)})
        except ProtocolError as e:
            return _error(HTTP_STATUS.get(e.code, 400), e.code, e.message)

    async def _parse(self, body: bytes, who: str) -> InferRequest:
        try:
            d = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ProtocolError("bad_json", f"not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ProtocolError("bad_json", "the body must be a JSON object")
        unknown = set(d) - {"image", "question", "stream"}
        if unknown:
            raise ProtocolError("bad_field", f"unknown field(s): {', '.join(sorted(unknown))}")
        image, question, stream = d.get("image"), d.get("question", ""), d.get("stream", "")
        if not isinstance(image, str) or not image:
            raise ProtocolError("bad_field", "'image' must be a base64 string (or a data: URL)")
        if not isinstance(question, str) or len(question) > 1000:
            raise ProtocolError("bad_field", "'question' must be a string of at most 1000 characters")
        if not isinstance(stream, str) or (stream and self.streams and stream not in self.streams):
            raise ProtocolError("unknown_stream", f"no stream {stream!r}")
        data = decode_base64(image, None)
        _, w, h, _ = await asyncio.get_running_loop().run_in_executor(None, check_image, data, self.cfg.max_image_pixels, None)
        return InferRequest(uuid.uuid4().hex[:16], data, w, h, question.strip(), stream, who)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: _Reply, *, close: bool = False) -> None:
        data = json.dumps(reply.body, ensure_ascii=False).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")]
        if close or conn.their_state is not h11.DONE:  # the rest of a refused body is not read
            headers.append(("Connection", "close"))
        try:
            out = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=_REASONS.get(reply.status, b"")))
            out += conn.send(h11.Data(data=data))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
        except h11.LocalProtocolError:
            pass
        if reply.status >= 400:
            self.metrics.client_errors.labels(str(reply.body["error"]["code"])).inc()
