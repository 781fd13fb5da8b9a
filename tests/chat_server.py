"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

Answers ``POST /v1/chat/completions`` from a ``respond(request) -> str`` function (a script, or the
tiny transformers model), with scripted faults consumed one per request:

- ``500`` / ``503``: HTTP error; ``garbage``: a 200 whose body is not JSON;
- ``timeout``: sleeps ``hang_s`` before answering; ``slow``: sleeps ``slow_s`` then answers;
- ``bad_json``: answers content that is not JSON; ``400_schema``: 400 when response_format is sent.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
                assert url.startswith("data:image/jpeg;base64,"), url[:40]
                images.append(base64.b64decode(url.split(",", 1)[1]))
    schema = body.get("response_format", {}).get("json_schema", {}).get("schema")
    return VLMRequest(
        prompt, tuple(images), system, body.get("max_tokens", 256), json.dumps(schema) if schema else None, body.get("temperature", 0.2)
    )


class ChatServer:
    def __init__(self, respond: Callable[[VLMRequest], str], *, hang_s: float = 5.0, slow_s: float = 0.3) -> None:
        self.respond = respond
        self.hang_s = hang_s
        self.slow_s = slow_s
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
                if fault == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                if fault == "timeout":
                    time.sleep(server.hang_s)
                if fault == "slow":
                    time.sleep(server.slow_s)
                content = "this is not json at all" if fault == "bad_json" else server.respond(to_request(body))
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
