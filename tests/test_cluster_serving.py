"""A worker that also serves (``streamwatch worker --serve``): analyses its share and serves every stream.

Two workers on the 3-node NATS cluster, one of them serving; two 360p RTMP shows with a QR code in
view, added on the serving worker. Its moderator sees the alerts of both shows (one per show, the
other show runs on the plain worker), its report works, its gateway store is its own file; then it
drains on SIGTERM: its show is handed over to the other worker (seen on a plain gateway, one short
``monitoring_gap``, no second alert), and the process exits 0. Then the last worker is killed: the
gateway shows every show ``unwatched`` until a worker is back, and no alert is repeated after. A
recording (a file) added meanwhile is read once: no new owner opens it again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cluster_rig import MODERATOR, Moderator, Rig, request, write_config
from conftest import Nginx, publish, stop
from test_cluster import _get, _ts, alerts, health, qr_clip

SHOWS = 2


def _states_until(url: str, want: dict[str, str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {s["id"]: s["state"] for s in request(url, {"type": "list_streams"})["streams"]}
        if states == want or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_a_serving_worker_analyses_its_share_serves_all_and_drains(nats3: Any, nginx: Nginx, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    names = [f"srv{i}" for i in range(SHOWS)]
    publishers = [publish(qr_clip(media, i), nginx.rtmp(n), loop=True) for i, n in enumerate(names)]
    rig = Rig(tmp_path, write_config(tmp_path / "cluster.toml", nats3.urls, name="serving"))
    mods: list[Moderator] = []
    try:
        s1 = rig.add("worker", "s1", serve=True)
        rig.add("worker", "w2")
        g1 = rig.add("gateway", "g1")
        rig.wait_ready()
        mod_s, mod_g = Moderator(s1.url), Moderator(g1.url)
        mods += [mod_s, mod_g]
        mod_s.start()
        mod_g.start()
        for n in names:
            answer = request(s1.url, {"type": "add_stream", "stream": {"id": n, "source": nginx.rtmp(n)}})
            assert answer["type"] == "stream_added", answer
        dup = request(s1.url, {"type": "add_stream", "stream": {"id": names[0], "source": nginx.rtmp(names[0])}})
        assert dup["type"] == "error" and dup["code"] == "duplicate_stream", dup

        mod_s.wait_for(lambda evs: all(alerts(evs, n) for n in names), 120, "a qr_code alert of every show on the serving worker")
        holders = {s["id"]: s.get("worker") for s in request(s1.url, {"type": "list_streams"})["streams"]}
        assert sorted(holders.values()) == ["s1", "w2"], f"one show on each worker: {holders}"
        # a recording (a file): read once to its end; it then costs nothing and no new owner reads it again
        vod = qr_clip(media, 5)
        assert request(s1.url, {"type": "add_stream", "stream": {"id": "vod", "source": str(vod)}})["type"] == "stream_added"
        mod_g.wait_for(lambda evs: bool(alerts(evs, "vod") and health(evs, "vod", "state", "stopped")), 90, "the file read to its end")
        mine = next(sid for sid, w in holders.items() if w == "s1")
        report = _get(f"http://127.0.0.1:{s1.port}/report/{mine}?token={MODERATOR}").decode("utf-8", "replace")
        assert "qr_code" in report or "QR" in report, report[:500]
        assert (s1.data / "gateway" / "events.sqlite3").exists() and (s1.data / "events.sqlite3").exists()

        # --- SIGTERM: the worker part hands its show over, then the gateway part stops; exit 0 -----------
        mod_g.wait_for(lambda evs: all(alerts(evs, n) for n in names), 60, "every alert on the plain gateway")
        drained_at = time.time()
        assert s1.stop() == 0, s1.tail()
        evs = mod_g.wait_for(
            lambda evs: any(_ts(e["at"]) > drained_at for e in health(evs, mine, "state", "live")), 60, f"{mine} live again on w2"
        )
        gaps = [e for e in health(evs, mine, "monitoring_gap") if _ts(e["at"]) > drained_at]
        assert len(gaps) == 1 and gaps[0]["duration_s"] < 3.0, f"one short gap on a drain: {gaps}"
        after = {s["id"]: s.get("worker") for s in request(g1.url, {"type": "list_streams"})["streams"]}
        assert after == {n: "w2" for n in [*names, "vod"]}, after

        time.sleep(3)  # a repeated alert after the handover would show up now
        got = Counter(e["stream"] for e in alerts(mod_g.snapshot()) if e["rule"] == "qr_code")
        assert got == Counter({n: 1 for n in [*names, "vod"]}), f"one qr_code alert per show across the handover: {got}"
        served = {e["id"] for e in alerts(mod_s.snapshot())}
        assert served <= {e["id"] for e in alerts(mod_g.snapshot())}, "the serving worker and the gateway disagree on ids"

        # --- the last worker dies: both gateways show every show unwatched, and it is in the log once -----
        g2 = rig.add("gateway", "g2")
        g2.wait_ready()
        mod_2 = Moderator(g2.url)
        mods.append(mod_2)
        mod_2.start()
        rig.nodes["w2"].kill()
        for url in (g1.url, g2.url):
            states = _states_until(url, {n: "unwatched" for n in names} | {"vod": "stopped"}, 30)
            assert states == {n: "unwatched" for n in names} | {"vod": "stopped"}, states
        for m in (mod_g, mod_2):
            m.wait_for(lambda evs: all(health(evs, n, "state", "unwatched") for n in names), 30, "unwatched in the log")
        rig.nodes["w2"].start()
        states = _states_until(g1.url, {n: "live" for n in names} | {"vod": "stopped"}, 60)
        assert states == {n: "live" for n in names} | {"vod": "stopped"}, states
        said = {}
        for m in (mod_g, mod_2):
            evs = m.wait_for(lambda evs: all(health(evs, n, "monitoring_gap") for n in names), 30, "the takeover's gaps")
            for n in names:
                unwatched = health(evs, n, "state", "unwatched")
                assert len(unwatched) == 1, f"{n}: said unwatched once for the cluster (two gateways saw it): {unwatched}"
                said[n] = said.get(n, unwatched[0]["id"])
                assert unwatched[0]["id"] == said[n] and "no worker holds it" in unwatched[0]["reason"]
            assert not health(evs, "vod", "state", "unwatched"), "a finished file is not unwatched"
        for n in names:  # the report: not watched from the last heartbeat until the takeover (its monitoring gap)
            rep = json.loads(_get(f"http://127.0.0.1:{g2.port}/report/{n}?format=json&token={MODERATOR}"))
            gaps = [p for p in rep["periods"] if p["kind"] == "monitoring_gap"]
            outage_gap = max(gaps, key=lambda p: p["duration_s"] or 0)
            assert outage_gap["duration_s"] >= 3.0 and not any(p["duration_s"] is None for p in gaps), rep["periods"]
        time.sleep(2)
        got = Counter(e["stream"] for e in alerts(mod_g.snapshot()) if e["rule"] == "qr_code")
        assert got == Counter({n: 1 for n in [*names, "vod"]}), f"cooldowns carried across a full outage: {got}"
        # (a read cut short, its lease lost in a NATS election, is read again by the next owner: the claim is
        # that a file read to its end is never opened again)
        vod = health(mod_g.snapshot(), "vod", "state")
        finished = min(e["id"] for e in vod if e.get("state") == "stopped")
        reopened = [e for e in vod if e.get("state") == "connecting" and e["id"] > finished]
        assert not reopened, f"the file was opened again after it was read to its end: {vod}"
    except BaseException:
        print(rig.logs())
        raise
    finally:
        for m in mods:
            m.close()
        rig.stop()
        for p in publishers:
            stop(p)
