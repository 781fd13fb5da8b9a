"""Placement by measured load with real processes: 3 workers, 2 heavy (1080p) and 6 light (240p) RTMP
shows from nginx-rtmp, NATS JetStream (one node, to spare the 2 cores).

Each worker measures the CPU of every stream it runs (cpu_account.py, every stage) and publishes the
smoothed figures and its budget in its membership record; the test reads those records from NATS.
w1 starts alone and takes all 8 shows (measured over its budget); w2 and w3 join. Once placement
has settled, no worker is over its budget, few moves were made and none twice, and (when two heavy
shows measure above the budget together, as they do here) the heavy shows run on different workers.
The budget is sized so one heavy show and the light ones fit a worker but two heavy shows do not.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import nats
import pytest
from cluster_rig import Rig, request, write_config
from conftest import Nginx, publish, stop

from streamwatch.cluster.assign import Member
from streamwatch.cluster.members import Members

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_overlay_suite import SuiteClip, write_clip

BUDGET = 0.16  # CPU s per s per worker (cluster.cpu_budget): small on purpose, see the module docstring
HEAVY = [("heavy0", 1920, 1080, 25), ("heavy1", 1920, 1080, 25)]
LIGHT = [(f"light{i}", 426, 240, 15) for i in range(6)]
CLUSTER = f"""cpu_budget = {BUDGET}
cost_window_s = 3
move_cooldown_s = 60
"""


def clip(root: Path, name: str, w: int, h: int, fps: int, i: int) -> Path:
    out = root / f"{name}.mp4"
    write_clip(SuiteClip(name, ("coffee", "astronaut", "chelsea")[i % 3], w, h, fps, 8, 40.0, ()), out)
    return out


async def _records(urls: list[str], bucket: str) -> dict[str, Member]:
    nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=1)
    try:
        return await Members(await nc.jetstream().key_value(bucket)).live()
    finally:
        await nc.close()


def records(urls: list[str], cluster: str = "sw") -> dict[str, Member]:
    """The workers' membership records (gateways left out), read from NATS."""
    return {w: m for w, m in asyncio.run(_records(urls, f"{cluster}-members")).items() if m.capacity > 0}


def loads(recs: dict[str, Member]) -> dict[str, float]:
    return {w: round(sum(c for s, c in m.costs if s in m.streams), 3) for w, m in recs.items()}


def settled(recs: dict[str, Member], shows: set[str]) -> bool:
    """Every show held and measured by its holder, nothing just handed over."""
    held = [s for m in recs.values() for s in m.streams]
    measured = {s for m in recs.values() for s, _ in m.costs if s in m.streams}
    return sorted(held) == sorted(shows) and measured == shows and not any(m.handed for m in recs.values())


@pytest.mark.timeout(420)
def test_two_heavy_and_six_light_shows_keep_every_worker_under_its_budget(
    nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nats_cluster import make_cluster

    monkeypatch.setenv("STREAMWATCH_ANALYSIS__CPU_THREADS", "1")  # every library on the calling thread: complete CPU figures
    monkeypatch.setenv("STREAMWATCH_INGEST__DECODE", "full")  # every frame decoded: the cost follows pixels x fps
    media = tmp_path / "media"
    media.mkdir()
    shows = HEAVY + LIGHT
    publishers = [publish(clip(media, n, w, h, fps, i), nginx.rtmp(n), loop=True) for i, (n, w, h, fps) in enumerate(shows)]
    (tmp_path / "nats").mkdir()
    cluster = make_cluster(tmp_path / "nats", 1)
    cluster.start()
    cluster.wait_ready()
    rig = Rig(tmp_path, write_config(tmp_path / "cluster.toml", cluster.urls, lease_ttl_s=4.0, cluster_extra=CLUSTER))
    try:
        w1 = rig.add("worker", "w1")  # alone at first: it takes every show, over its budget (nobody else has room)
        g1 = rig.add("gateway", "g1")
        rig.wait_ready()
        for n, *_ in shows:
            answer = request(g1.url, {"type": "add_stream", "stream": {"id": n, "source": nginx.rtmp(n)}})
            assert answer["type"] == "stream_added", answer
        names = {n for n, *_ in shows}
        deadline = time.monotonic() + 120
        while not (settled(recs := records(cluster.urls), names) and loads(recs)["w1"] > BUDGET):  # a window or two
            assert time.monotonic() < deadline, f"w1 alone should be measured over its budget: {loads(recs)}\n{w1.tail()}"
            time.sleep(1.0)
        alone = loads(recs)["w1"]
        print(f"\nw1 alone: load {alone} (budget {BUDGET})")
        rig.add("worker", "w2")
        rig.add("worker", "w3")  # they join: measured load moves to them until nobody is over budget
        deadline, stable_since, last = time.monotonic() + 240, None, None
        while time.monotonic() < deadline:
            recs = records(cluster.urls)
            placement = {w: m.streams for w, m in recs.items()}
            ok = settled(recs, names) and all(v <= BUDGET for v in loads(recs).values())
            if ok and placement == last:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= 12:  # four cost windows without a move
                    break
            else:
                stable_since = None
            last = placement
            time.sleep(1.0)
        costs = {s: c for m in recs.values() for s, c in m.costs}
        print(f"\ncosts (CPU s per s): {costs}\nloads: {loads(recs)} (budget {BUDGET} each)")
        logs = "".join(n.log.read_text(errors="replace") for n in rig.workers)
        moved = re.findall(r"stream (\S+) handed over to even the load", logs)
        moves = len(moved)
        print(f"placement: { {w: m.streams for w, m in recs.items()} }; {moves} move(s) to even the load")
        assert settled(recs, names), f"not settled: {recs}\n{rig.logs()}"
        assert all(m.budget == BUDGET for m in recs.values())
        assert all(v <= BUDGET for v in loads(recs).values()), f"a worker over its budget: {loads(recs)}\n{rig.logs()}"
        heavy = max(costs[n] for n, *_ in HEAVY)
        light = max(costs[n] for n, *_ in LIGHT)
        assert heavy > 3 * light, f"1080p should cost far more than 240p: {costs}"
        if 2 * min(costs[n] for n, *_ in HEAVY) > BUDGET:  # two heavies cannot share a worker
            holder = {s: w for w, m in recs.items() for s in m.streams}
            assert holder["heavy0"] != holder["heavy1"], recs
        assert 2 <= moves <= 8, f"moves: {moved}"
        assert len(set(moved)) == moves, f"a show moved twice (flapping): {moved}"
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.stop()
        for p in publishers:
            stop(p)
        cluster.stop()
