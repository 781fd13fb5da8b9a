"""Requests the WebSocket port cannot take (POST /vlm/infer sent to the main port, HEAD, PUT) get a clear
HTTP answer instead of a dropped connection; WebSocket clients and the GET pages are unaffected."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import time
from pathlib import Path

import pytest
from evserver import TOKENS, ServerThread
from websockets.asyncio.client import connect

Reply = tuple[int, bytes, dict[str, str]]


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body or None, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}


def infer_body(size: int) -> bytes:
    return json.dumps({"image": base64.b64encode(b"\xff" * size).decode(), "question": "图里有什么？"}).encode()


@pytest.mark.parametrize("size", [100, 300_000, 3_000_000])  # a body in the first packet, over several, over many
def test_post_vlm_infer_on_the_main_port_names_the_api_port(tmp_path: Path, size: int) -> None:
    with ServerThread(tmp_path / "d", api_port=0) as s:
        api = s.server.api
        assert api is not None
        auth = {"Authorization": f"Bearer {TOKENS['submitter']}", "Content-Type": "application/json"}
        status, body, headers = request(s.port, "POST", "/vlm/infer", infer_body(size), auth)
        assert status == 421, body
        err = json.loads(body)["error"]
        assert err["code"] == "wrong_port"
        assert err["url"] == f"http://127.0.0.1:{api.port}/vlm/infer"
        assert f"API port (http://127.0.0.1:{api.port}/vlm/infer)" in err["message"]
        assert headers["connection"] == "close"
        # a GET of the same path, and the same URL on the API port itself, behave
        status, body, _ = request(s.port, "GET", "/vlm/infer")
        assert status == 421 and str(api.port) in json.loads(body)["error"]["message"]
        status, _, _ = request(api.port, "POST", "/vlm/infer", b"{}", auth)
        assert status != 421


def test_post_vlm_infer_with_the_api_off_says_how_to_turn_it_on(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d") as s:
        status, body, _ = request(s.port, "POST", "/vlm/infer", infer_body(1000), {"Content-Type": "application/json"})
        assert status == 503
        assert "--api-port" in json.loads(body)["error"]["message"]


def test_other_methods_get_405_and_websocket_clients_are_unaffected(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d") as s:
        for method in ("PUT", "DELETE", "OPTIONS"):
            status, body, headers = request(s.port, method, "/healthz", b"x" * 10)
            assert status == 405 and headers["allow"] == "GET" and b"/ws" in body, method
        status, _, _ = request(s.port, "HEAD", "/healthz")
        assert status == 405
        status, body, _ = request(s.port, "GET", "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"

        async def ws() -> str:
            async with connect(s.ws_url("moderator")) as c:
                return str(json.loads(await c.recv())["type"])

        assert asyncio.run(ws()) == "hello"


def test_a_request_line_arriving_byte_by_byte_is_still_answered(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", api_port=0) as s:
        body = b'{"image": "x"}'
        head = f"POST /vlm/infer HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in head[:20]:
                sock.sendall(bytes([b]))
            sock.sendall(head[20:] + body)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 421 ")
        assert b"wrong_port" in got


def test_bytes_that_are_not_http_are_left_to_websockets(tmp_path: Path) -> None:
    """A TLS hello or junk (a line of it) is closed at once, as before: no 405, not held waiting for headers."""
    with ServerThread(tmp_path / "d") as s, socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n")
        t0 = time.monotonic()
        got = sock.recv(65536)
        assert time.monotonic() - t0 < 5 and not got.startswith(b"HTTP/1.1 405")
