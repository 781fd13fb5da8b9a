"""Cluster mode end to end: 3 workers + 2 gateways on a real 3-node NATS JetStream cluster, 360p RTMP shows.

Each show has its own off-site QR code in view the whole time, so each should raise exactly one
``qr_code`` alert for the whole test (cooldown 60 s): a second one after a takeover means the
cooldowns were not carried; a missing one on a gateway means an alert was lost. Shows are added at
run time; a worker is killed with ``kill -9``; a NATS node is stopped; a gateway is restarted while
its moderator resumes with ``since``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cluster_rig import ADMIN, MODERATOR, Moderator, Rig, request, write_config
from conftest import Nginx, publish, stop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_overlay_suite import Overlay, SuiteClip, write_clip

SHOWS = 6


def qr_clip(root: Path, i: int) -> Path:
    payload = f"https://spam{i}.example.net/join?room={i}"
    clip = SuiteClip(f"show{i}", ("coffee", "astronaut", "chelsea")[i % 3], 640, 360, 10, 12, 12.0,
                     (Overlay(0, 12, "qr", payload, 120, "top-right", "qr_code"),))  # fmt: skip
    out = root / f"show{i}.mp4"
    write_clip(clip, out)
    return out


def alerts(evs: list[dict[str, Any]], stream: str | None = None) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == "alert" and (stream is None or e["stream"] == stream)]


def health(evs: list[dict[str, Any]], stream: str, kind: str, state: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in evs
        if e["type"] == "health" and e["stream"] == stream and e["kind"] == kind and (state is None or e.get("state") == state)
    ]


@pytest.mark.timeout(600)
def test_cluster_failover_gateways_and_a_lost_nats_node(nats3: Any, nginx: Nginx, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clips = [qr_clip(media, i) for i in range(SHOWS + 1)]
    publishers = [publish(c, nginx.rtmp(f"show{i}"), loop=True) for i, c in enumerate(clips)]
    rig = Rig(tmp_path, write_config(tmp_path / "cluster.toml", nats3.urls))
    try:
        for w in ("w1", "w2", "w3"):
            rig.add("worker", w)
        g1, g2 = rig.add("gateway", "g1"), rig.add("gateway", "g2")
        rig.wait_ready()  # every worker a member before shows arrive (a late one would get its share by rebalancing)
        mod1, mod2 = Moderator(g1.url), Moderator(g2.url)
        mod1.start()
        mod2.start()

        # --- 6 shows added at run time (on gateway 1), bad inputs refused -----------------------------
        for i in range(SHOWS):
            answer = request(g1.url, {"type": "add_stream", "stream": {"id": f"show{i}", "source": nginx.rtmp(f"show{i}")}})
            assert answer["type"] == "stream_added", answer
        dup = request(g2.url, {"type": "add_stream", "stream": {"id": "show0", "source": nginx.rtmp("show0")}})
        assert dup["type"] == "error" and dup["code"] == "duplicate_stream", dup
        bad = request(g1.url, {"type": "add_stream", "stream": {"id": "bad", "source": "rtmp://"}})
        assert bad["type"] == "error" and bad["code"] == "bad_request", bad
        listen = request(g1.url, {"type": "add_stream", "stream": {"id": "pushed", "source": "rtmp://0.0.0.0:1935/live/x", "listen": True}})
        assert listen["type"] == "error" and "cluster mode" in listen["message"], listen
        unknown = request(g2.url, {"type": "remove_stream", "stream": "nope"})
        assert unknown["type"] == "error" and unknown["code"] == "unknown_stream", unknown

        # every show alerts once, seen on gateway 2 (the shows run on all three workers)
        def every_show_alerted(evs: list[dict[str, Any]]) -> bool:
            return all(alerts(evs, f"show{i}") for i in range(SHOWS))

        mod2.wait_for(every_show_alerted, 120, "a qr_code alert of every show")
        # the console of gateway 2 shows every show's latest frame, whichever worker runs it
        deadline = time.monotonic() + 30
        while True:
            wall = json.loads(_get(f"http://127.0.0.1:{g2.port}/streams?token={MODERATOR}"))["streams"]
            if (all(t["frame"] for t in wall if t["id"].startswith("show")) and len(wall) == SHOWS) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(wall) == SHOWS and all(t["frame"] for t in wall), wall
        assert _get(f"http://127.0.0.1:{g2.port}/streams/show1/frame.jpg?token={MODERATOR}")[:2] == b"\xff\xd8"
        listed = request(g2.url, {"type": "list_streams"})["streams"]
        holders = {s["id"]: s.get("worker") for s in listed}
        assert set(holders) == {f"show{i}" for i in range(SHOWS)}
        assert set(holders.values()) == {"w1", "w2", "w3"}, f"spread over every worker: {holders}"

        # --- kill -9 the worker holding the most shows -------------------------------------------------
        victim = Counter(holders.values()).most_common(1)[0][0]
        moved = sorted(s for s, w in holders.items() if w == victim)
        killed_at = time.time()
        rig.nodes[victim].kill()

        def resumed(evs: list[dict[str, Any]]) -> bool:
            return all(any(e["at"] and _ts(e["at"]) > killed_at for e in health(evs, s, "state", "live")) for s in moved)

        evs = mod2.wait_for(resumed, 60, f"{moved} live again after {victim} was killed")
        for s in moved:
            live_again = min(_ts(e["at"]) for e in health(evs, s, "state", "live") if _ts(e["at"]) > killed_at)
            gaps = [e for e in health(evs, s, "monitoring_gap") if _ts(e["at"]) > killed_at]
            assert len(gaps) == 1, f"{s}: one monitoring gap for the takeover: {gaps}"
            print(f"{s}: live again {live_again - killed_at:.1f}s after the kill; gap {gaps[0]['duration_s']}s")
            assert live_again - killed_at <= 10.0, f"{s} resumed {live_again - killed_at:.1f}s after the kill"
            assert gaps[0]["duration_s"] <= 10.0
        after = {s["id"]: s.get("worker") for s in request(g1.url, {"type": "list_streams"})["streams"]}
        assert all(after[s] not in (None, victim) for s in moved), after

        # --- the killed worker comes back and is handed its even share again (one short gap per move) --
        rig.nodes[victim].start()
        back_at = time.time()

        def even(after: dict[str, str | None]) -> bool:
            # every show held (a show being moved has no holder for a moment; two donors may move at once)
            return None not in after.values() and sorted(Counter(after.values()).values()) == [2, 2, 2]

        deadline = time.monotonic() + 60
        while True:
            after = {s["id"]: s.get("worker") for s in request(g1.url, {"type": "list_streams"})["streams"]}
            if even(after) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert even(after) and victim in after.values(), f"rebalanced onto the returning {victim}: {after}"
        returned = sorted(s for s, w in after.items() if w == victim)
        evs = mod2.wait_for(
            lambda evs: all(any(_ts(e["at"]) > back_at for e in health(evs, s, "state", "live")) for s in returned), 30, "moved shows live"
        )
        for s in returned:
            gaps = [e for e in health(evs, s, "monitoring_gap") if _ts(e["at"]) > back_at]
            assert len(gaps) == 1 and gaps[0]["duration_s"] < 3.0, f"{s}: one short gap when moved back: {gaps}"

        # --- another worker drains on SIGTERM (hands its shows over) ------------------------------------
        leaving = Counter(w for w in after.values() if w != victim).most_common(1)[0][0]
        handed = sorted(s for s, w in after.items() if w == leaving)
        drained_at = time.time()
        assert rig.nodes[leaving].stop() == 0, rig.nodes[leaving].tail()

        def handed_over(evs: list[dict[str, Any]]) -> bool:
            return all(any(_ts(e["at"]) > drained_at for e in health(evs, s, "state", "live")) for s in handed)

        evs = mod1.wait_for(handed_over, 60, f"{handed} live again after {leaving} drained")
        for s in handed:
            gaps = [e for e in health(evs, s, "monitoring_gap") if _ts(e["at"]) > drained_at]
            assert len(gaps) == 1 and gaps[0]["duration_s"] < 3.0, f"{s}: a short gap on a drain: {gaps}"
        cli = subprocess.run(
            [sys.executable, "-m", "streamwatch", "streams", "list", "--json", "--url", g1.url, "--token", ADMIN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        workers = {s["id"]: s["worker"] for s in json.loads(cli.stdout)}
        assert all(workers[s] not in (None, leaving) for s in handed), workers

        # --- stop one NATS node: a show added now still alerts on both gateways --------------------------
        nats3.nodes[0].stop(kill=True)  # a crash: any of its streams' and buckets' leaders re-elected elsewhere
        try:
            deadline = time.monotonic() + 60
            while True:  # the gateway may be reconnecting to another node
                answer = request(g2.url, {"type": "add_stream", "stream": {"id": f"show{SHOWS}", "source": nginx.rtmp(f"show{SHOWS}")}})
                if answer["type"] == "stream_added" or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert answer["type"] == "stream_added", answer
            for mod in (mod1, mod2):
                mod.wait_for(lambda evs: bool(alerts(evs, f"show{SHOWS}")), 90, "an alert of the show added with a NATS node down")

            # --- restart gateway 2; its moderator resumes with since ---------------------------------
            seen_before = mod2.last_id
            g2.stop()
            g2.start()
            mod2.reconnect()
            assert seen_before is not None
        finally:
            nats3.nodes[0].start()
            nats3.wait_ready()

        # a review on gateway 2 reaches gateway 1 under the same id
        target = alerts(mod2.snapshot(), "show0")[0]
        acked = request(g2.url, {"type": "ack", "id": target["id"], "action": "confirm"}, token="mod-secret")
        assert acked["type"] == "acked", acked
        mod1.wait_for(lambda evs: any(e["type"] == "review" and e["id"] == acked["id"] for e in evs), 30, "the review on gateway 1")
        mod2.wait_for(lambda evs: any(e["type"] == "review" and e["id"] == acked["id"] for e in evs), 30, "the review on gateway 2")

        # --- nothing lost, nothing doubled, on either gateway ------------------------------------------
        time.sleep(2)
        ids1 = [e["id"] for e in mod1.snapshot()]
        ids2 = [e["id"] for e in mod2.snapshot()]
        assert len(ids1) == len(set(ids1)) and len(ids2) == len(set(ids2)), "an event delivered twice"
        assert ids2 == sorted(ids2) and ids1 == sorted(ids1), "events out of order"
        a1 = {e["id"]: (e["stream"], e["rule"]) for e in alerts(mod1.snapshot())}
        a2 = {e["id"]: (e["stream"], e["rule"]) for e in alerts(mod2.snapshot())}
        assert a1 == a2, f"gateways disagree on alerts: {sorted(set(a1.items()) ^ set(a2.items()))}"
        per_show = Counter(stream for stream, rule in a1.values() if rule == "qr_code")
        assert per_show == Counter({f"show{i}": 1 for i in range(SHOWS + 1)}), f"one qr_code alert per show: {per_show}"
    except BaseException:
        print(rig.logs())
        raise
    finally:
        for m in locals().get("mod1"), locals().get("mod2"):
            if m is not None:
                m.close()
        rig.stop()
        for p in publishers:
            stop(p)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return bytes(r.read())


def _ts(iso: str) -> float:
    from streamwatch.events.codec import parse_iso

    return parse_iso(iso)


@pytest.mark.parametrize("role", ["worker", "gateway"])
def test_nats_down_at_start_is_a_clear_error_after_retrying(role: str, tmp_path: Path) -> None:
    from nats_cluster import free_port

    port = free_port()  # nothing listens there
    env = {**os.environ, "STREAMWATCH_CLUSTER__CONNECT_TIMEOUT_S": "2"}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "streamwatch", role, "--nats", f"nats://user:pw@127.0.0.1:{port}", "--data", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert f"cannot connect to NATS at nats://***@127.0.0.1:{port} within 2 s" in r.stderr or f"127.0.0.1:{port}" in r.stderr, r.stderr
    assert "pw" not in r.stderr, "credentials in the error"
    assert took >= 2.0, "gave up before the connect timeout"
    assert "Traceback" not in r.stderr, r.stderr


def test_run_refuses_a_cluster_config(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMWATCH_CLUSTER__NATS": '["nats://127.0.0.1:4222"]'}
    r = subprocess.run(
        [sys.executable, "-m", "streamwatch", "run", "--source", "rtmp://127.0.0.1/live/x", "--data", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert r.returncode != 0 and "streamwatch worker" in r.stderr and "Traceback" not in r.stderr, r.stderr
