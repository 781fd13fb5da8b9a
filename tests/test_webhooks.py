"""Webhooks: signed deliveries from the durable outbox to real HTTP receivers on 127.0.0.1 that fail
(500), are slow beyond the timeout, go down and come back, and a stand-in daemon killed with -9."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from evserver import ServerThread, alert, health
from webhook_receiver import Receiver, check_signature

from streamwatch.analysis.policy import load_policy
from streamwatch.config import Settings, default_policy
from streamwatch.errors import ConfigError
from streamwatch.events.bus import EventBus
from streamwatch.events.model import Event, Evidence, HealthKind, Severity
from streamwatch.events.store import EventStore
from streamwatch.outbound.config import WebhookConfig
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.outbox import Outbox
from streamwatch.outbound.payload import Selector, category_of, suggestion_for
from streamwatch.outbound.signing import evidence_key, evidence_link, signature, verify
from streamwatch.outbound.webhooks import backoff
from streamwatch.outbound.wiring import Integrations, check_secrets, policy_rule_lookup
from streamwatch.server.metrics import Metrics

SECRET = "whsec-test-0123456789"
TESTS = Path(__file__).parent


def hook(url: str, **kw: Any) -> WebhookConfig:
    base: dict[str, Any] = {"name": "ops", "url": url, "secret": SECRET, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return WebhookConfig(**(base | kw))


class Rig:
    def __init__(self, store: EventStore, bus: EventBus, out: Integrations, metrics: Metrics) -> None:
        self.store, self.bus, self.out, self.metrics = store, bus, out, metrics

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def health(self, kind: HealthKind = HealthKind.WEBHOOK) -> list[dict[str, Any]]:
        rows = self.store.read(0, limit=100_000, types=["health"])
        return [d for d in (json.loads(r.text) for r in rows) if d.get("kind") == kind.value]


@asynccontextmanager
async def rig(data_dir: Path, *hooks: WebhookConfig, rule_of: Callable[[str, str], Any] | None = None) -> AsyncIterator[Rig]:
    store = EventStore(data_dir)
    bus = EventBus(store)
    await bus.start()
    metrics = Metrics()
    settings = Settings(data_dir=data_dir, webhooks=list(hooks))
    out = Integrations(
        settings,
        store,
        bus,
        OutboundMetrics(metrics.registry),
        rule_of=rule_of or (lambda _s, _r: None),
        streams=lambda: ["s1"],
        offsets=lambda _s: 12.5,
        server_url=lambda: "http://127.0.0.1:9",
    )
    await out.start()
    try:
        yield Rig(store, bus, out, metrics)
    finally:
        await out.stop()
        await bus.stop()
        store.close()


async def until(cond: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def shapes(seed: int, n: int) -> list[Event]:
    """Alerts and health events of several shapes: streams, rules, severities, evidence with and without frames."""
    rnd = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        if rnd.random() < 0.2:
            out.append(health(stream=rnd.choice(["s1", "s2"]), offset=float(i)))
            continue
        frame = f"s1/{i:05d}.jpg" if rnd.random() < 0.5 else None
        ev = Evidence(kind=rnd.choice(["ocr", "qr", "vlm:qwen-vl"]), text="扫码加群", frame=frame)
        out.append(
            alert(
                stream=rnd.choice(["s1", "s2", "s3"]),
                offset=float(i),
                rule=rnd.choice(["contact_spam", "qr_code", "gambling", "exposure"]),
                severity=rnd.choice(list(Severity)),
                evidence=ev,
                confidence=round(rnd.random(), 3),
            )
        )
    return out


def wanted(cfg: WebhookConfig, d: dict[str, Any]) -> bool:
    """The filter as the config reads, written out here (not the daemon's Selector)."""
    if d["type"] not in cfg.types or (cfg.streams and d["stream"] not in cfg.streams):
        return False
    if d["type"] != "alert":
        return True
    order = ["low", "medium", "high", "critical"]
    if cfg.rules and d["rule"] not in cfg.rules:
        return False
    return cfg.min_severity is None or order.index(d["severity"]) >= order.index(cfg.min_severity.value)


# --- pure parts ------------------------------------------------------------------------------------


def test_signature_round_trip_and_tampering() -> None:
    rnd = random.Random(7)
    for _ in range(50):
        body = json.dumps({"events": [{"id": rnd.randrange(1 << 40), "message": "二维码" * rnd.randrange(5)}]}).encode()
        secret = rnd.randbytes(rnd.randrange(8, 64))
        now = int(time.time()) + rnd.randrange(-1000, 1000)
        header = signature(secret, now, body)
        assert check_signature(secret, header, body, now)  # the receiver's own code agrees
        assert verify(secret, header, body, now)
        assert not verify(secret, header, body + b" ", now)
        assert not verify(secret + b"x", header, body, now)
        assert not verify(secret, header, body, now + 301)  # a replay later than the tolerance
        assert not verify(secret, "v1=" + header.split("v1=")[1], body, now)  # no timestamp


def test_backoff_grows_to_the_cap_with_bounded_jitter() -> None:
    rnd = random.Random(3)
    for initial, cap, jitter in [(0.5, 60.0, 0.2), (1.0, 5.0, 0.0), (0.01, 0.2, 1.0)]:
        for failures in range(1, 40):
            d = backoff(failures, initial, cap, jitter, rnd.random)
            base = min(cap, initial * 2 ** (failures - 1))
            assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9
    assert backoff(1, 1.0, 60.0, 0.0) < backoff(3, 1.0, 60.0, 0.0) < backoff(30, 1.0, 60.0, 0.0) == 60.0


def test_selector_against_a_written_out_filter() -> None:
    events = [json.loads(json.dumps({"type": e.type, "stream": e.stream} | _fields(e))) for e in shapes(11, 300)]
    configs = [
        hook("http://x/", types=["alert"]),
        hook("http://x/", types=["alert", "health"], streams=["s2"]),
        hook("http://x/", min_severity="high"),
        hook("http://x/", rules=["qr_code", "exposure"], min_severity="medium", streams=["s1", "s3"]),
    ]
    for cfg in configs:
        sel = Selector.of(cfg)
        picked = [d for d in events if sel.wants(d)]
        assert picked == [d for d in events if wanted(cfg, d)]
        assert 0 < len(picked) < len(events)


def _fields(e: Event) -> dict[str, Any]:
    return {
        k: (v.value if hasattr(v, "value") else v)
        for k, v in (("rule", getattr(e, "rule", None)), ("severity", getattr(e, "severity", None)))
    }


def test_every_shipped_rule_has_a_category_and_suggestion() -> None:
    policy = load_policy(default_policy())
    for r in policy.rules:
        assert category_of(r)
        s = suggestion_for(r.severity.value, r.suggestion)
        assert s in ("block", "review", "pass")
        assert s == ("block" if r.severity in (Severity.CRITICAL, Severity.HIGH) else "review") or r.suggestion
    assert suggestion_for("low", "pass") == "pass"
    assert suggestion_for("low", None, action="cut") == "block"


def test_config_needs_one_secret_and_known_types() -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookConfig(name="a", url="http://x/")
    with pytest.raises(ValueError, match="variable name"):
        WebhookConfig(name="a", url="http://x/", secret="env:not a name")
    env = WebhookConfig(name="a", url="http://x/", secret="env:HOOK_SECRET_T")
    assert env.secret_env == "HOOK_SECRET_T" and WebhookConfig(name="a", url="http://x/", secret=SECRET).secret_env is None
    with pytest.raises(ConfigError, match="HOOK_SECRET_T"):
        check_secrets(Settings(webhooks=[env]))
    with pytest.raises(ValueError, match="unknown event types"):
        WebhookConfig(name="a", url="http://x/", secret=SECRET, types=["alerts"])
    assert SECRET not in repr(WebhookConfig(name="a", url="http://x/", secret=SECRET))


# --- deliveries ----------------------------------------------------------------------------------


def test_signed_filtered_deliveries_oldest_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rx = Receiver().start()
    cfg = hook(rx.url, types=["alert", "health"], min_severity="medium", streams=["s1", "s2"], batch_max=7)
    policy = load_policy(default_policy())

    async def go() -> None:
        engine = types.SimpleNamespace(policy=policy)
        async with rig(tmp_path, cfg, rule_of=policy_rule_lookup(lambda _s: engine, lambda: engine)) as r:
            stored = [await r.bus.publish(e) for e in shapes(5, 120)]
            expect = [s.id for s in stored if wanted(cfg, json.loads(s.text))]
            await asyncio.to_thread(rx.wait_ids, len(expect))
            got = rx.ids()
            assert got == expect  # each once, in id order, nothing unwanted
            await until(lambda: r.metric("streamwatch_webhook_backlog", endpoint="ops") == 0)
            assert r.metric("streamwatch_webhook_sent_total", endpoint="ops") == len(expect)
            assert r.metric("streamwatch_webhook_delay_seconds_count", endpoint="ops") == len(expect)

    try:
        asyncio.run(go())
    finally:
        rx.stop()
    for d in rx.deliveries:
        assert check_signature(SECRET.encode(), d.headers["X-Streamwatch-Signature"], d.body, time.time())
        assert d.headers["X-Streamwatch-Event-Ids"] == ",".join(str(e["id"]) for e in d.events)
        assert 1 <= len(d.events) <= 7
        for e in d.events:
            assert {"stream", "id", "type", "severity", "suggestion", "score", "offset", "at", "message", "model"} <= set(e)
            assert e["event"]["id"] == e["id"]
            if e["type"] == "alert":
                assert e["suggestion"] == ("block" if e["severity"] in ("critical", "high") else "review")
                assert (
                    e["category"] == {"contact_spam": "contact", "qr_code": "qr", "gambling": "gambling", "exposure": "nudity"}[e["rule"]]
                )
                assert e["model"] in ("ocr", "qr", "qwen-vl")
                assert (e["evidence_url"] is not None) == ("frame" in e["event"]["evidence"])
    assert SECRET not in caplog.text


def test_receiver_failing_then_recovering_raises_and_clears_health(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rx = Receiver(mode="fail").start()
    cfg = hook(rx.url, unhealthy_after_s=0.4)

    async def go() -> None:
        async with rig(tmp_path, cfg) as r:
            ids = [(await r.bus.publish(alert(offset=i))).id for i in range(25)]
            await until(lambda: len(r.health()) == 1)
            first = r.health()[0]
            assert first["active"] is True and "ops" in first["reason"] and first["offset"] == 12.5
            assert rx.ids() == [] and rx.attempts >= 2
            assert r.metric("streamwatch_webhook_backlog", endpoint="ops") == 25
            rx.mode = "ok"
            await asyncio.to_thread(rx.wait_ids, 25)
            await until(lambda: len(r.health()) == 2)
            back = r.health()[1]
            assert back["active"] is False and back["duration_s"] >= 0.4
            got = rx.ids()
            assert got == ids  # oldest first, each once: a 500 is never taken as received
            assert r.metric("streamwatch_webhook_failed_total", endpoint="ops") >= 2

    try:
        asyncio.run(go())
    finally:
        rx.stop()
    assert SECRET not in caplog.text


def test_slow_receiver_times_out_and_is_retried_with_the_same_ids(tmp_path: Path) -> None:
    rx = Receiver(mode="slow", slow_s=1.0).start()
    cfg = hook(rx.url, timeout_s=0.3, batch_max=5)

    async def go() -> None:
        async with rig(tmp_path, cfg) as r:
            ids = [(await r.bus.publish(alert(offset=i))).id for i in range(12)]
            await until(lambda: r.metric("streamwatch_webhook_failed_total", endpoint="ops") >= 2)
            rx.mode = "ok"
            got = await asyncio.to_thread(rx.wait_ids, 12)
            assert set(got) == set(ids)
            assert sorted(set(got)) == ids

    try:
        asyncio.run(go())
    finally:
        rx.stop()


def test_receiver_down_then_restarted_on_the_same_port(tmp_path: Path) -> None:
    rx = Receiver().start()
    port = rx.port
    rx.stop()
    cfg = hook(rx.url)

    async def go() -> None:
        async with rig(tmp_path, cfg) as r:
            ids = [(await r.bus.publish(alert(offset=i))).id for i in range(15)]
            await until(lambda: r.metric("streamwatch_webhook_failed_total", endpoint="ops") >= 2)
            rx.port = port
            rx.start()
            got = await asyncio.to_thread(rx.wait_ids, 15)
            assert got == ids

    try:
        asyncio.run(go())
    finally:
        rx.stop()


def test_old_undeliverable_events_go_to_the_dead_letters(tmp_path: Path) -> None:
    rx = Receiver(mode="fail").start()
    cfg = hook(rx.url, dead_letter_after_s=5.0)

    async def go() -> tuple[list[int], list[int]]:
        async with rig(tmp_path, cfg) as r:
            old = [dataclasses.replace(alert(offset=i), at=time.time() - 60 + i) for i in range(4)]
            dead = [(await r.bus.publish(e)).id for e in old]
            fresh = [(await r.bus.publish(alert(offset=10 + i))).id for i in range(3)]
            await until(lambda: r.metric("streamwatch_webhook_dead_letters_total", endpoint="ops") == 4)
            assert rx.ids() == []
            rx.mode = "ok"
            got = await asyncio.to_thread(rx.wait_ids, 3)
            assert got == fresh
            return dead, fresh

    try:
        dead, _ = asyncio.run(go())
    finally:
        rx.stop()
    letters = Outbox(tmp_path).dead_letters()
    assert [d.event_id for d in letters] == dead
    assert all("HTTP 500" in d.error and json.loads(d.body)["id"] == d.event_id for d in letters)


# --- evidence links ------------------------------------------------------------------------------


def test_evidence_link_works_without_a_token_until_it_expires(tmp_path: Path) -> None:
    with ServerThread(tmp_path) as st:
        (tmp_path / "frames" / "s1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "frames" / "s1" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
        key = evidence_key(tmp_path)
        assert evidence_key(tmp_path) == key and (tmp_path / "evidence.key").stat().st_mode & 0o077 == 0
        base = f"http://127.0.0.1:{st.port}"

        def get(path: str) -> int:
            try:
                with urllib.request.urlopen(base + path, timeout=10) as r:
                    assert r.read() == b"\xff\xd8jpeg"
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return e.code

        now = int(time.time())
        good = evidence_link(key, "s1/a.jpg", now + 60)
        assert get(good) == 200
        assert get("/frames/s1/a.jpg") == 401  # the token route still wants a token
        assert get(evidence_link(key, "s1/a.jpg", now - 1)) == 403  # expired
        assert get(good.replace("a.jpg", "b.jpg")) == 403  # a signature is for one file
        assert get(good[:-4] + ("0000" if not good.endswith("0000") else "1111")) == 403
        assert get(evidence_link(b"another key", "s1/a.jpg", now + 60)) == 403
        assert get(evidence_link(key, "../evidence.key", now + 60)) == 404


# --- kill -9 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["fail", "down"])
def test_kill_9_with_undelivered_events_loses_none(tmp_path: Path, outage: str) -> None:
    rx = Receiver(mode="fail" if outage == "fail" else "ok").start()
    port = rx.port
    if outage == "down":
        rx.stop()
    config = tmp_path / "streamwatch.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[[webhooks]]\nname = "ops"\nurl = "{rx.url}"\nsecret = "env:HOOK_SECRET"\n'
        "backoff_initial_s = 0.05\nbackoff_max_s = 0.3\nbatch_max = 8\n"
    )
    env = os.environ | {"HOOK_SECRET": SECRET, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

    def start(count: int) -> tuple[subprocess.Popen[bytes], list[int]]:
        ready = tmp_path / f"ready{count}"
        ready.unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, str(TESTS / "outbound_proc.py"), str(config), str(count), str(ready)], env=env)
        deadline = time.monotonic() + 60
        while not ready.exists() or not ready.read_text():
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        return p, [int(x) for x in ready.read_text().split()]

    p, ids = start(60)
    try:
        time.sleep(1.0)  # retries going on
        assert rx.ids() == []
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        rx.port, rx.mode = port, "ok"
        if outage == "down":
            rx.start()
        p, more = start(5)
        got = rx.wait_ids(65, timeout=60)
        assert set(got) == set(ids + more)  # none lost; duplicates allowed, with the same ids
    finally:
        p.kill()
        p.wait(10)
        rx.stop()
    for d in rx.deliveries:
        assert check_signature(SECRET.encode(), d.headers["X-Streamwatch-Signature"], d.body, time.time())


# --- the daemon ----------------------------------------------------------------------------------


def test_daemon_delivers_a_real_alert_with_a_working_evidence_link(tmp_path: Path) -> None:
    """``Daemon`` wires the senders: the concert clip's QR code becomes a signed delivery whose
    evidence link the daemon's own HTTP server serves without a token."""
    sys.path.insert(0, str(TESTS.parent / "tools"))
    from make_concert_clip import write_concert_clip

    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    clip = tmp_path / "concert.mp4"
    labels = write_concert_clip(clip)
    planted = [p for p in labels["planted"] if p["rule"] == "qr_code"]
    assert planted
    rx = Receiver().start()
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            # paced in real time: the daemon still serves when the link is fetched (a file read to its end ends the run)
            "streams": [{"id": "show", "source": str(clip)}],
            "ingest": {"realtime": True},
            "analysis": {"analyzers": ["qr"]},
            "server": {"port": 0},
            "webhooks": [{"name": "desk", "url": rx.url, "secret": SECRET, "types": ["alert"], "rules": ["qr_code"]}],
        },
    )
    daemon = Daemon(settings)
    fetched: dict[str, Any] = {}

    async def scenario() -> None:
        await daemon.ready.wait()
        await asyncio.to_thread(rx.wait_ids, len(planted), 120)
        assert daemon.server is not None
        url = rx.deliveries[0].events[0]["evidence_url"]
        assert url.startswith(daemon.server.url + "/evidence/")

        def get() -> tuple[int, str, bytes]:
            with urllib.request.urlopen(url, timeout=10) as r:
                return int(r.status), r.headers["Content-Type"], r.read()

        fetched["answer"] = await asyncio.to_thread(get)
        daemon.stop()

    async def both() -> None:
        await asyncio.gather(daemon.run(), scenario())

    try:
        asyncio.run(both())
    finally:
        rx.stop()
    events = [e for d in rx.deliveries for e in d.events]
    assert len({e["id"] for e in events}) == len(planted)
    e = events[0]
    assert (e["rule"], e["category"], e["severity"], e["suggestion"], e["model"]) == ("qr_code", "qr", "high", "block", "qr")
    assert abs(e["offset"] - planted[0]["offset"]) <= 1.01 and e["stream"] == "show" and "http" in e["message"]
    status, ctype, data = fetched["answer"]
    assert status == 200 and ctype == "image/jpeg" and data[:2] == b"\xff\xd8"
