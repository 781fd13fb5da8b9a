"""WebSocket + HTTP server: one port, ``/ws`` for protocol v1, the HTTP pages beside it.

Built on the ``websockets`` asyncio server: ``process_request`` authenticates the handshake (401 with
no token, 403 with a wrong one or a refused Origin, before anything is sent) and answers the plain HTTP
routes; each accepted connection runs a :class:`~streamwatch.server.session.ClientSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from streamwatch import __version__
from streamwatch.config import ServerConfig
from streamwatch.errors import ServerError
from streamwatch.events.bus import EventBus
from streamwatch.events.store import StoredEvent
from streamwatch.i18n import UIConfig
from streamwatch.outbound.actions import ActionDesk
from streamwatch.server import console, http
from streamwatch.server.api import ApiServer
from streamwatch.server.auth import Principal, RateLimiter, TokenTable, token_from_request
from streamwatch.server.control import StreamAdmin, StreamControl
from streamwatch.server.door import Door, quiet_websockets_logger
from streamwatch.server.feedback import VoteBook
from streamwatch.server.metrics import Metrics
from streamwatch.server.submit import Forwarder, Inferrer, ModelSwitcher, Responder
from streamwatch.server.wrongport import connection_class

logger = logging.getLogger(__name__)

SEND_BUFFER = 256 * 1024  # kernel send buffer per client


class EventServer:
    """Serves events from ``bus`` to WebSocket clients and the HTTP routes. ``start``/``stop``."""

    def __init__(
        self,
        cfg: ServerConfig,
        bus: EventBus,
        *,
        metrics: Metrics | None = None,
        streams: Iterable[str] = (),
        responder: Responder | None = None,
        forwarder: Forwarder | None = None,
        models: ModelSwitcher | None = None,
        inferrer: Inferrer | None = None,
        search: Callable[[str, str | None, int], list[dict[str, Any]]] | None = None,
        offsets: Callable[[str], float] | None = None,
        latest: console.Latest | None = None,
        models_info: console.ModelsInfo | None = None,
        control: StreamControl | None = None,
        actions: ActionDesk | None = None,
        ui: UIConfig | None = None,
        overload: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ui = ui or UIConfig()  # the desk's language and time zone (hello, reports)
        self.bus = bus
        self.store = bus.store
        self.votes = VoteBook(self.ui.language)  # feedback on persona replies: one vote per voter and reply
        self.metrics = metrics or Metrics()
        self.tokens = TokenTable(cfg.tokens)
        # the known streams: shared (mutated in place on add/remove) with the console, the API and the sessions
        self.streams = set(streams)
        self.status: dict[str, dict[str, Any]] = {s: {"state": "unknown"} for s in self.streams}
        self.removed: set[str] = set()  # removed at run time: off the wall, their stored events still readable
        self.stream_admin = StreamAdmin(control, self.streams, self.status, self.removed)
        self.responder = responder
        self.forwarder = forwarder  # a cluster gateway: images and questions go to the workers (it answers none itself)
        self.models = models
        self.actions = actions  # runs the actions moderators confirm (``act``)
        self.overload = overload  # the degradation level and each stream's sampling step now (/healthz)
        self.api: ApiServer | None = None
        if cfg.api_port is not None:
            self.api = ApiServer(cfg, self.tokens, inferrer, self.limiter, self.metrics, self.streams, self.stream_admin)
        self.offsets = offsets or (lambda _stream: 0.0)
        self.started = time.time()
        self._limits: dict[str, RateLimiter] = {}
        self._user_limits: dict[str, RateLimiter] = {}
        self._pending: dict[ServerConnection, Principal] = {}
        self._server: Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # submission/answer work in flight
        self.console = console.ConsoleData(self.streams, self.status, self.offsets, latest, models_info, self.metrics)
        self.door = Door(cfg.auth_failures_per_min, cfg.auth_failures_burst, self.metrics.registry)
        self._http_limits: dict[str, RateLimiter] = {}
        self._http = http.HttpContext(
            self.store, self.tokens, self.metrics, self.health, search, self.console, self.door, self._http_allow, time.monotonic, self.ui
        )
        self._summaries: asyncio.Task[None] | None = None
        bus.add_listener(self._on_stored)
        bus.add_listener(self.metrics.on_stored)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        hard_cap = int(self.cfg.max_submission_mb * 2 * 1024 * 1024)
        try:
            self._server = await serve(
                self._session,
                self.cfg.host,
                self.cfg.port,
                process_request=self._process_request,
                create_connection=connection_class(self._wrong_method),  # POST /vlm/infer here gets an answer
                compression=None,  # per-message deflate costs more CPU than the bandwidth it saves here
                max_size=hard_cap,
                max_queue=64,
                write_limit=1 << 16,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
                server_header=f"streamwatch/{__version__}",
                logger=quiet_websockets_logger(),  # refused handshakes are summarised by the door
            )
        except OSError as e:
            raise ServerError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e.strerror or e}") from e
        logger.info("serving /ws and HTTP on http://%s:%d", self.cfg.host, self.port)
        self._summaries = asyncio.create_task(self._summarise(), name="door-summaries")
        if self.api is not None:
            await self.api.start()

    @property
    def port(self) -> int:
        if self._server is None:
            raise ServerError("server is not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    async def stop(self, reason: str = "server shutting down") -> None:
        """Finish answers in flight, then close every client with 1001 (going away)."""
        if self.api is not None:
            await self.api.stop()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            self._server.close(close_connections=True, reason=reason)
            await self._server.wait_closed()
            self._server = None
        if self._summaries is not None:
            self._summaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summaries
            self._summaries = None
        self._log_door(time.monotonic())

    # --- the door ----------------------------------------------------------------------------

    async def _summarise(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.door.summary_s))
            if self.door.due(time.monotonic()):
                self._log_door(time.monotonic())

    def _log_door(self, now: float) -> None:
        for line in self.door.summary(now):
            logger.warning("%s", line)

    def _http_allow(self, token: str) -> bool:
        lim = self._http_limits.get(token)
        if lim is None:
            lim = self._http_limits[token] = RateLimiter(self.cfg.http_per_s, self.cfg.http_burst)
        return lim.allow(time.monotonic())

    # --- state ---------------------------------------------------------------------------------

    def _on_stored(self, batch: Sequence[StoredEvent]) -> None:
        for ev in batch:
            if ev.type != "health" or ev.stream in self.removed:
                continue
            d = json.loads(ev.text)
            entry = self.status.setdefault(ev.stream, {"state": "unknown"})
            if d.get("kind") == "state":
                entry.update(state=d.get("state"), since=d.get("at"), reason=d.get("reason", ""), offset=d.get("offset"))
            elif d.get("kind") in ("black", "frozen"):
                entry[d["kind"]] = bool(d.get("active"))
            elif d.get("kind") == "analysis":
                entry["analysis_failing"] = bool(d.get("active"))
            elif d.get("kind") == "storage":  # (delivered unsaved while it lasts: the disk is full)
                entry["storage_failing"] = bool(d.get("active"))
            elif d.get("kind") == "overloaded":  # process-wide, said on every stream
                entry["overloaded"] = bool(d.get("active"))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "last_id": self.bus.last_id,
            "clients": self.bus.subscriptions,
            "streams": self.status,
            **({"overload": self.overload()} if self.overload is not None else {}),
        }

    def user_limiter(self, token: str, user: str) -> RateLimiter:
        """Per fan: a relay token submits for many users, each limited on their own."""
        key = f"{token}\0{user}"
        lim = self._user_limits.get(key)
        if lim is None:
            if len(self._user_limits) > 100_000:  # bounded: forget everyone (limits restart, memory does not grow)
                self._user_limits.clear()
            lim = self._user_limits[key] = RateLimiter(self.cfg.user_submit_per_min / 60.0, self.cfg.user_submit_burst)
        return lim

    def limiter(self, name: str) -> RateLimiter:
        lim = self._limits.get(name)
        if lim is None:
            lim = self._limits[name] = RateLimiter(self.cfg.rate_per_s, self.cfg.rate_burst)
        return lim

    # --- handshake -----------------------------------------------------------------------------

    def _wrong_method(self, method: str, target: str, host: str) -> Response:
        """The answer to a request this port cannot serve: anything but GET, or the API's paths."""
        path = target.split("?", 1)[0]
        if not path.startswith(("/vlm/", "/streams")):  # POST /streams, DELETE /streams/{id} are the API's too
            pages = "/ws, /overlay, /healthz, /metrics, /report/{stream}, /search"
            return http.response(405, f"{method} is not served here: this port serves GET {pages}\n", Allow="GET")
        if self.api is None:
            msg = f"{method} {path}: the HTTP API is off; start the daemon with --api-port PORT (server.api_port) and send it there"
            return http.json_response(503, {"error": {"code": "api_off", "message": msg}})
        name = host[: host.index("]") + 1] if host.startswith("[") else host.rpartition(":")[0] or host
        url = f"http://{name or self.cfg.host}:{self.api.port}{path}"
        msg = f"{method} {path} is served on the API port ({url}); port {self.port} serves /ws and the pages"
        return http.json_response(421, {"error": {"code": "wrong_port", "message": msg, "url": url}})

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path.startswith("/vlm/"):
            return self._wrong_method("GET", request.path, request.headers.get("Host", ""))
        address = _address(connection)
        if path != "/ws":
            try:
                return await http.handle(self._http, request, address)
            except Exception:
                logger.exception("HTTP %s failed", path)
                return http.response(500, "internal error")
        origin = request.headers.get("Origin")
        if self.cfg.allowed_origins is not None and origin is not None and origin not in self.cfg.allowed_origins:
            self.metrics.refused.labels("403").inc()
            return http.response(403, "origin not allowed")
        now = time.monotonic()
        if self.door.limited(address, now):
            self.metrics.refused.labels("429").inc()
            return http.response(429, "too many failed authentications from this address", Retry_After="60")
        secret = token_from_request(request.path, request.headers.get("Authorization"))
        if not secret:
            self.metrics.refused.labels("401").inc()
            self.door.failed(address, now, 401)
            return http.response(401, "token required (Authorization: Bearer … or ?token=…)", WWW_Authenticate="Bearer")
        principal = self.tokens.lookup(secret)
        if principal is None:
            self.metrics.refused.labels("403").inc()
            self.door.failed(address, now, 403)
            return http.response(403, "unknown token")
        self._pending[connection] = principal
        return None

    async def _session(self, ws: ServerConnection) -> None:
        from streamwatch.server.session import ClientSession

        principal = self._pending.pop(ws, None)
        if principal is None:  # cannot happen: the handshake stores it
            await ws.close(1008, "not authenticated")
            return
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:  # bound what the kernel buffers per client, so a stalled one is noticed early
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        gauge = self.metrics.clients.labels(principal.role.value)
        gauge.inc()
        try:
            await ClientSession(self, ws, principal).run()
        finally:
            gauge.dec()


def _address(connection: ServerConnection) -> str:
    peer = connection.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"
