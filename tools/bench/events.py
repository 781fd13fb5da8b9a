#!/usr/bin/env python3
"""Event delivery: events/s from store write to receipt by 100 WebSocket clients, with p50/p99 latency.

streamwatch (group commit, per-client bounded queues, coalesced ``batch`` frames) against a naive
baseline in the same run: one commit per event, then a broadcast loop awaiting ``send`` to each client
in turn. The server runs in this process, the 100 clients in a second process (real TCP on 127.0.0.1).
Latency is measured per frame on the *oldest* event in it (from its creation, just before the store
write, to receipt), so batching can only make the figure worse, not hide anything.
Target: ≥ 5,000 events/s to 100 clients with p99 < 50 ms. Run: ``python tools/bench/events.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from streamwatch.app import freeze_startup_heap
from streamwatch.config import ServerConfig, TokenConfig
from streamwatch.events.bus import EventBus
from streamwatch.events.model import AlertEvent, Evidence, Severity
from streamwatch.events.store import EventStore
from streamwatch.server import EventServer

TOKEN = "bench-token-1"
AT = re.compile(r'"at":"([^"]+)"')


def make_alert(i: int) -> AlertEvent:
    return AlertEvent(
        stream="s1", at=time.time(), offset=i / 10, rule="contact_spam", severity=Severity.HIGH,
        message=f"contact spam caption #{i}", confidence=0.93, evidence=Evidence(kind="ocr", text="加微信 abc123", bbox=(10, 20, 300, 60)),
    )  # fmt: skip


# --- clients (second process) --------------------------------------------------------------------


async def _client(url: str, total: int, subscribe: bool, lat: list[float], done: list[float]) -> None:
    async with connect(url, max_size=None, max_queue=None) as ws:
        await ws.recv()  # hello
        if subscribe:
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts"]}))
            await ws.recv()
        got = 0
        while got < total:
            text = await ws.recv()
            now = time.time()
            assert isinstance(text, str)
            n = text.count('"type":"alert"')
            if n:
                got += n
                m = AT.search(text)
                if m:
                    lat.append(now - datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp())

        done.append(now)


def clients_main(url: str, n_clients: int, total: int, subscribe: bool, ready: Any, results: Any) -> None:
    async def main() -> None:
        lat: list[float] = []
        done: list[float] = []
        tasks = []
        for _ in range(n_clients):
            tasks.append(asyncio.create_task(_client(url, total, subscribe, lat, done)))
            await asyncio.sleep(0.002)
        await asyncio.sleep(1.0)
        ready.set()
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*tasks)
        except TimeoutError:
            pass
        results.put({"lat": lat, "done": done, "cpu": time.process_time()})

    asyncio.run(main())


# --- servers -------------------------------------------------------------------------------------


async def run_streamwatch(port: int, data: Path, total: int, rate: int, start: Any) -> float:
    store = EventStore(data, retention_mb=None)
    bus = EventBus(store)
    await bus.start()
    cfg = ServerConfig(port=port, tokens=[TokenConfig(name="bench", role="moderator", secret=TOKEN)], rate_burst=1000)
    server = EventServer(cfg, bus, streams=["s1"])
    await server.start()
    t0 = await _publish(lambda ev: bus.publish(ev), total, rate, start)
    await server.stop()
    await bus.stop()
    store.close()
    return t0


async def run_naive(port: int, data: Path, total: int, rate: int, start: Any) -> float:
    from streamwatch.events.codec import encode_body, with_id

    store = EventStore(data, retention_mb=None)
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        await ws.send(json.dumps({"type": "hello"}))
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    loop = asyncio.get_running_loop()

    async def publish(ev: AlertEvent) -> None:
        stored = await loop.run_in_executor(None, store.append, [ev])  # one commit per event
        text = with_id(stored[0].id, encode_body(ev))
        for ws in list(clients):  # the naive broadcast loop: each client in turn
            await ws.send(text)

    lock = asyncio.Lock()

    async def serial(ev: AlertEvent) -> None:
        async with lock:
            await publish(ev)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        t0 = await _publish(serial, total, rate, start)
        await asyncio.sleep(0.5)
    store.close()
    return t0


async def _publish(publish: Any, total: int, rate: int, start: Any) -> float:
    await asyncio.to_thread(start.wait)  # a multiprocessing.Event: the clients are connected
    freeze_startup_heap()  # as the daemon does once its stages are wired
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    t0 = time.time()
    pending: set[asyncio.Task[Any]] = set()  # only what is in flight: keeping every task would grow the heap
    for i in range(0, total, per_tick):
        target = t0 + (i / rate)
        delay = target - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for j in range(i, min(total, i + per_tick)):
            task = asyncio.create_task(publish(make_alert(j)))
            pending.add(task)
            task.add_done_callback(pending.discard)
    while pending:
        await asyncio.gather(*list(pending))
    return t0


def measure(kind: str, n_clients: int, total: int, rate: int) -> dict[str, float]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    url = f"ws://127.0.0.1:{port}/ws?token={TOKEN}"
    proc = ctx.Process(target=clients_main, args=(url, n_clients, total, kind == "streamwatch", ready, results))
    runner = run_streamwatch if kind == "streamwatch" else run_naive
    with tempfile.TemporaryDirectory() as tmp:

        async def main() -> tuple[float, dict[str, Any]]:
            task = asyncio.create_task(runner(port, Path(tmp), total, rate, ready))
            await asyncio.sleep(0.5)
            proc.start()
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, results.get)
            return await task, out

        cpu0 = time.process_time()
        t0, out = asyncio.run(main())
        server_cpu = time.process_time() - cpu0
    proc.join(30)
    lat = sorted(out["lat"])
    finished = len(out["done"])
    span = (max(out["done"]) - t0) if out["done"] else float("nan")
    return {
        "clients_done": finished,
        "events_per_s": total / span if finished == n_clients else float("nan"),
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1] if lat else float("nan"),
        "max_ms": 1000 * lat[-1] if lat else float("nan"),
        "server_cpu_s": server_cpu,
        "client_cpu_s": out["cpu"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=int, default=5000, help="offered events/s")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--naive-seconds", type=float, default=2.0, help="shorter: the baseline falls far behind")
    a = ap.parse_args()
    rows = {}
    for label, kind, secs, rate in (
        ("streamwatch", "streamwatch", a.seconds, a.rate),
        ("naive", "naive", a.naive_seconds, a.rate),
        ("streamwatch 2x", "streamwatch", a.seconds, 2 * a.rate),
    ):
        r = measure(kind, a.clients, int(rate * secs), rate)
        rows[label] = r
        print(f"{label:15s} offered {rate:6d} ev/s  clients {r['clients_done']}/{a.clients}  delivered {r['events_per_s']:7.0f} ev/s"
              f"  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms"
              f"  cpu server {r['server_cpu_s']:.1f}s clients {r['client_cpu_s']:.1f}s", flush=True)  # fmt: skip
    sw, naive = rows["streamwatch"], rows["naive"]
    print(f"\nstreamwatch / naive at {a.rate} ev/s: {sw['events_per_s'] / naive['events_per_s']:.1f}x throughput, "
          f"p99 {sw['p99_ms']:.1f} ms vs {naive['p99_ms']:.1f} ms")  # fmt: skip
    ok = sw["events_per_s"] >= 0.97 * a.rate and sw["p99_ms"] < 50
    print(f"target >= {a.rate} ev/s to {a.clients} clients with p99 < 50 ms: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
