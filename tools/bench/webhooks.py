#!/usr/bin/env python3
"""Webhook delivery: events/s to a local receiver, p50/p99 delay from store to receipt, and the time
to drain the backlog after a receiver outage, against the WebSocket path in the same run.

Everything on 127.0.0.1 in one process: the event store, bus, WebSocket server and one webhook
endpoint (the real sender: outbox cursor, signed batches) posting to a ``ThreadingHTTPServer``
receiver; a WebSocket client subscribed to alerts in the same loop. Delay is measured per event from
the moment ``publish`` returned (committed) to receipt. The outage phase publishes ``--rate`` alerts
a minute while the receiver answers 500 for ``--outage`` seconds, then times the drain.
The issue's figure is a 5-minute outage at 50 alerts/min: ``--outage 300 --rate 50`` (default: small).
Run: ``python tools/bench/webhooks.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from streamwatch.config import ServerConfig, Settings, TokenConfig
from streamwatch.events.bus import EventBus
from streamwatch.events.model import AlertEvent, Evidence, Severity
from streamwatch.events.store import EventStore
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.wiring import Integrations
from streamwatch.server import EventServer
from streamwatch.server.metrics import Metrics

TOKEN = "bench-token-1"


class Receiver:
    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.failing = False
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                now = time.time()
                if rx.failing:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                for e in json.loads(body)["events"]:
                    rx.received.setdefault(e["id"], now)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def alert(i: int) -> AlertEvent:
    ev = Evidence(kind="ocr", text="加微信 abc123", bbox=(10, 20, 300, 60))
    return AlertEvent(
        stream="s1", at=time.time(), offset=i, rule="contact_spam", severity=Severity.HIGH, message=f"#{i}", confidence=0.9, evidence=ev
    )


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def wait_for(cond: Any, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done in {limit_s:g}s")
        await asyncio.sleep(0.005)


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    rx = Receiver()
    hook = {"name": "bench", "url": rx.url, "secret": "bench-secret-1", "batch_max": args.batch, "backoff_initial_s": 0.5}
    hook["backoff_max_s"] = args.backoff_max
    settings = Settings(data_dir=data, webhooks=[hook])
    store = EventStore(data)
    bus = EventBus(store)
    await bus.start()
    server = EventServer(ServerConfig(port=0, tokens=[TokenConfig(name="b", role="moderator", secret=TOKEN)]), bus, streams=["s1"])
    await server.start()
    out = Integrations(
        settings,
        store,
        bus,
        OutboundMetrics(Metrics().registry),
        rule_of=lambda _s, _r: None,
        streams=lambda: ["s1"],
        offsets=lambda _s: 0.0,
        server_url=lambda: server.url,
    )
    await out.start()
    ws_got: dict[int, float] = {}

    async def ws_client() -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/ws?token={TOKEN}", max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts"]}))
            async for text in ws:
                now = time.time()
                msg = json.loads(text)
                for e in msg.get("events", [msg]):
                    if e.get("type") == "alert":
                        ws_got.setdefault(e["id"], now)

    client = asyncio.create_task(ws_client())
    await asyncio.sleep(0.5)
    try:
        # 1. throughput: a burst as fast as the bus takes it
        t0 = time.time()
        stored = await asyncio.gather(*(bus.publish(alert(i)) for i in range(args.burst)))
        ids = {s.id for s in stored}
        await wait_for(lambda: ids <= rx.received.keys(), 120)
        took = max(rx.received[i] for i in ids) - t0
        print(f"burst of {args.burst}: webhook {args.burst / took:,.0f} events/s delivered ({took:.2f}s)")

        # 2. steady delay at --steady events/s
        committed: dict[int, float] = {}
        for i in range(args.steady * args.steady_s):
            s = await bus.publish(alert(i))
            committed[s.id] = time.time()
            await asyncio.sleep(1 / args.steady)
        await wait_for(lambda: committed.keys() <= rx.received.keys() and committed.keys() <= ws_got.keys(), 60)
        for name, got in (("webhook", rx.received), ("websocket", ws_got)):
            d = [(got[i] - t) * 1000 for i, t in committed.items() if i in got]
            print(f"steady {args.steady}/s, {name:9}: p50 {pct(d, 50):.1f} ms, p99 {pct(d, 99):.1f} ms, max {max(d):.1f} ms (n={len(d)})")

        # 3. outage: receiver answers 500 while alerts keep coming, then the drain
        rx.failing = True
        outage_ids: list[int] = []
        every = 60.0 / args.rate
        end = time.monotonic() + args.outage
        while time.monotonic() < end:
            outage_ids.append((await bus.publish(alert(len(outage_ids)))).id)
            await asyncio.sleep(every)
        rx.failing = False
        back = time.time()
        await wait_for(lambda: set(outage_ids) <= rx.received.keys(), 600)
        drained = max(rx.received[i] for i in outage_ids) - back
        first = min(rx.received[i] for i in outage_ids) - back  # waiting for the next retry
        print(
            f"outage {args.outage:g}s at {args.rate:g} alerts/min ({len(outage_ids)} held back): drained {drained:.2f}s after the receiver"
            f" came back ({first:.2f}s of it waiting for the next retry, back-off cap {args.backoff_max:g}s);"
            " the WebSocket client, not cut off, saw them live"
        )
    finally:
        client.cancel()
        await out.stop()
        await server.stop()
        await bus.stop()
        store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--burst", type=int, default=2000, help="events in the throughput burst")
    p.add_argument("--batch", type=int, default=50, help="batch_max of the endpoint")
    p.add_argument("--steady", type=int, default=20, help="events/s in the delay phase")
    p.add_argument("--steady-s", type=int, default=5, help="seconds of the delay phase")
    p.add_argument("--outage", type=float, default=10.0, help="receiver outage, seconds (the issue: 300)")
    p.add_argument("--rate", type=float, default=50.0, help="alerts per minute during the outage")
    p.add_argument("--backoff-max", type=float, default=30.0, help="the endpoint's backoff_max_s (default: the config's)")
    asyncio.run(main(p.parse_args()))
    sys.exit(0)
