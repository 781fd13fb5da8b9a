"""WebSocket/HTTP delivery: protocol v1 (PROTOCOL.md), overlay page, metrics, reports."""

from streamwatch.server.server import EventServer

__all__ = ["EventServer"]
