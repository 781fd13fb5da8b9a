"""Requests the WebSocket port cannot take get an answer instead of a dropped connection.

The ``websockets`` handshake parser accepts only ``GET`` without a body; any other request (``POST
/vlm/infer`` sent here instead of to the API port, a ``HEAD`` from a monitoring probe) used to be cut
off without a response. :func:`connection_class` builds a ``ServerConnection`` that reads the request
line first: ``GET`` passes through untouched; for anything else it reads the headers (up to 16 KiB),
writes the response ``answer(method, target, host)`` gives, reads and discards the declared body (up to
16 MiB, so the answer is not lost to a TCP reset), and closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

MAX_HEAD = 16 * 1024
MAX_DRAIN = 16 * 1024 * 1024

# (method, request target, Host header or "") → the response to send
Answer = Callable[[str, str, str], Response]


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and lower-cased headers of a request head (request line + header lines)."""
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rpartition(" ")[0] or rest
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def connection_class(answer: Answer) -> type[ServerConnection]:
    class WrongMethodConnection(ServerConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head: bytearray | None = bytearray()  # None: a GET, handed to websockets
            self._answered = False
            self._drain = 0  # bytes of body still to discard after answering

        def data_received(self, data: bytes) -> None:
            if self._answered:
                self._drain -= len(data)
                if self._drain <= 0:
                    self.transport.close()
                return
            if self._head is None:
                super().data_received(data)
                return
            self._head += data
            space = self._head.find(b" ")
            if space < 0 and len(self._head) < 16:
                return  # not even the method yet
            token = bytes(self._head[:space]) if space >= 0 else b""
            if token == b"GET" or not (token.isalpha() and token.isupper()):
                head, self._head = bytes(self._head), None  # GET, or not HTTP at all (TLS, junk): websockets' own answer
                super().data_received(head)
                return
            end = self._head.find(b"\r\n\r\n")
            if end < 0 and len(self._head) < MAX_HEAD:
                return
            head = bytes(self._head[:end] if end >= 0 else self._head)
            body_seen = len(self._head) - end - 4 if end >= 0 else 0
            method, target, headers = parse_head(head)
            response = answer(method, target, headers.get("host", ""))
            response.headers["Connection"] = "close"
            self.transport.write(response.serialize())
            self._answered = True
            length = headers.get("content-length", "0")
            remaining = int(length) - body_seen if length.isdigit() else 0
            if end < 0 or remaining <= 0 or remaining > MAX_DRAIN:
                self.transport.close()
            else:
                self._drain = remaining

    return WrongMethodConnection
