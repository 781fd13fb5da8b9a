"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

Answers ``POST /v1/chat/completions`` from a ``respond(request) -> str`` function (a script, or the
tiny transformers model), with scripted faults consumed one per request:

- ``500`` / ``503``: HTTP error; ``garbage``: a 200 whose body is not JSON;
- ``timeout``: sleeps ``hang_s`` before answering; ``slow``: sleeps ``slow_s`` then answers;
- ``bad_json``: answers content that is not JSON; ``400_schema``: 400 when response_format is sent;
- ``400``: HTTP 400 for this request (a refusal of its input).

With ``refuse_below=N`` it checks images like a real Qwen-VL server: every data URL is decoded and an
image whose shorter side is below N px (or that does not decode) is answered ``refuse_status`` — 500
by default, as vLLM does for a too-small image — while other requests are answered normally.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from streamwatch.vlm.backend import VLMRequest


def to_request(body: dict[str, Any]) -> VLMRequest:
    system, prompt, images = "", "", []
    for m in body["messages"]:
        if m["role"] == "system":
            system = m["content"]
            continue
        content = m["content"]
        if isinstance(content, str):
            prompt = content
            continue
        for part in content:
            if part["type"] == "text":
                prompt = part["text"]
            elif part["type"] == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")), url[:40]
                images.append(base64.b64decode(url.split(",", 1)[1]))
    schema = body.get("response_format", {}).get("json_schema", {}).get("schema")
    return VLMRequest(
        prompt, tuple(images), system, body.get("max_tokens", 256), json.dumps(schema) if schema else None, body.get("temperature", 0.2)
    )


def image_sizes(req: VLMRequest) -> list[tuple[int, int] | None]:
    """(width, height) of each image, decoded as a server does; None for one that does not decode."""
    out: list[tuple[int, int] | None] = []
    for data in req.images:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        out.append(None if img is None else (img.shape[1], img.shape[0]))
    return out


class ChatServer:
    def __init__(
        self,
        respond: Callable[[VLMRequest], str],
        *,
        hang_s: float = 5.0,
        slow_s: float = 0.3,
        refuse_below: int = 0,
        refuse_status: int = 500,
        max_images: int = 0,
    ) -> None:
        self.respond = respond
        self.hang_s = hang_s
        self.slow_s = slow_s
        self.refuse_below = refuse_below
        self.refuse_status = refuse_status
        self.max_images = max_images  # >0: more images in one request is HTTP 400, as vLLM's --limit-mm-per-prompt
        self.sizes: list[list[tuple[int, int] | None]] = []  # images of each request, as decoded
        self.refused = 0
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    fault = server.script.pop(0) if server.script else "ok"
                if self.path != "/v1/chat/completions":
                    return self._send(404, b"not found")
                if fault in ("500", "503"):
                    return self._send(int(fault), b'{"error": {"message": "overloaded"}}')
                if fault == "400_schema" and "response_format" in body:
                    return self._send(400, b'{"error": {"message": "response_format is not supported"}}')
                if fault == "400":
                    return self._send(400, b'{"error": {"message": "invalid request"}}')
                request = to_request(body)
                if server.max_images and len(request.images) > server.max_images:
                    message = f"At most {server.max_images} image(s) may be provided in one request."
                    return self._send(400, json.dumps({"error": {"message": message}}).encode())
                sizes = image_sizes(request)
                with server.lock:
                    server.sizes.append(sizes)
                if server.refuse_below and any(s is None or min(s) < server.refuse_below for s in sizes):
                    with server.lock:
                        server.refused += 1
                    small = next(s for s in sizes if s is None or min(s) < server.refuse_below)
                    message = f"height and width must be larger than factor {server.refuse_below}, got {small}"
                    return self._send(server.refuse_status, json.dumps({"error": {"message": message}}).encode())
                if fault == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                if fault == "timeout":
                    time.sleep(server.hang_s)
                if fault == "slow":
                    time.sleep(server.slow_s)
                content = "this is not json at all" if fault == "bad_json" else server.respond(request)
                payload = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": len(content), "total_tokens": 100 + len(content)},
                }
                self._send(200, json.dumps(payload).encode())

            def _send(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)
