"""Hot model switching on a running daemon: `streamwatch models switch` (admin WebSocket message)
loads and warms the new model, swaps it in, records a health event; refused when too soon, for an
unknown model, or for a role that may not switch; live Q&A answered by whichever model serves."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from chat_server import ChatServer
from conftest import free_port
from evserver import TOKENS
from websockets.asyncio.client import connect

from streamwatch.app import Daemon
from streamwatch.cli import main
from streamwatch.config import load_settings
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.events.store import EventStore


async def ask(url: str, question: str) -> dict[str, Any]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKENS['moderator']}"}) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "subscribe", "channels": ["answers"], "since": 10**9}))
        await ws.recv()
        await ws.send(json.dumps({"type": "ask", "stream": "s", "question": question, "ref": "q"}))
        async with asyncio.timeout(20):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "answer" and msg.get("question") == question:
                    return msg  # type: ignore[no-any-return]


async def send_as(url: str, token: str, message: dict[str, Any]) -> dict[str, Any]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        await ws.send(json.dumps(message))
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


def test_switch_a_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ChatServer(lambda r: "from A") as a, ChatServer(lambda r: "from B", slow_s=0.4) as b:
        models = [
            {"id": mid, "backend": "openai", "endpoint": srv.url, "model_name": mid, "capabilities": ["qa", "reply"]}
            for mid, srv in (("a", a), ("b", b))
        ]
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({"models": models, "roles": {"qa": ["a", "local"]}}))
        settings = load_settings(
            None,
            {
                "data_dir": tmp_path / "d",
                # a listening RTMP stream nobody publishes to: the daemon just waits
                "streams": [{"id": "s", "source": f"rtmp://127.0.0.1:{free_port()}/live/x", "listen": True}],
                "server": {"port": 0, "tokens": [{"name": f"{r}-client", "role": r, "secret": s} for r, s in TOKENS.items()]},
                "analysis": {"analyzers": ["qr"]},
                "vlm": {"registry": registry, "min_switch_interval_s": 60},
            },
        )
        daemon = Daemon(settings)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=lambda: loop.run_until_complete(daemon.run()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not daemon.ready.is_set():
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        assert daemon.server is not None
        url = f"ws://127.0.0.1:{daemon.server.port}/ws"
        try:
            before = asyncio.run(ask(url, "who is on stage?"))
            b.script = ["slow"]  # the warm-up request takes 0.4 s
            switch = ["models", "switch", "qa", "b", "--url", url, "--token", TOKENS["admin"]]
            assert main(switch) == 0
            assert "qa: a → b in" in capsys.readouterr().out
            after = asyncio.run(ask(url, "and now?"))
            assert main(["models", "switch", "qa", "a", "--url", url, "--token", TOKENS["admin"]]) == 1
            assert "next switch is allowed in" in capsys.readouterr().err
            assert main(["models", "switch", "reply", "nope", "--url", url, "--token", TOKENS["admin"]]) == 1
            assert "unknown model 'nope'" in capsys.readouterr().err
            forbidden = asyncio.run(send_as(url, TOKENS["moderator"], {"type": "switch_model", "role": "qa", "model": "a"}))
            bad = asyncio.run(send_as(url, TOKENS["admin"], {"type": "switch_model", "role": "dance", "model": "a"}))
        finally:
            loop.call_soon_threadsafe(daemon.stop)
            thread.join(30)
    assert (before["model"], before["text"]) == ("a", "from A")
    assert (after["model"], after["text"]) == ("b", "from B")
    assert forbidden["code"] == "forbidden" and bad["code"] == "bad_field"
    store = EventStore(tmp_path / "d")
    switched = [e for e in store.events("s") if isinstance(e, HealthEvent) and e.kind is HealthKind.MODEL]
    assert len(switched) == 1 and "qa: a → b" in switched[0].reason and "by admin-client" in switched[0].reason
    assert switched[0].duration_s is not None and switched[0].duration_s >= 0.4
