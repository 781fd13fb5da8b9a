"""Streams managed at run time: the protocol a stream runner implements, and the server side of it.

:class:`StreamControl` is what the server calls; the single-box daemon implements it over its task group
and :class:`~streamwatch.runtime.desired.DesiredFile`, a cluster gateway over a JetStream KV bucket. The
server and the CLI know only this protocol, never how streams run.

:class:`StreamAdmin` is the one place both the WebSocket session and the HTTP API go through: it
validates the client's stream object, calls the control, keeps the server's shared view of known
streams (``EventServer.streams`` / ``.status``, also read by the console and the API) in step, and turns
refusals into :class:`~streamwatch.server.protocol.ProtocolError` codes:

=================  ======  ============================================================
code               HTTP    when
=================  ======  ============================================================
bad_request        400     the stream object is invalid (message: one line per bad field)
forbidden          403     the token is not an admin's (checked by the caller)
unknown_stream     404     no stream with that id in the desired set
duplicate_stream   409     a stream with that id is already watched
no_control         503     this server does not manage streams (no StreamControl)
timeout            504     the control did not finish within CONTROL_TIMEOUT_S (it may still)
=================  ======  ============================================================
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from streamwatch.config import StreamConfig
from streamwatch.errors import ConfigError, DuplicateStream, UnknownStream
from streamwatch.ingest.url import redact_url
from streamwatch.server.protocol import ProtocolError

logger = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 60.0
HTTP_STATUS = {"bad_request": 400, "bad_field": 400, "forbidden": 403, "unknown_stream": 404, "duplicate_stream": 409}
HTTP_STATUS |= {"no_control": 503, "timeout": 504}


class StreamControl(Protocol):
    """Adds, removes and lists the streams a process (or a cluster) watches."""

    async def add_stream(self, cfg: StreamConfig, by: str) -> None:
        """Start watching ``cfg`` (already validated) and persist it in the desired set. ``by``: the token
        name, for the log. Raises DuplicateStream (a ConfigError) when the id is already watched, or
        ConfigError with a message for the client."""

    async def remove_stream(self, stream_id: str, by: str) -> None:
        """Stop watching ``stream_id`` (its session ends with an ``ended`` health event) and persist the
        removal. Raises UnknownStream (a ConfigError) when no such stream is desired."""

    def list_streams(self) -> list[dict[str, Any]]:
        """The desired streams as :func:`stream_json` dicts."""


def stream_json(cfg: StreamConfig, *, origin: str, state: str = "unknown", **extra: Any) -> dict[str, Any]:
    """A stream as listed to clients: ``{"id", "source" (credentials redacted), "listen", "every_s",
    "policy", "state", "origin": "config"|"runtime", **extra}`` (``every_s``/``policy`` null when unset)."""
    return {
        "id": cfg.id,
        "source": redact_url(cfg.source),
        "listen": cfg.listen,
        "every_s": cfg.every_s,
        "policy": None if cfg.policy is None else str(cfg.policy),
        "state": state,
        "origin": origin,
        **extra,
    }


class StreamAdmin:
    """The server's side of stream management; ``streams``/``status``/``removed`` are the server's own
    (mutated in place, so everything holding them sees the change)."""

    def __init__(self, control: StreamControl | None, streams: set[str], status: dict[str, dict[str, Any]], removed: set[str]) -> None:
        self.control = control
        self.streams = streams
        self.status = status
        self.removed = removed  # streams removed at run time: health events of theirs no longer show on the wall

    def _need(self, ref: str | None) -> StreamControl:
        if self.control is None:
            raise ProtocolError("no_control", "this server does not manage streams at run time", ref)
        return self.control

    def list(self, ref: str | None = None) -> list[dict[str, Any]]:
        return self._need(ref).list_streams()

    async def add(self, raw: Any, by: str, ref: str | None = None) -> dict[str, Any]:
        """Validate ``raw`` and start the stream; its listed dict. ProtocolError on refusal."""
        from streamwatch.runtime.desired import validate_stream

        control = self._need(ref)
        if not isinstance(raw, Mapping):
            raise ProtocolError("bad_request", "'stream' must be an object: {id, source, listen?, every_s?, policy?}", ref)
        loop = asyncio.get_running_loop()
        try:
            cfg = await loop.run_in_executor(None, validate_stream, raw)  # reads the policy file
        except ConfigError as e:
            raise ProtocolError("bad_request", str(e), ref) from e
        if any(s.get("id") == cfg.id for s in control.list_streams()):
            raise ProtocolError("duplicate_stream", f"stream {cfg.id!r} is already watched; remove it first to change it", ref)
        was_removed = cfg.id in self.removed
        self.removed.discard(cfg.id)  # its first health events (connecting, live) show at once
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                await control.add_stream(cfg, by)
        except BaseException as e:
            if was_removed:
                self.removed.add(cfg.id)
            if (refused := _refusal(e, "start", ref)) is None:
                raise
            raise refused from e
        self.removed.discard(cfg.id)  # again: a concurrent, refused add of the same id may have put it back
        self.streams.add(cfg.id)
        self.status.setdefault(cfg.id, {"state": "unknown"})
        logger.debug("stream %s added by %s (%s)", cfg.id, by, redact_url(cfg.source))
        listed = next((s for s in control.list_streams() if s.get("id") == cfg.id), None)
        return listed or stream_json(cfg, origin="runtime")

    async def remove(self, stream_id: Any, by: str, ref: str | None = None) -> None:
        """Stop ``stream_id``; it leaves the wall (its stored events stay readable). ProtocolError on refusal."""
        control = self._need(ref)
        if not isinstance(stream_id, str) or not stream_id:
            raise ProtocolError("bad_request", "'stream' must be a stream id", ref)
        known = [s.get("id") for s in control.list_streams()]
        if stream_id not in known:
            raise ProtocolError("unknown_stream", f"no stream {stream_id!r}; known: {', '.join(sorted(map(str, known))) or 'none'}", ref)
        was_removed = stream_id in self.removed
        self.removed.add(stream_id)
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                await control.remove_stream(stream_id, by)
        except BaseException as e:
            if not was_removed:
                self.removed.discard(stream_id)
            if (refused := _refusal(e, "stop", ref)) is None:
                raise
            raise refused from e
        self.removed.add(stream_id)
        self.streams.discard(stream_id)
        self.status.pop(stream_id, None)
        logger.debug("stream %s removed by %s", stream_id, by)


def _refusal(e: BaseException, verb: str, ref: str | None) -> ProtocolError | None:
    """The ProtocolError a client gets for a control call that failed with ``e``; None when it is not
    a refusal (cancellation and unexpected errors go on as they are)."""
    if isinstance(e, TimeoutError):
        return ProtocolError("timeout", f"the stream did not {verb} within {CONTROL_TIMEOUT_S:g}s", ref)
    if isinstance(e, DuplicateStream):  # before ConfigError: it may be one
        return ProtocolError("duplicate_stream", str(e), ref)
    if isinstance(e, UnknownStream):
        return ProtocolError("unknown_stream", str(e), ref)
    if isinstance(e, ConfigError):
        return ProtocolError("bad_request", str(e), ref)
    return None
