"""A full disk must not end the watch: every writer of the store on a really full (small tmpfs) data
folder, the bus that delivers live what it cannot store and stores it once space is back, alerts
without their evidence image, the free-space floor of retention, the ``storage`` rule and report period.

The data folders are tmpfs mounts of a few MiB, filled for real with a file until writes fail with
ENOSPC (tests run as root here and in CI; without the right to mount they are skipped, saying why).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from evserver import alert, health

from streamwatch.analysis.model import AlertDraft, FrameAnalysis
from streamwatch.analysis.policy import Policy, PolicySpec
from streamwatch.analysis.rules import RuleEngine
from streamwatch.errors import EventsError, StorageError
from streamwatch.events.alerts import build_alerts, build_scene
from streamwatch.events.bus import EventBus
from streamwatch.events.model import AlertEvent, Event, Evidence, HealthEvent, HealthKind, Severity
from streamwatch.events.storage import FULL_ERRNOS, StorageHealth, floor_deficit, storage_error
from streamwatch.events.store import EventStore
from streamwatch.report.build import _periods

MiB = 1024 * 1024


class SmallDisk:
    """A tmpfs of ``size_mb`` mounted on a folder; :meth:`fill` takes every free byte, :meth:`free` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write a file until the disk is full (or ``leave`` bytes are left): the next write fails with ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (MiB, 4096, 1):
                while self.free_bytes() - chunk >= leave:
                    try:
                        os.write(fd, bytes(chunk))
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                        break
        finally:
            os.close(fd)
        assert self.free_bytes() <= leave + MiB

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], SmallDisk]]:
    mounted: list[Path] = []

    def mount(size_mb: int) -> SmallDisk:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a {size_mb} MiB tmpfs to fill for real (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
        mounted.append(d)
        return SmallDisk(d)

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


# --- which failures are storage failures (pure) ------------------------------------------------------


@pytest.mark.parametrize("code", [*sorted(FULL_ERRNOS), errno.ENOENT, errno.EACCES, errno.EISDIR, errno.EIO])
def test_only_no_room_or_no_writes_errors_are_storage_errors(code: int) -> None:
    err = storage_error(OSError(code, os.strerror(code)), "files", "write evidence image")
    if code in FULL_ERRNOS:
        assert isinstance(err, StorageError) and isinstance(err, EventsError) and isinstance(err, OSError)
        assert err.what == "files" and str(err).startswith("cannot write evidence image: ") and os.strerror(code) in str(err)
    else:  # a bad path or a permission: a bug or a config error, said as such
        assert err is None
    assert storage_error(ValueError("disk is full"), "files", "x") is None  # not an OS or SQLite error


def test_storage_health_clears_per_writer_and_settles() -> None:
    h = StorageHealth(settle_s=3.0)
    assert h.problem(0.0) is None and not h.failing()
    h.failed(StorageError("cannot store events: database or disk is full", "database"), 10.0)
    h.failed(StorageError("cannot write evidence image: [Errno 28]", "files"), 11.0)
    h.ok("database")
    assert h.failing("files") and not h.failing("database") and "Errno 28" in (h.problem(100.0) or "")
    h.ok("files")
    assert h.problem(12.0) is not None  # a write got through, but the last failure is recent: no flapping
    assert h.problem(14.1) is None and h.failures == 2


@pytest.mark.parametrize("seed", range(5))
def test_the_floor_deficit_counts_pages_sqlite_reuses_as_room(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        free, reusable, floor = (int(x) for x in rng.integers(0, 10_000, 3))
        got = floor_deficit(free, reusable, floor)
        assert got >= 0 and (got == 0) == (free + reusable >= floor)
        assert got == 0 or free + reusable + got == floor  # deleting exactly that much reaches the floor
        assert floor_deficit(free + 1, reusable, floor) <= got and floor_deficit(free, reusable + 1, floor) <= got


# --- every writer of the store on a really full disk ----------------------------------------------


def _writers(store: EventStore) -> dict[str, Callable[[], Any]]:
    emb = np.ones(512, np.float32) / np.sqrt(512)
    big = alert(message="x" * 20_000)
    ends = iter(range(100))  # sessions open from the start: each end is a write
    return {
        "append": lambda: store.append([big, health()]),
        "append_ids": lambda: store.append_ids([(store.high_water() + 1000 + i, big) for i in range(3)]),
        "add_frame": lambda: [store.add_frame("s1", float(i), time.time(), None, "m", ("a",), emb) for i in range(40)],
        "heartbeat": lambda: [store.heartbeat(f"s{i}", 1.0, time.time(), float(i)) for i in range(40)],
        "end_session": lambda: store.end_session(f"open{next(ends)}", time.time()),
        "save_image": lambda: store.save_image("s1", os.urandom(60_000)),
    }


@pytest.mark.parametrize("writer", ["append", "append_ids", "add_frame", "heartbeat", "end_session", "save_image"])
def test_every_store_writer_on_a_full_disk_raises_storage_error_then_works_again(
    small_disk: Callable[[int], SmallDisk], writer: str
) -> None:
    disk = small_disk(8)
    store = EventStore(disk.path / "data", retention_days=None, retention_mb=None)
    try:
        call = _writers(store)[writer]
        for i in range(100):
            store.heartbeat(f"open{i}", 1.0, time.time(), 0.0)
        call()  # works while there is room
        disk.fill()
        with pytest.raises(StorageError) as info:
            for _ in range(20):  # a write may still fit in a page already allocated: the next ones do not
                call()
        err = info.value
        assert err.what == ("files" if writer == "save_image" else "database")
        assert "No space left" in str(err) or "disk is full" in str(err)
        assert store.health.failing(err.what) and store.health.problem(time.monotonic()) == str(err)
        assert not list(disk.path.rglob("*.part"))  # a half-written image is not left to take room
        assert store.read(0, limit=5) is not None  # reads go on
        disk.free()
        call()
        assert not store.health.failing()
        assert store.health.problem(time.monotonic() + store.health.settle_s) is None
    finally:
        store.close()


def test_a_probe_write_tells_when_files_can_be_written_again(small_disk: Callable[[int], SmallDisk]) -> None:
    disk = small_disk(4)
    store = EventStore(disk.path, retention_days=None, retention_mb=None)
    try:
        disk.fill()
        assert not store.probe() and store.health.failing("files")
        assert [p.name for p in disk.path.iterdir() if p.name.startswith(".probe")] == []
        disk.free()
        assert store.probe() and not store.health.failing("files")
    finally:
        store.close()


# --- alerts and scenes without their evidence image -------------------------------------------------


@pytest.mark.parametrize("shape", [(360, 640), (1080, 1920), (200, 200)])
def test_alerts_go_out_without_their_image_marked_on_a_full_disk(small_disk: Callable[[int], SmallDisk], shape: tuple[int, int]) -> None:
    disk = small_disk(4)
    store = EventStore(disk.path, retention_days=None, retention_mb=None)
    try:
        rgb = np.random.default_rng(1).integers(0, 255, (*shape, 3), np.uint8)
        fa = FrameAnalysis("s1", 12.0, time.time(), time.time(), (), shape[1], shape[0])
        drafts = [
            AlertDraft(
                "qr_code", Severity.HIGH, "QR code", 0.9, "qr", "https://x.example", text="https://x.example", bbox=(10, 10, 90, 90)
            ),
            AlertDraft("stream_black", Severity.MEDIUM, "black", 1.0, "health", "black"),
        ]
        ok = build_alerts(drafts, fa, rgb, store)
        assert ok[0].evidence.frame and store.frame_path(ok[0].evidence.frame) and ok[0].evidence.unsaved is None
        disk.fill()
        full = build_alerts(drafts, fa, rgb, store)
        assert [a.rule for a in full] == ["qr_code", "stream_black"]
        assert full[0].evidence.frame is None and "evidence not saved" in (full[0].evidence.unsaved or "")
        assert full[0].evidence.bbox is not None and full[0].evidence.text == "https://x.example"
        assert full[1].evidence.unsaved is None  # a health alert never had a picture
        assert build_scene(fa, rgb, ("setting=stage",), "m", store).frame is None
        disk.free()
        assert build_alerts(drafts, fa, rgb, store)[0].evidence.frame
    finally:
        store.close()


# --- the bus: live delivery without storage, held events stored when space is back -----------------


def _events(n: int) -> list[Event]:
    out: list[Event] = []
    for i in range(n):
        stream = ("a", "b", "c")[i % 3]
        if i % 4 == 3:
            out.append(HealthEvent(stream=stream, at=time.time(), offset=float(i), kind=HealthKind.STORAGE, active=True, reason="full"))
        else:
            out.append(alert(stream=stream, offset=float(i), message=f"m{i} " + "z" * (i * 37 % 3000)))
    return out


async def _stored(bus: EventBus, within_s: float = 10.0) -> None:
    """Until the bus holds nothing (it stored what it held) or ``within_s`` passed."""
    for _ in range(int(within_s * 10)):
        if not bus.held:
            return
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("n", [1, 7, 120])
def test_the_bus_delivers_live_what_it_cannot_store_and_stores_it_when_space_is_back(
    small_disk: Callable[[int], SmallDisk], n: int
) -> None:
    disk = small_disk(8)
    store = EventStore(disk.path, retention_days=None, retention_mb=None)

    async def scenario() -> None:
        bus = EventBus(store, checkpoint_s=0.2)
        await bus.start()
        sub = bus.subscribe(["alert", "health"], None, None, 10_000)
        try:
            first = await bus.publish(alert(offset=0.0))
            disk.fill()
            evs = _events(n)
            got = [await bus.publish(e) for e in evs]
            assert [g.id for g in got] == [0] * n  # not stored (yet)
            live = [json.loads(t) for c in sub.take(100_000) for t in c.texts]
            assert [d.get("id") for d in live] == [first.id] + [None] * n
            assert all(d["unsaved"] is True for d in live[1:]) and [d["offset"] for d in live[1:]] == [e.offset for e in evs]
            assert len(bus.held) == n and bus.last_id == first.id
            disk.free()
            await _stored(bus)  # retried without anything new being published
            assert not bus.held
            stored = store.read(first.id, limit=10_000)
            assert [s.event().offset for s in stored] == [e.offset for e in evs]  # in order, once each
            ids = [s.id for s in stored]
            assert ids == sorted(set(ids)) and bus.last_id == ids[-1]
            assert not sub.take(100_000)  # delivered once, live; not again when stored
            after = await bus.publish(alert(offset=999.0))
            assert after.id > ids[-1] and [json.loads(t)["id"] for c in sub.take(10) for t in c.texts] == [after.id]
        finally:
            await bus.stop()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_held_events_are_bounded_the_oldest_dropped(small_disk: Callable[[int], SmallDisk]) -> None:
    disk = small_disk(4)
    store = EventStore(disk.path, retention_days=None, retention_mb=None)

    async def scenario() -> None:
        bus = EventBus(store, checkpoint_s=0.2, hold_max=10)
        await bus.start()
        try:
            disk.fill()
            for e in _events(25):
                await bus.publish(e)
            assert len(bus.held) == 10 and bus.dropped == 15
            disk.free()
            await _stored(bus)
            assert [s.event().offset for s in store.read(0)] == [float(i) for i in range(15, 25)]
        finally:
            await bus.stop()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


# --- retention: the free-space floor ----------------------------------------------------------------


@pytest.mark.parametrize(("floor_mb", "outsider_mb"), [(2, 0), (6, 0), (4, 6), (3, 11)])
def test_retention_keeps_free_space_above_the_floor_oldest_first(
    small_disk: Callable[[int], SmallDisk], floor_mb: int, outsider_mb: int
) -> None:
    disk = small_disk(16)
    store = EventStore(disk.path / "data", retention_days=None, retention_mb=None, min_free_mb=floor_mb)
    try:
        rng = np.random.default_rng(floor_mb)
        emb = np.ones(512, np.float32)
        images: list[str] = []
        if outsider_mb:  # another program takes space too: the floor is still kept, with our oldest data
            (disk.path / "other.bin").write_bytes(bytes(outsider_mb * MiB))
        while disk.free_bytes() > floor_mb * MiB * 0.5:  # well under the floor at the end
            rel = store.save_image("s1", rng.integers(0, 255, 150_000, np.uint8).tobytes())
            images.append(rel)
            store.append([alert(offset=float(len(images)), evidence=Evidence(kind="qr", frame=rel))])
            store.add_frame("s1", float(len(images)), time.time(), store.save_image("s1", bytes(20_000)), "m", (), emb)
        need = store.space_needed()
        assert need > 0
        store.prune(by_age=False)
        free, reusable = store.free_bytes()
        assert free + reusable >= floor_mb * MiB
        assert store.space_needed() == 0
        kept = [e.offset for e in store.events("s1")]
        assert kept and kept == [float(i) for i in range(len(images) - len(kept) + 1, len(images) + 1)]  # the newest stay
        gone = images[: len(images) - len(kept)]
        assert all(store.frame_path(rel) is None for rel in gone) and all(store.frame_path(rel) for rel in images[len(gone) :])
        index = [f.offset for f in store.frames()]
        assert len(index) < len(images) and index == [float(i) for i in range(len(images) - len(index) + 1, len(images) + 1)]
        if gone:  # alerts and their evidence go only once the search index is gone
            assert index == []
        if need > len(images) * 22_000 * 1.5:  # more than all the thumbnails together: evidence had to go
            assert gone
        assert store.prune(by_age=False) == 0  # nothing more while above the floor: no runaway deletion
    finally:
        store.close()


def test_no_floor_no_pruning_for_space(small_disk: Callable[[int], SmallDisk]) -> None:
    disk = small_disk(4)
    store = EventStore(disk.path, retention_days=None, retention_mb=None, min_free_mb=None)
    try:
        store.append([alert(offset=float(i)) for i in range(50)])
        disk.fill()
        assert store.space_needed() == 0 and store.prune() == 0 and len(store.events()) == 50
    finally:
        store.close()


# --- the storage rule and the report period (pure) --------------------------------------------------


def _storage(active: bool, at: float, offset: float, **kw: Any) -> HealthEvent:
    return HealthEvent(stream="s1", at=at, offset=offset, kind=HealthKind.STORAGE, active=active, **kw)


def test_a_storage_period_alerts_once_and_is_a_report_period() -> None:
    spec = {
        "version": 1,
        "rule": [{"id": "storage_failing", "severity": "high", "message": "disk since {started}", "when": {"health": "storage"}}],
    }
    engine = RuleEngine(Policy(PolicySpec.model_validate(spec), {}))
    start = _storage(True, 1000.0, 62.0, reason="cannot store events: database or disk is full")
    engine.on_health(start)
    first = engine.tick("s1", 1000.5, None)
    assert [(o, d.rule, d.message) for o, d in first] == [(62.0, "storage_failing", "disk since 00:01:02")]
    assert engine.tick("s1", 1030.0, 70.0) == []  # once per period
    end = _storage(False, 1031.0, 93.0, duration_s=31.0, reason="writes work again")
    engine.on_health(end)
    engine.on_health(_storage(True, 1100.0, 160.0, reason="again"))
    assert [o for o, _ in engine.tick("s1", 1100.1, 160.0)] == [160.0]  # a new period alerts again
    assert start.describe().startswith("storage failing: cannot store") and end.describe() == "storage ok after 31.0s: writes work again"
    periods = _periods([start, end], until=2000.0)
    assert [(p.kind, p.start, p.duration, p.open) for p in periods] == [("storage_failing", 62.0, 31.0, False)]
    assert "disk is full" in periods[0].detail
    still = _periods([start], until=1010.0)
    assert [(p.kind, p.duration, p.open) for p in still] == [("storage_failing", 10.0, True)]


def test_sqlite_full_is_recognised_by_code_and_by_message(small_disk: Callable[[int], SmallDisk]) -> None:
    disk = small_disk(2)
    db = sqlite3.connect(disk.path / f"{uuid.uuid4().hex}.db", isolation_level=None)
    try:
        db.execute("CREATE TABLE t(x)")
        disk.fill()
        with pytest.raises(sqlite3.Error) as info:
            for _ in range(50):
                db.execute("INSERT INTO t VALUES (?)", (os.urandom(50_000),))
        err = storage_error(info.value, "database", "store events")
        assert err is not None and err.what == "database"
    finally:
        db.close()


# --- end to end: `streamwatch run` on a live RTMP show whose data disk fills mid-show --------------

POLICY = """version = 1

[[rule]]
id = "qr_code"
severity = "high"
message = "QR code on screen: {payload}"
cooldown_s = 1
[rule.when]
qr = "any"

[[rule]]
id = "storage_failing"
severity = "high"
message = "Data disk takes no writes since {started}"
[rule.when]
health = "storage"
"""

CONFIG = """[[streams]]
id = "show"
source = "{source}"

[ingest]
read_timeout_s = 5
backoff_initial_s = 0.3
backoff_max_s = 1.0

[sampling]
every_s = 0.5
dedupe_radius = 0

[analysis]
analyzers = ["qr"]
threads = 1
cache_radius = 0
policy = "{policy}"

[store]
min_free_mb = 0
thumbnail_every_s = 2
"""


class Client:
    """A real WebSocket client of the daemon: every event it gets, with or without an id, in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list[dict[str, Any]] = []

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        async with connect(f"ws://127.0.0.1:{self.port}/ws?token=mod-secret-1") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts", "health"], "since": 0}))
            try:
                while True:
                    msg = json.loads(await ws.recv())
                    self.events.extend(e for e in (msg["events"] if msg["type"] == "batch" else [msg]) if e["type"] in ("alert", "health"))
            except ConnectionClosed:
                return

    def since(self, i: int, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for e in self.events[i:] if pred(e)]

    async def until(
        self, i: int, pred: Callable[[dict[str, Any]], bool], n: int, within_s: float, what: str, alive: Callable[[], None]
    ) -> int:
        """Wait for ``n`` events matching ``pred`` after index ``i``; returns the index after the n-th."""
        for _ in range(int(within_s * 10)):
            alive()
            hits = [k for k in range(i, len(self.events)) if pred(self.events[k])]
            if len(hits) >= n:
                return hits[n - 1] + 1
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {n} × {what}; got {[_brief(e) for e in self.events[i:]][-15:]}")


def _brief(e: dict[str, Any]) -> str:
    tag = f"#{e['id']}" if "id" in e else "unsaved"
    return f"{tag} {e['type']} {e.get('rule') or e.get('kind')} {e.get('state') or ''}{e.get('active', '')}"


def _qr(e: dict[str, Any]) -> bool:
    return e["type"] == "alert" and e["rule"] == "qr_code"


def _storage_said(active: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "health" and e["kind"] == "storage" and e.get("active") is active


@pytest.mark.media_server
def test_a_full_disk_mid_show_is_said_live_and_the_watch_goes_on(
    nginx: Any, small_disk: Callable[[int], SmallDisk], tmp_path: Path
) -> None:
    import re
    import signal
    import sys

    from conftest import publish, stop
    from make_overlay_suite import Overlay, SuiteClip, write_clip

    from streamwatch.report import build_report

    disk = small_disk(64)
    data = disk.path / "data"
    clip = tmp_path / "qr.mp4"
    payload = "https://spam.example.net/join?room=7"
    shown = ((0.5, 2.5), (4.0, 6.0), (7.5, 9.5))  # the code comes and goes: a new alert each time (cooldown 1 s)
    overlays = tuple(Overlay(a, b, "qr", payload, 120, "top-right", "qr_code") for a, b in shown)
    write_clip(SuiteClip("diskshow", "coffee", 640, 360, 10, 12, 12.0, overlays), clip)
    (tmp_path / "policy.toml").write_text(POLICY)
    cfg = tmp_path / "sw.toml"
    cfg.write_text(CONFIG.format(source=nginx.rtmp("diskshow"), policy=tmp_path / "policy.toml"))
    pub = publish(clip, nginx.rtmp("diskshow"), loop=True)
    log = tmp_path / "daemon.log"
    cmd = [
        sys.executable,
        "-m",
        "streamwatch",
        "run",
        "-c",
        str(cfg),
        "--port",
        "0",
        "--token",
        "moderator:mod-secret-1",
        "--data",
        str(data),
    ]
    with log.open("w") as log_file:  # a file on the big disk, not a pipe
        daemon = subprocess.Popen(cmd, stderr=log_file, env={**os.environ, "STREAMWATCH_LOG_LEVEL": "INFO"})

    def alive() -> None:
        assert daemon.poll() is None, f"the daemon exited ({daemon.returncode}): {log.read_text()[-3000:]}"

    try:
        port = None
        for _ in range(900):
            alive()
            m = re.search(r"serving http://127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.1)
        assert port, "the daemon did not say where it serves"
        client = Client(port)

        async def scenario() -> None:
            task = asyncio.create_task(client.run())
            i = await client.until(0, lambda e: _qr(e) and "id" in e, 2, 120, "stored QR alerts", alive)
            await asyncio.to_thread(disk.fill)  # the data disk is full: nothing more can be written there
            filled = len(client.events)
            said = await client.until(filled, _storage_said(True), 1, 30, "a storage health event", alive)
            # (the storage event itself may fit in a page the database still has: stored, or delivered unsaved)
            await client.until(filled, lambda e: e["type"] == "alert" and e["rule"] == "storage_failing", 1, 30, "a storage alert", alive)
            await client.until(said, lambda e: _qr(e) and e.get("unsaved") is True, 3, 60, "QR alerts while full", alive)
            await asyncio.sleep(4)  # heartbeats, thumbnails, checkpoints fail too meanwhile: nothing ends the watch
            alive()
            for a in client.since(said, _qr):  # (a commit may still fit in a page the database has: not all are unsaved)
                ev = a["evidence"]
                assert "frame" not in ev and "evidence not saved" in ev["unsaved"] and ev["text"] == payload, a
            assert all(("id" in e) != (e.get("unsaved") is True) for e in client.events)
            restarts = [e for e in client.events[i:] if e.get("kind") == "state" and e.get("state") != "live"]
            assert not restarts, "the stream was not restarted"
            assert len(client.since(filled, _storage_said(True))) == 1  # said once, however many writes fail
            await asyncio.to_thread(disk.free)
            freed = len(client.events)
            ok = await client.until(freed, _storage_said(False), 1, 30, "storage ok", alive)
            await client.until(ok, lambda e: _qr(e) and "id" in e, 2, 60, "stored QR alerts after space came back", alive)
            daemon.send_signal(signal.SIGTERM)  # asked to stop: the only way it ends
            await asyncio.wait_for(task, 30)

        asyncio.run(scenario())
        assert daemon.wait(30) == 0
    finally:
        stop(pub)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    back = next(e for e in client.events if _storage_said(False)(e))
    assert "id" in back and back["reason"] == "writes work again" and back["duration_s"] > 4
    after = [e for e in client.events if _qr(e) and "id" in e and e["id"] > back["id"]]
    assert after and all((data / "frames" / e["evidence"]["frame"].removeprefix("/frames/")).is_file() for e in after)
    store = EventStore(data, retention_days=None, retention_mb=None)
    try:
        events = store.events("show")
    finally:
        store.close()
    unsaved_live = [e for e in client.events if e.get("unsaved")]
    stored_storage = [e for e in events if isinstance(e, HealthEvent) and e.kind is HealthKind.STORAGE]
    assert [e.active for e in stored_storage] == [True, False]  # held while full, stored once space was back
    stored_alerts = {round(e.offset, 3) for e in events if isinstance(e, AlertEvent)}
    assert {round(e["offset"], 3) for e in unsaved_live if e["type"] == "alert"} <= stored_alerts  # delivered unsaved, stored later
    periods = [p for p in build_report("show", events, until=time.time()).periods if p.kind == "storage_failing"]
    assert len(periods) == 1 and not periods[0].open and periods[0].detail == stored_storage[0].reason
    assert "No space left" in periods[0].detail or "disk is full" in periods[0].detail
    assert "Traceback" not in log.read_text()


# --- the one-shot writers: samples, reports, summaries on a full disk ---------------------------------


def test_sample_report_and_summary_on_a_full_disk_say_so_in_one_line(
    small_disk: Callable[[int], SmallDisk], short_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamwatch.cli import main

    cfg = tmp_path / "qr.toml"
    cfg.write_text('[analysis]\nanalyzers = ["qr"]\nthreads = 1\n')
    data = tmp_path / "data"
    assert main(["analyze", str(short_clip.path), "-c", str(cfg), "--data", str(data), "-o", str(tmp_path / "r.json"), "-q"]) == 0
    capsys.readouterr()
    disk = small_disk(4)
    disk.fill(leave=60_000)  # room for a few samples, not for all of them
    assert main(["sample", str(short_clip.path), "--every", "0.25", "--out", str(disk.path / "samples"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "samples" in err[0], err
    lines = (disk.path / "samples" / "samples.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and all(json.loads(x)["offset"] >= 0 for x in lines[:-1])  # what was written before is readable
    disk.fill()
    for cmd in (
        ["report", "recording", "--data", str(data), "-o", str(disk.path / "r.html")],
        ["summary", "recording", "--data", str(data), "-o", str(disk.path / "sum"), "--template"],
    ):
        assert main(cmd) == 1, cmd
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in err[0], (cmd, err)
