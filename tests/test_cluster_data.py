"""Cluster data plane on a real 3-node JetStream cluster: event log, gateway follower, VLM admission."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np
import pytest
from chat_server import ChatServer
from evserver import ServerThread, alert, health
from nats.aio.client import Client
from test_server import events_until, hello, send
from test_vlm_router import registry, spec

from streamwatch.cluster.admission import Admission, AdmissionTimeout, model_key, open_admission
from streamwatch.cluster.events import (
    EventLogError,
    JetStreamPublisher,
    ensure_event_stream,
    event_key,
    jetstream,
    names,
    stream_from_token,
    stream_token,
)
from streamwatch.cluster.follow import Follower
from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError, EventsError
from streamwatch.events.bus import EventBus
from streamwatch.events.model import AlertEvent, Evidence
from streamwatch.events.store import EventStore
from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.registry import Capability
from streamwatch.vlm.router import ModelRouter


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


def test_append_ids_is_idempotent_in_order_and_deliver_moves_last_id(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "g")
    first = store.append_ids([(5, alert(offset=1)), (9, health())])
    assert [s.id for s in first] == [5, 9] and json.loads(first[0].text)["id"] == 5
    assert store.append_ids([(5, alert(offset=1)), (9, health())]) == []  # a replayed batch
    assert store.append_ids([(7, alert(offset=2))]) == []  # never out of order
    assert [s.id for s in store.append_ids([(9, health()), (12, alert(offset=3))])] == [12]
    assert [e.id for e in store.events()] == [5, 9, 12] and store.last_id() == 12
    bus = EventBus(store)
    assert bus.last_id == 12
    got: list[int] = []
    bus.add_listener(lambda b: got.extend(s.id for s in b))
    more = store.append_ids([(13, alert(offset=4)), (20, alert(offset=5))])
    bus.deliver(first + more)  # what it already had is not handed out again
    assert got == [13, 20] and bus.last_id == 20
    # local retention removed everything: the high-water mark stays, so nothing old comes back
    assert store.prune(now=time.time() + 400 * 86400) == 5 and store.last_id() == 0
    assert store.high_water() == 20 and store.append_ids([(20, alert()), (21, alert())])[0].id == 21
    store.close()


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
        # set up again (a restarted worker), asking for more replicas than servers: updated, capped at 3
        await ensure_event_stream(js, cfg.model_copy(update={"replicas": 5}), 3)
        info = await js.stream_info(names(cfg)[0])
        assert info.config.num_replicas == 3 and info.config.duplicate_window == 60 and info.state.messages == 203
        msg = await js.get_msg(names(cfg)[0], seq=ids[7])
        assert json.loads(msg.data)["offset"] == 7 and msg.subject == "dd.ev.s__2.alert"
        # the evidence is in the bucket under its relative path
        obs = await js.object_store(names(cfg)[2])
        assert (await obs.get(first.evidence.frame or "")).data == (worker.frames_dir / (first.evidence.frame or "")).read_bytes()
        # nobody answers (no such stream): retried for the deadline, then a loud error, never a silent drop
        lost = JetStreamPublisher(js, worker, cfg.model_copy(update={"name": "nostream"}), deadline_s=1.0, attempt_s=0.2)
        t0 = time.perf_counter()
        with pytest.raises(EventLogError) as err:
            await lost.publish(alert())
        assert isinstance(err.value, EventsError) and lost.retries >= 2 and 0.9 < time.perf_counter() - t0 < 5
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
        # evidence lost on the worker: the event still goes out, and the gateway keeps it without the file
        ghost = await pub.publish(alert(stream="s1", offset=2.0, evidence=Evidence(kind="ocr", frame="s1/gone/lost.jpg")))
        gw.call(start_follower())
        ws, _ = await hello(gw.ws_url())
        await send(ws, type="subscribe", channels=["alerts", "health"], since=0)
        got = await events_until(ws, ghost.id)
        assert holder["f"].missing == 1 and gw.store.get(ghost.id) is not None
        assert not (gw.store.frames_dir / "s1/gone/lost.jpg").exists()
        assert got[0]["id"] == a.id and got[0]["evidence"]["frame"] == "/frames/" + (first.evidence.frame or "")
        stored = gw.store.get(a.id)
        assert stored is not None and isinstance(stored, AlertEvent) and stored.evidence == first.evidence
        rel = first.evidence.frame or ""
        assert (gw.store.frames_dir / rel).read_bytes() == (worker.frames_dir / rel).read_bytes()

        acked: dict[int, float] = {}
        ids = [a.id, a.id + 1, ghost.id]
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
        files = [rel for e in gw.store.events() for rel in e.files() if e.id != ghost.id]
        assert len(files) == 1 + 15
        for rel in files:
            assert (gw.store.frames_dir / rel).read_bytes() == (worker.frames_dir / rel).read_bytes()
        await ws.close()
        # a client resuming with since gets exactly what it missed
        ws2, _ = await hello(gw.ws_url())
        await send(ws2, type="subscribe", channels=["alerts", "health"], since=ids[100])
        assert [e["id"] for e in await events_until(ws2, ids[-1])] == ids[101:]
        await ws2.close()
        # indexed frames: thumbnail + embedding, deduped on (stream, offset, model), followed into the index
        emb = np.random.default_rng(3).normal(size=512).astype(np.float32)
        emb /= np.linalg.norm(emb)
        thumb = worker.save_image("s1", jpeg(99))
        fid = await pub.publish_frame("s1", 42.0, time.time(), thumb, "clip-b32", ("setting=stage",), emb)
        assert await pub.publish_frame("s1", 42.0, time.time(), worker.save_image("s1", jpeg(99)), "clip-b32", (), emb) == fid
        await wait_for(lambda: bool(gw.store.frames()), 10)
        (fr,) = gw.store.frames()
        assert (fr.id, fr.stream, fr.offset, fr.thumb, fr.model, fr.tags) == (fid, "s1", 42.0, thumb, "clip-b32", ("setting=stage",))
        assert np.abs(fr.embedding - emb).max() < 1e-3
        assert (gw.store.frames_dir / thumb).read_bytes() == (worker.frames_dir / thumb).read_bytes()
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


# --- VLM admission ----------------------------------------------------------------------------------


async def admissions(urls: list[str], name: str, n: int, **kw: Any) -> tuple[list[Client], list[Admission]]:
    cfg = ClusterConfig(nats=urls, name=name, replicas=3, vlm_budget={"qwen/vl:7b": 2})
    conns = [await nats.connect(servers=urls) for _ in range(n)]
    return conns, [await open_admission(jetstream(nc), cfg, f"w{i}", servers=3, **kw) for i, nc in enumerate(conns)]


def test_admission_budget_holds_across_workers_and_dead_holders_expire(nats3: Any) -> None:
    assert model_key("qwen/vl:7b") == "qwen_2fvl_3a7b" and model_key("a.b") == "a_2eb"

    async def go() -> None:
        conns, adms = await admissions(nats3.urls, "ad", 3, ttl_s=2.0)
        assert adms[0].budget("qwen/vl:7b") == 2 and adms[0].budget("other") == 1
        held, peak, done = 0, 0, 0

        async def work(adm: Admission) -> None:
            nonlocal held, peak, done
            async with adm.slot("qwen/vl:7b", 30):
                held += 1
                peak = max(peak, held)
                await asyncio.sleep(0.2)
                held -= 1
            done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(work(adm) for adm in adms for _ in range(12)))
        took = time.perf_counter() - t0
        assert (peak, done, held) == (2, 36, 0)
        assert took >= 36 * 0.2 / 2  # the budget really serialised them
        # a short wait with both slots taken: AdmissionTimeout, which is also a TimeoutError
        async with adms[0].slot("qwen/vl:7b", 1), adms[1].slot("qwen/vl:7b", 1):
            with pytest.raises(AdmissionTimeout):
                async with adms[2].slot("qwen/vl:7b", 0.3):
                    pass
        # a long request renews its slot past the TTL: nobody else gets in meanwhile
        async with adms[0].slot("other", 1):
            await asyncio.sleep(3.0)
            with pytest.raises(TimeoutError):
                async with adms[1].slot("other", 0.3):
                    pass
        # a holder that dies without releasing: its slot comes free after the TTL
        dead = adms[2].slot("other", 1)
        await dead.__aenter__()
        await conns[2].close()  # the renewal dies with the connection
        t1 = time.perf_counter()
        async with adms[1].slot("other", 10):
            waited = time.perf_counter() - t1
        assert 1.0 < waited < 6.0, waited
        print(f"\nadmission: 36 holds of 0.2 s at budget 2 took {took:.2f}s; dead holder's slot free after {waited:.2f}s")
        for nc in conns[:2]:
            await nc.close()

    asyncio.run(go())


def test_router_with_a_cluster_gate_never_overlaps_requests(nats3: Any) -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def respond(_req: Any) -> str:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.5)
        with lock:
            state["now"] -= 1
        return "fine"

    with ChatServer(respond) as srv:
        reg = registry([spec("m", srv.url, concurrency=4)], {"qa": ["m", "local"]})

        async def ask(router: ModelRouter) -> str:
            async def call(b: Any) -> str:
                return (await b.generate(VLMRequest("q", (), "", 16, None, 0.2))).text

            async def local() -> str:
                return "local"

            return (await router.run(Capability.QA, call, local=local))[1]

        async def go() -> tuple[list[str], list[str], list[tuple[str, str]]]:
            free = ModelRouter(reg)  # control: without a gate the two requests do overlap
            await asyncio.gather(ask(free), ask(free))
            await free.close()
            assert state["peak"] == 2
            state["peak"] = 0
            cfg = ClusterConfig(nats=nats3.urls, name="rt", vlm_budget={"m": 1})
            conns = [await nats.connect(servers=nats3.urls) for _ in range(2)]
            seen: list[tuple[str, str]] = []
            routers = [
                ModelRouter(
                    reg,
                    admission=await open_admission(jetstream(nc), cfg, f"w{i}", servers=3, ttl_s=5),
                    observe=lambda m, o, _s: seen.append((m, o)),
                )
                for i, nc in enumerate(conns)
            ]
            served = list(await asyncio.gather(*(ask(r) for r in routers for _ in range(2))))
            # with a short wait, a busy model is skipped (to the local fallback) and its breaker stays closed
            impatient = ModelRouter(reg, admission=routers[0].admission, admission_wait_s=0.2, observe=lambda m, o, _s: seen.append((m, o)))
            holder = asyncio.create_task(ask(routers[1]))
            await wait_for(lambda: state["now"] == 1, 10)  # routers[1] holds the only slot
            busy = [await ask(impatient), await holder]
            states = [impatient.state(), routers[1].state()]
            for r in [*routers, impatient]:
                await r.close()
            for nc in conns:
                await nc.close()
            return served, busy, [(k, v) for s in states for k, v in s.items()] + seen

        served, busy, rest = asyncio.run(go())
    assert served == ["m"] * 4
    assert state["peak"] == 1  # four requests from two workers, never two at once
    assert busy == ["local", "m"]
    assert ("m", "busy") in rest and ("m", "open") not in rest and ("m", "closed") in rest
