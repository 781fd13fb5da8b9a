"""Cluster data plane on a real 3-node JetStream cluster: event log, gateway follower, VLM admission."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np
import pytest
from evserver import ServerThread, alert, health
from nats.aio.client import Client
from test_server import events_until, hello, send

from streamwatch.cluster.events import JetStreamPublisher, ensure_event_stream, event_key, jetstream, names, stream_from_token, stream_token
from streamwatch.cluster.follow import Follower
from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError
from streamwatch.events.bus import EventBus
from streamwatch.events.model import AlertEvent, Evidence
from streamwatch.events.store import EventStore


async def wait_for(cond: Callable[[], bool], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8), (9, 9), 0)
    return bytes(cv2.imencode(".jpg", img)[1])


async def setup(urls: list[str], name: str, **kw: Any) -> tuple[Client, ClusterConfig]:
    cfg = ClusterConfig(nats=urls, name=name, replicas=3, dedupe_window_s=60, **kw)
    nc = await nats.connect(servers=urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_event_stream(jetstream(nc), cfg, len(nc.servers))
    return nc, cfg


def with_evidence(store: EventStore, stream: str, offset: float, seed: int) -> AlertEvent:
    rel = store.save_image(stream, jpeg(seed))
    return alert(stream=stream, offset=offset, evidence=Evidence(kind="ocr", text="加微信", bbox=(1, 2, 3, 4), frame=rel))


def test_stream_tokens_are_subject_safe_and_reversible() -> None:
    for sid in ("s1", "a.b", "a_b", "a_.b", "_-_", "..", "x__y.z-w", "cam.01_main"):
        tok = stream_token(sid)
        assert "." not in tok and stream_from_token(tok) == sid
    assert len({stream_token(s) for s in ("a.b", "a_b", "a__b", "a_-b", "a-b")}) == 5
    with pytest.raises(ClusterError):
        stream_token("a b")


def test_publish_dedupes_and_ids_are_jetstream_sequences(nats3: Any, tmp_path: Path) -> None:
    worker = EventStore(tmp_path / "w")

    async def go() -> None:
        nc, cfg = await setup(nats3.urls, "dd")
        js = jetstream(nc)
        pub = JetStreamPublisher(js, worker, cfg)
        first = with_evidence(worker, "cam.1", 12.5, 1)
        a = await pub.publish(first)
        b = await pub.publish(first)  # a retried publish
        assert (b.id, b.text) == (a.id, a.text)
        # the same finding re-raised by a worker that took over: new wall time, new evidence file
        again = dataclasses.replace(
            first, at=first.at + 30, evidence=dataclasses.replace(first.evidence, frame=worker.save_image("cam.1", jpeg(1)))
        )
        assert event_key(again) == event_key(first)
        c = await pub.publish(again)
        assert (c.id, c.text) == (a.id, a.text)
        assert pub.duplicates == 2
        # a health event is only deduped when it is the very same event
        h = health(stream="cam.1", offset=12.5)
        assert (await pub.publish(h)).id != (await pub.publish(dataclasses.replace(h, at=h.at + 1))).id

        t0 = time.perf_counter()
        ids = [(await pub.publish(alert(stream="s_2", offset=i))).id for i in range(100)]
        rate = 100 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        events = [alert(stream="s_2", offset=1000 + i) for i in range(100)]
        ids2 = [s.id for s in await asyncio.gather(*(pub.publish(e) for e in events))]
        again2 = [s.id for s in await asyncio.gather(*(pub.publish(e) for e in events))]  # all repeats
        rate_conc = 200 / (time.perf_counter() - t0)
        assert ids == sorted(ids) and len(set(ids)) == 100
        assert again2 == ids2 and len(set(ids2)) == 100 and min(ids2) > max(ids)
        info = await js.stream_info(names(cfg)[0])
        assert info.state.messages == 3 + 200 and info.state.last_seq == max(ids2)
        msg = await js.get_msg(names(cfg)[0], seq=ids[7])
        assert json.loads(msg.data)["offset"] == 7 and msg.subject == "dd.ev.s__2.alert"
        # the evidence is in the bucket under its relative path
        obs = await js.object_store(names(cfg)[2])
        assert (await obs.get(first.evidence.frame or "")).data == (worker.frames_dir / (first.evidence.frame or "")).read_bytes()
        print(f"\npublish: {rate:.0f} events/s one at a time, {rate_conc:.0f}/s 100 concurrent (half of them deduped repeats)")
        await nc.close()

    asyncio.run(go())
    worker.close()


def test_follower_mirrors_log_evidence_resume_and_websocket(nats3: Any, tmp_path: Path) -> None:
    worker = EventStore(tmp_path / "w")
    gw = ServerThread(tmp_path / "g", streams=("s1", "s2"))
    arrived: dict[int, float] = {}
    gw.bus.add_listener(lambda batch: arrived.update((s.id, time.monotonic()) for s in batch))
    holder: dict[str, Any] = {}

    async def start_follower() -> None:
        if "nc" not in holder:
            holder["nc"] = await nats.connect(servers=nats3.urls)
        f = Follower(jetstream(holder["nc"]), gw.store, gw.bus, holder["cfg"], idle_s=0.3)
        f.start()
        holder["f"] = f

    async def stop_follower() -> None:
        await holder["f"].stop()

    async def go() -> None:
        nc, cfg = await setup(nats3.urls, "fw")
        holder["cfg"] = cfg
        pub = JetStreamPublisher(jetstream(nc), worker, cfg)
        first = with_evidence(worker, "s1", 1.0, 7)
        a = await pub.publish(first)
        await pub.publish(health(stream="s2"))
        gw.call(start_follower())
        ws, _ = await hello(gw.ws_url())
        await send(ws, type="subscribe", channels=["alerts", "health"], since=0)
        got = await events_until(ws, a.id + 1)
        assert got[0]["id"] == a.id and got[0]["evidence"]["frame"] == "/frames/" + (first.evidence.frame or "")
        stored = gw.store.get(a.id)
        assert stored is not None and isinstance(stored, AlertEvent) and stored.evidence == first.evidence
        rel = first.evidence.frame or ""
        assert (gw.store.frames_dir / rel).read_bytes() == (worker.frames_dir / rel).read_bytes()

        acked: dict[int, float] = {}
        ids = [a.id, a.id + 1]
        for i in range(150):
            ev = with_evidence(worker, "s2", 10 + i, i) if i % 10 == 0 else alert(stream="s1", offset=10 + i)
            s = await pub.publish(ev)
            acked[s.id] = time.monotonic()
            ids.append(s.id)
            if i == 50:  # the gateway restarts its follower (same SQLite) while events keep coming
                await asyncio.get_running_loop().run_in_executor(None, gw.call, stop_follower())
            if i == 90:
                await asyncio.get_running_loop().run_in_executor(None, gw.call, start_follower())
            await asyncio.sleep(0.005)
        got += await events_until(ws, ids[-1])
        assert [e["id"] for e in got] == ids  # live, no duplicate, no gap
        assert [e.id for e in gw.store.events()] == ids
        for e in gw.store.events():
            for rel in e.files():
                assert (gw.store.frames_dir / rel).read_bytes() == (worker.frames_dir / rel).read_bytes()
        await ws.close()
        # a client resuming with since gets exactly what it missed
        ws2, _ = await hello(gw.ws_url())
        await send(ws2, type="subscribe", channels=["alerts", "health"], since=ids[100])
        assert [e["id"] for e in await events_until(ws2, ids[-1])] == ids[101:]
        await ws2.close()
        live = [i for k, i in enumerate(ids) if i in acked and (k < 52 or k > 100)]  # not while the follower was down
        lags = [arrived[i] - acked[i] for i in live]
        print(
            f"\nfollow lag (ack → gateway bus): median {statistics.median(lags) * 1000:.1f} ms, "
            f"max {max(lags) * 1000:.1f} ms, n={len(lags)}"
        )
        await nc.close()

    try:
        asyncio.run(go())
    finally:
        gw.call(stop_follower())
        gw.call(holder["nc"].close())
        gw.close()
        worker.close()


def test_publishing_and_following_survive_a_node_stop(nats3: Any, tmp_path: Path) -> None:
    worker = EventStore(tmp_path / "w")
    gstore = EventStore(tmp_path / "g")

    async def go() -> None:
        nc, cfg = await setup(nats3.urls, "nd")
        pub = JetStreamPublisher(jetstream(nc), worker, cfg, deadline_s=40)
        bus = EventBus(gstore)
        seen: list[int] = []
        bus.add_listener(lambda b: seen.extend(s.id for s in b))
        nc2 = await nats.connect(servers=list(reversed(nats3.urls)), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        f = Follower(jetstream(nc2), gstore, bus, cfg, idle_s=0.3)
        f.start()
        loop = asyncio.get_running_loop()
        ids = []
        stopping = None
        victim = None
        for i in range(80):
            ev = with_evidence(worker, "s1", i, i) if i % 8 == 0 else alert(offset=i)
            ids.append((await pub.publish(ev)).id)
            if i == 20:  # stop the events stream's leader
                info = await nc.jetstream().stream_info(names(cfg)[0])
                assert info.cluster is not None
                victim = next(n for n in nats3.nodes if n.name == info.cluster.leader)
                stopping = loop.run_in_executor(None, victim.stop)
            await asyncio.sleep(0.01)
        assert stopping is not None and victim is not None
        await stopping
        assert ids == sorted(ids) and len(set(ids)) == 80
        print(f"\nleader {victim.name} stopped: {pub.retries} publish retries")
        await wait_for(lambda: f.last_seq >= ids[-1], 40)
        assert seen == ids and [e.id for e in gstore.events()] == ids
        for e in gstore.events():
            for rel in e.files():
                assert (gstore.frames_dir / rel).read_bytes() == (worker.frames_dir / rel).read_bytes()
        await f.stop()
        await nc.close()
        await nc2.close()

    try:
        asyncio.run(go())
    finally:
        for n in nats3.nodes:
            n.start()
        nats3.wait_ready()
        worker.close()
        gstore.close()
