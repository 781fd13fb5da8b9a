"""MQTT: events on streamwatch/<stream>/<type> (QoS 1) and each stream's state retained on
streamwatch/<stream>/state, against a real mosquitto started here on a free port."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from evserver import alert, health
from nats_cluster import free_port, wait_port
from paho.mqtt.enums import CallbackAPIVersion

from streamwatch.config import Settings
from streamwatch.events.bus import EventBus
from streamwatch.events.model import Event, Severity, StreamState
from streamwatch.events.store import EventStore
from streamwatch.outbound.config import MqttConfig
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.wiring import Integrations
from streamwatch.server.metrics import Metrics

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto not installed (sh tools/system-deps.sh test)")


class Broker:
    def __init__(self, d: Path) -> None:
        self.dir, self.port = d, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    yield b
    b.stop()


class Listener:
    """A subscriber (paho) recording (topic, payload, retain) for streamwatch/#."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, *_: c.subscribe("streamwatch/#", qos=1)
        self.c.on_subscribe = lambda *_: self.ready.set()
        self.c.on_message = self._message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def _message(self, c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def wait(self, n: int, timeout: float = 20.0) -> list[tuple[str, dict[str, Any], bool]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.02)
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def events(seed: int, n: int) -> list[Event]:
    rnd = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        stream = rnd.choice(["s1", "s2", "cam.3", "show-4"])
        if rnd.random() < 0.4:
            out.append(health(stream=stream, offset=float(i), state=rnd.choice([StreamState.LIVE, StreamState.STALLED])))
        else:
            out.append(alert(stream=stream, offset=float(i), severity=rnd.choice(list(Severity))))
    return out


async def publish_all(data_dir: Path, port: int, evs: list[Event], *, before: Any = None) -> list[dict[str, Any]]:
    store = EventStore(data_dir)
    bus = EventBus(store)
    await bus.start()
    out = Integrations(
        Settings(data_dir=data_dir, mqtt=MqttConfig(host="127.0.0.1", port=port, types=["alert", "health"])),
        store,
        bus,
        OutboundMetrics(Metrics().registry),
        rule_of=lambda _s, _r: None,
        streams=list,
        offsets=lambda _s: 0.0,
        server_url=lambda: "http://127.0.0.1:9",
    )
    await out.start()
    try:
        stored = [json.loads((await bus.publish(e)).text) for e in evs]
        if before is not None:
            await asyncio.to_thread(before)
        await asyncio.sleep(0.5)
        return stored
    finally:
        await out.stop()
        await bus.stop()
        store.close()


def test_events_on_stream_type_topics_and_retained_state(tmp_path: Path, broker: Broker) -> None:
    sub = Listener(broker.port)
    evs = events(4, 60)
    try:
        stored = asyncio.run(publish_all(tmp_path, broker.port, evs))
        states = [d for d in stored if d["type"] == "health"]
        got = sub.wait(len(stored) + len(states))
    finally:
        sub.close()
    on_events = [(t, d) for t, d, _ in got if not t.endswith("/state")]
    assert sorted(on_events, key=lambda x: x[1]["id"]) == [(f"streamwatch/{d['stream']}/{d['type']}", d) for d in stored]
    on_state = [d for t, d, _ in got if t.endswith("/state")]
    assert [(d["stream"], d["state"], d["id"]) for d in on_state] == [(d["stream"], d["state"], d["id"]) for d in states]
    # a subscriber arriving later gets each stream's last state, retained
    late = Listener(broker.port)
    try:
        kept = late.wait(len({d["stream"] for d in states}), timeout=5)
    finally:
        late.close()
    last = {d["stream"]: d for d in states}
    assert {t: (d["state"], d["id"]) for t, d, r in kept if r} == {f"streamwatch/{s}/state": (d["state"], d["id"]) for s, d in last.items()}


def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    b = Broker(tmp_path)
    evs = [health(stream="s1", state=StreamState.LIVE), alert(stream="s1"), health(stream="s1", state=StreamState.STALLED)]
    subs: list[Listener] = []

    def broker_up() -> None:
        time.sleep(0.5)  # events published while no broker listens
        b.start()
        subs.append(Listener(b.port))
        subs[0].wait(3, timeout=15)

    try:
        stored = asyncio.run(publish_all(tmp_path, b.port, evs, before=broker_up))
        got = subs[0].wait(4, timeout=5)
    finally:
        for s in subs:
            s.close()
        b.stop()
    assert [d["id"] for t, d, _ in got if not t.endswith("/state")] == [d["id"] for d in stored]
    assert [d["state"] for t, d, _ in got if t.endswith("/state")] == ["live", "stalled"]
