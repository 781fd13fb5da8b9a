"""Event model, codec and the SQLite store: ids, replay reads, retention, evidence paths, kill -9 durability."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from evserver import alert, health
from websockets.asyncio.client import connect

from streamwatch.events.codec import decode, encode_body, to_dict, with_id
from streamwatch.events.model import (
    AnswerEvent,
    Evidence,
    HealthKind,
    RejectedEvent,
    ReplyEvent,
    ReviewAction,
    ReviewEvent,
    StreamState,
)
from streamwatch.events.store import EventStore

HERE = Path(__file__).parent


def sample_events() -> list:
    now = time.time()
    return [
        alert(
            evidence=Evidence(kind="qr", text="https://evil.example", bbox=(1, 2, 3, 4), labels=("qr",), frame="s1/x.jpg", crop="s1/c.jpg")
        ),
        health(state=StreamState.RECONNECTING, reason="read timeout", attempt=2),
        health(kind=HealthKind.FROZEN, state=None, active=False, duration_s=8.0, offset=30.0),
        ReplyEvent(stream="s1", at=now, offset=5.5, submission="ab12", submitter="fan-app", text="好可爱！", user="小明", image="s1/t.jpg"),
        RejectedEvent(stream="s1", at=now, offset=6, submission="cd34", submitter="fan-app", reason="nsfw", message="not shown"),
        AnswerEvent(stream="s1", at=now, offset=7, question="who is on stage?", text="the idol", asker="mod-1", ref="q1"),
        ReviewEvent(stream="s1", at=now, offset=1.0, alert_id=1, action=ReviewAction.DISMISS, by="mod-1", note="sponsor"),
    ]


def test_codec_round_trips_every_event_type() -> None:
    for i, ev in enumerate(sample_events(), 1):
        text = with_id(i, encode_body(ev))
        back = decode(text)
        assert back.id == i
        assert type(back) is type(ev)
        assert abs(back.at - ev.at) < 0.001
        assert to_dict(back) == json.loads(text)
    wire = to_dict(sample_events()[0])
    assert wire["evidence"]["frame"] == "/frames/s1/x.jpg" and wire["severity"] == "high" and wire["at"].endswith("Z")


def test_ids_strictly_increase_and_are_never_reused(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    stored = store.append(sample_events())
    ids = [s.id for s in stored]
    assert ids == list(range(1, 8))
    assert [json.loads(s.text)["id"] for s in stored] == ids
    # retention removes the newest rows too (age cut at "now"), and new ids still go up
    assert store.prune(now=time.time() + 31 * 86400) == 7
    assert store.last_id() == 0
    assert store.add(alert()).id == 8
    store.close()
    reopened = EventStore(tmp_path)
    assert reopened.add(alert()).id == 9
    assert [e.id for e in reopened.events("s1")] == [8, 9]


def test_read_filters_for_replay(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.append([*sample_events(), alert(stream="s2")])
    assert [e.type for e in store.read(0, types={"alert"})] == ["alert", "alert"]
    assert [e.stream for e in store.read(0, types={"alert"}, streams={"s2"})] == ["s2"]
    assert [e.type for e in store.read(0, owner="fan-app")] == ["reply", "rejected"]
    assert [e.id for e in store.read(2, upto=5)] == [3, 4, 5]
    assert [e.id for e in store.read(0, limit=3)] == [1, 2, 3]
    got = store.get(4)
    assert isinstance(got, ReplyEvent) and got.text == "好可爱！"
    assert store.get(999) is None


def test_retention_by_size_deletes_oldest_events_and_their_images(tmp_path: Path) -> None:
    store = EventStore(tmp_path, retention_days=None, retention_mb=0.5)
    blob = os.urandom(100_000)
    for i in range(12):
        rel = store.save_image("s1", blob)
        store.add(alert(offset=float(i), evidence=Evidence(kind="frame", frame=rel)))
    first_files = [e.evidence.frame for e in store.events("s1")[:3]]  # type: ignore[attr-defined]
    removed = store.prune()
    assert removed > 0
    assert store.size_bytes() <= 0.5 * 1024 * 1024
    left = store.events("s1")
    assert left and left[-1].offset == 11.0  # the newest survive
    assert all(store.frame_path(f) is None for f in first_files)  # files of deleted events are gone
    assert all(store.frame_path(e.evidence.frame) is not None for e in left)  # type: ignore[attr-defined]


def test_the_search_index_is_pruned_first_and_by_age(tmp_path: Path) -> None:
    import numpy as np

    store = EventStore(tmp_path / "d", retention_days=None, retention_mb=None)
    ev = store.add(alert(offset=1.0))
    vec = np.ones(512, np.float32) / np.sqrt(512)
    thumbs = []
    for i in range(20):
        thumbs.append(store.save_image("s1", b"\xff\xd8" + os.urandom(20_000)))
        store.add_frame("s1", float(i), 1000.0 + i, thumbs[-1], "enc", ("stage",), vec)
    got = store.frames(stream="s1")
    assert len(got) == 20 and got[0].tags == ("stage",) and np.allclose(got[0].embedding, vec, atol=1e-3)
    # over the size cap: the oldest indexed frames (and their thumbnails) go before any event
    store.retention_mb = (store.size_bytes() - 100_000) / (1024 * 1024)
    store.prune()
    left = store.frames()
    assert 10 <= len(left) < 20 and left[0].offset > 0 and store.get(ev.id) is not None
    assert store.frame_path(thumbs[0]) is None and store.frame_path(thumbs[-1]) is not None
    # by age, like events: the age counts from when a frame was indexed, not from its picture's time
    # (these are dated 1970: a retention pass right after indexing must keep them)
    store.retention_mb, store.retention_days = None, 1.0
    store.prune()
    assert len(store.frames()) == len(left)
    store.prune(now=time.time() + 86400 + 60)
    assert store.frames() == [] and store.get(ev.id) is None
    store.close()


def test_retention_age_counts_from_storing_and_old_stores_are_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    import numpy as np

    import streamwatch.events.store as store_mod

    # a store written before `stored_at` existed: its rows age by their own time
    old = sqlite3.connect(tmp_path / "events.sqlite3")
    old.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, stream TEXT NOT NULL, owner TEXT,"
        " at REAL NOT NULL, files TEXT NOT NULL DEFAULT '', body TEXT NOT NULL);"
        "INSERT INTO events(type, stream, at, body) VALUES ('alert', 's1', 1000.0, '{}');"
    )
    old.commit()
    old.close()
    clock = [5_000_000.0]
    monkeypatch.setattr(store_mod.time, "time", lambda: clock[0])
    store = EventStore(tmp_path, retention_days=1.0, retention_mb=None)
    vec = np.ones(8, np.float32) / np.sqrt(8)
    for i in range(4):  # indexed one hour apart, each dated in the future of its indexing
        clock[0] = 5_000_000.0 + i * 3600
        store.add_frame("s1", float(i), 9_000_000.0 + i, None, "enc", (), vec)
        store.add(alert(offset=float(i)))
    assert store.prune() == 1  # only the migrated 1970 row
    assert store.prune(now=5_000_000.0 + 86400 + 1800) == 1  # stored 1 day + 30 min ago: the first of each
    assert [f.offset for f in store.frames()] == [1.0, 2.0, 3.0] and len(store.events("s1")) == 3
    store.close()


def test_evidence_paths_cannot_escape_the_frames_folder(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    rel = store.save_image("s1", b"\xff\xd8\xffjpeg")
    assert store.frame_path(rel) is not None
    for bad in ("../events.sqlite3", "s1/../../events.sqlite3", "/etc/passwd", "", "s1\\..\\x", "nope.jpg", "s1"):
        assert store.frame_path(bad) is None, bad


def test_kill_9_keeps_every_event_a_client_received(tmp_path: Path) -> None:
    """A real daemon process publishes while a client reads; kill -9; the restarted daemon replays them all."""
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port_file = tmp_path / "port"

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port_file.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, str(HERE / "daemon_proc.py"), str(tmp_path / "data"), str(port_file)], env=env)
        deadline = time.time() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None, "daemon exited"
            assert time.time() < deadline, "daemon did not start"
            time.sleep(0.05)
        return proc, int(port_file.read_text())

    proc, port = start()
    received: dict[int, str] = {}

    async def read_until(n: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws?token=moderator-secret-1") as ws:
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts"], "since": 0}))
            while len(received) < n:
                msg = json.loads(await ws.recv())
                for ev in msg["events"] if msg["type"] == "batch" else [msg]:
                    if "id" in ev:
                        received[ev["id"]] = json.dumps(ev, sort_keys=True)
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream, while events keep coming

    try:
        asyncio.run(read_until(300))
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        proc, port = start()

        async def replay() -> dict[int, str]:
            got: dict[int, str] = {}
            async with connect(f"ws://127.0.0.1:{port}/ws?token=moderator-secret-1") as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts"], "since": 0}))
                while max(got, default=0) < max(received):
                    msg = json.loads(await ws.recv())
                    for ev in msg["events"] if msg["type"] == "batch" else [msg]:
                        if "id" in ev:
                            got[ev["id"]] = json.dumps(ev, sort_keys=True)
            return got

        got = asyncio.run(replay())
    finally:
        proc.kill()
        proc.wait(10)
    missing = [i for i in received if got.get(i) != received[i]]
    assert not missing, f"{len(missing)} events a client had received were lost or changed"
    ids = sorted(got)
    assert ids == list(range(1, ids[-1] + 1))  # no gaps, no duplicates


@pytest.mark.parametrize("bad", ["{}", '{"type":"alert"}', '{"type":"nope","stream":"s"}'])
def test_decode_rejects_malformed_stored_events(bad: str) -> None:
    from streamwatch.errors import EventsError

    with pytest.raises(EventsError):
        decode(bad)
