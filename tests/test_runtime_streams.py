"""Streams managed at run time: the persisted desired set, validation, the WebSocket/HTTP protocol and
the ``streamwatch streams`` CLI, against a real EventServer with real clients and a real subprocess."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Clip, Nginx, publish
from conftest import stop as stop_proc
from evserver import TOKENS, ServerThread, health
from websockets.asyncio.client import ClientConnection, connect

from streamwatch.config import StreamConfig
from streamwatch.errors import ConfigError, DuplicateStream, PolicyError, UnknownStream
from streamwatch.events.bus import EventBus
from streamwatch.events.model import StreamState
from streamwatch.runtime.desired import FILE_NAME, DesiredFile, validate_stream
from streamwatch.server import EventServer
from streamwatch.server.control import stream_json

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "models" / "policy.toml"


def cfg(sid: str, source: str = "rtmp://127.0.0.1/live/key1", **kw: Any) -> StreamConfig:
    return StreamConfig(id=sid, source=source, **kw)


# --- the desired set ---------------------------------------------------------------------------


def test_desired_set_adds_and_removals_persist_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "data" / FILE_NAME
    configured = [cfg("a"), cfg("b", "rtsp://127.0.0.1:8554/cam")]
    d = DesiredFile(path, configured)
    assert [c.id for c in d.streams()] == ["a", "b"] and not path.exists()  # nothing written until a change
    assert d.origin("a") == "config"

    d.add(cfg("c", "https://cdn.example/x.m3u8?token=abc", every_s=2.0))
    removed = d.remove("a")
    assert removed.id == "a"
    assert [c.id for c in d.streams()] == ["b", "c"]
    assert d.origin("c") == "runtime"
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed over the real one

    again = DesiredFile(path, configured)  # a restart with the same config
    assert [c.id for c in again.streams()] == ["b", "c"]
    assert again.get("c").every_s == 2.0 and again.origin("c") == "runtime"
    with pytest.raises(UnknownStream, match="no stream 'a'"):
        again.origin("a")

    again.add(cfg("a"))  # a removed config stream comes back as configured
    assert DesiredFile(path, configured).origin("a") == "config"
    assert [c.id for c in DesiredFile(path, configured).streams()] == ["a", "b", "c"]
    again.remove("c")
    assert [c.id for c in DesiredFile(path, configured).streams()] == ["a", "b"]

    # a config stream re-added with another definition: the run-time one wins, also after a restart
    again.remove("b")
    again.add(cfg("b", "rtmp://127.0.0.1/live/other"))
    third = DesiredFile(path, configured)
    assert third.get("b").source == "rtmp://127.0.0.1/live/other" and third.origin("b") == "runtime"


def test_desired_set_refuses_duplicates_and_unknown_ids(tmp_path: Path) -> None:
    d = DesiredFile(tmp_path / FILE_NAME, [cfg("a")])
    with pytest.raises(DuplicateStream, match="'a' is already watched"):
        d.add(cfg("a", "rtmp://127.0.0.1/live/other"))
    d.add(cfg("r"))
    with pytest.raises(DuplicateStream):
        d.add(cfg("r"))
    with pytest.raises(UnknownStream, match="no stream 'zz'; known: a, r") as e:
        d.remove("zz")
    assert isinstance(e.value, ConfigError) and isinstance(e.value, KeyError)
    d.remove("r")
    with pytest.raises(UnknownStream):
        d.remove("r")
    assert [c.id for c in DesiredFile(tmp_path / FILE_NAME, [cfg("a")]).streams()] == ["a"]


def test_concurrent_adds_of_one_id_have_one_winner(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    d = DesiredFile(tmp_path / FILE_NAME, [])

    def add(n: int) -> str:
        try:
            d.add(cfg(f"s{n % 4}", f"rtmp://127.0.0.1/live/k{n}"))
        except DuplicateStream:
            return "dup"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(add, range(40)))
    assert results.count("ok") == 4 and results.count("dup") == 36
    assert sorted(c.id for c in DesiredFile(tmp_path / FILE_NAME, []).streams()) == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not JSON"),
        ('["a"]', "not a version-1 stream set"),
        ('{"version": 2, "added": []}', "not a version-1 stream set"),
        ('{"version": 1, "added": {"id": "x"}}', "'added' must be a list"),
        ('{"version": 1, "added": [{"id": "bad id!", "source": "rtmp://h/a/b"}]}', r"added\[0\]"),
        ('{"version": 1, "added": [{"id": "x", "source": "rtmp://h/a/b", "colour": 1}]}', "colour"),
        ('{"version": 1, "added": [{"id": "x", "source": "a.mp4"}, {"id": "x", "source": "b.mp4"}]}', "added twice"),
    ],
)
def test_a_corrupt_desired_set_is_an_error_naming_the_file_never_a_reset(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(text)
    with pytest.raises(ConfigError, match=why) as e:
        DesiredFile(path, [cfg("a")])
    assert str(path) in str(e.value)
    assert path.read_text() == text  # left as it was, for a person to look at


def test_a_failed_write_keeps_the_set_and_the_file_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    d = DesiredFile(path, [cfg("a")])
    d.add(cfg("b"))
    before = path.read_text()
    path.unlink()
    path.mkdir()  # os.replace onto a directory fails
    with pytest.raises(ConfigError, match="cannot write the stream set"):
        d.add(cfg("c"))
    with pytest.raises(ConfigError, match="cannot write the stream set"):
        d.remove("a")
    assert [c.id for c in d.streams()] == ["a", "b"]
    assert not list(tmp_path.glob(".*.tmp"))
    path.rmdir()
    path.write_text(before)
    assert [c.id for c in DesiredFile(path, [cfg("a")]).streams()] == ["a", "b"]


# --- validation --------------------------------------------------------------------------------


def test_validate_stream_accepts_what_the_config_accepts() -> None:
    c = validate_stream({"id": "room-2", "source": "rtmp://0.0.0.0:1935/live/key", "listen": True, "every_s": 0.5, "policy": str(POLICY)})
    assert (c.id, c.listen, c.every_s, c.policy) == ("room-2", True, 0.5, POLICY)
    assert validate_stream({"id": "f", "source": "clip.mp4"}).source == "clip.mp4"


def test_validate_stream_names_every_bad_field_on_its_own_line() -> None:
    with pytest.raises(ConfigError) as e:
        validate_stream({"id": "bad id!", "every_s": 0, "colour": "red"})
    lines = str(e.value).splitlines()
    assert lines[0] == "invalid stream:"
    assert {ln.split(":")[0].strip() for ln in lines[1:]} == {"id", "source", "every_s", "colour"}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"id": "x", "source": "rtmp://[::1/live/k"}, "source: malformed source URL"),
        ({"id": "x", "source": "ftp://host/a.mp4"}, "unsupported source scheme 'ftp'"),
        ({"id": "x", "source": "not-a-source"}, "unknown source"),
        ({"id": "x", "source": "https://h/a.m3u8", "listen": True}, "listen mode needs an rtmp:// address"),
        ({"id": "x", "source": "   "}, "empty source URL"),
        ({"id": "x", "source": "a.mp4", "policy": "/nonexistent/policy.toml"}, "policy: no policy file /nonexistent/policy.toml"),
        (["x", "a.mp4"], "must be an object"),
    ],
)
def test_validate_stream_refuses_bad_sources_and_missing_policies(raw: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=why.replace("[", r"\[")):
        validate_stream(raw)


def test_validate_stream_loads_the_policy(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text("[[rule]]\nid = 1\n")
    with pytest.raises(PolicyError, match=str(bad)):
        validate_stream({"id": "x", "source": "a.mp4", "policy": str(bad)})


def test_a_listed_stream_never_shows_credentials() -> None:
    listed = stream_json(cfg("x", "rtmp://bob:hunter2@host/live/streamkey?token=s3cret"), origin="runtime")
    text = json.dumps(listed)
    assert "hunter2" not in text and "streamkey" not in text and "s3cret" not in text
    assert listed == {
        "id": "x",
        "source": "rtmp://***@host/live/***?token=***",
        "listen": False,
        "every_s": None,
        "policy": None,
        "state": "unknown",
        "origin": "runtime",
    }


# --- the protocol, with a StreamControl backed by the desired set --------------------------------


class DesiredControl:
    """A real StreamControl for the server tests: the desired set on disk, and the health events a
    runner publishes (live on add, ended on remove) on the server's bus."""

    def __init__(self, path: Path, configured: list[StreamConfig], bus: EventBus) -> None:
        self.desired = DesiredFile(path, configured)
        self.bus = bus
        self.state = {c.id: "live" for c in configured}
        self.log: list[tuple[str, str, str]] = []

    async def add_stream(self, cfg: StreamConfig, by: str) -> None:
        self.desired.add(cfg)
        self.log.append(("add", cfg.id, by))
        self.state[cfg.id] = "live"
        await self.bus.publish(health(cfg.id, state=StreamState.LIVE))

    async def remove_stream(self, stream_id: str, by: str) -> None:
        self.desired.remove(stream_id)
        self.log.append(("remove", stream_id, by))
        self.state.pop(stream_id, None)
        await self.bus.publish(health(stream_id, state=StreamState.ENDED))

    def list_streams(self) -> list[dict[str, Any]]:
        d = self.desired
        return [stream_json(c, origin=d.origin(c.id), state=self.state.get(c.id, "unknown")) for c in d.streams()]


class ControlledServer(ServerThread):
    """ServerThread whose EventServer manages streams through a DesiredControl (None: no control)."""

    def __init__(self, data_dir: Path, *, control: bool = True, **kw: Any) -> None:
        self.with_control = control
        self.control: DesiredControl | None = None
        super().__init__(data_dir, api_port=0, **kw)

    async def _start(self) -> None:
        from streamwatch.events.store import EventStore

        self.store = EventStore(self.data_dir)
        self.bus = EventBus(self.store)
        await self.bus.start()
        if self.with_control:
            configured = [cfg(s, f"rtmp://127.0.0.1/live/{s}") for s in self.streams]
            self.control = DesiredControl(self.data_dir / FILE_NAME, configured, self.bus)
        self.server = EventServer(self.cfg, self.bus, streams=self.streams, control=self.control)
        await self.server.start()

    @property
    def api_port(self) -> int:
        assert self.server.api is not None
        return self.server.api.port


async def ask(ws: ClientConnection, want: str | None = None, **msg: Any) -> dict[str, Any]:
    """Send a request with a ref and return the answer to it (skipping events)."""
    ref = f"r{time.monotonic_ns()}"
    await ws.send(json.dumps({**msg, "ref": ref}))
    async with asyncio.timeout(10):
        while True:
            got = json.loads(await ws.recv())
            if got.get("ref") == ref:
                assert want is None or got["type"] == want, got
                return got  # type: ignore[no-any-return]


def http_json(port: int, method: str, path: str, role: str | None = "admin", body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if role:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    resp = conn.getresponse()
    status, data = resp.status, resp.read()
    conn.close()
    return status, json.loads(data) if data else None


def test_admin_adds_lists_and_removes_streams_over_the_websocket(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv:

        async def go() -> None:
            admin = await connect(srv.ws_url("admin"))
            mod = await connect(srv.ws_url("moderator"))
            await admin.recv(), await mod.recv()  # hello
            stream = {"id": "room2", "source": "rtmp://bob:pw@127.0.0.1/live/secretkey", "every_s": 2}
            added = await ask(admin, "stream_added", type="add_stream", stream=stream)
            assert added["stream"]["id"] == "room2" and added["stream"]["origin"] == "runtime"
            assert "pw" not in json.dumps(added) and "secretkey" not in json.dumps(added)
            assert added["stream"]["every_s"] == 2.0
            # the new id is known at once: a moderator can subscribe to it and ask about it
            sub = await ask(mod, "subscribed", type="subscribe", channels=["health"], streams=["room2"], since=0)
            assert sub["streams"] == ["room2"]
            ev = json.loads(await asyncio.wait_for(mod.recv(), 10))
            assert (ev["type"], ev["stream"], ev["state"]) == ("health", "room2", "live")
            listed = await ask(admin, "streams", type="list_streams")
            assert [(s["id"], s["origin"], s["state"]) for s in listed["streams"]] == [
                ("s1", "config", "live"),
                ("room2", "runtime", "live"),
            ]

            removed = await ask(admin, "stream_removed", type="remove_stream", stream="room2")
            assert removed["stream"] == "room2"
            ev = json.loads(await asyncio.wait_for(mod.recv(), 10))
            assert (ev["stream"], ev["state"]) == ("room2", "ended")
            listed = await ask(admin, "streams", type="list_streams")
            assert [s["id"] for s in listed["streams"]] == ["s1"]
            err = await ask(mod, "error", type="ask", stream="room2", question="what is on screen?")
            assert err["code"] == "unknown_stream"
            await admin.close(), await mod.close()

        srv.call(go())
        assert srv.control is not None and srv.control.log == [("add", "room2", "admin-client"), ("remove", "room2", "admin-client")]
        assert srv.server.streams == {"s1"}
        # the wall (console /streams) showed it while it ran, and dropped it after; its report stays
        tok = {"Authorization": f"Bearer {TOKENS['moderator']}"}
        status, wall = http_json(srv.port, "GET", "/streams", "moderator")
        assert status == 200 and [s["id"] for s in wall["streams"]] == ["s1"]
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/report/room2?format=json", headers=tok)
        resp = conn.getresponse()
        report = json.loads(resp.read())
        assert resp.status == 200 and report["stream"] == "room2"


def test_the_wall_shows_an_added_stream_while_it_runs(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv:

        async def add() -> None:
            async with connect(srv.ws_url("admin")) as ws:
                await ws.recv()
                await ask(ws, "stream_added", type="add_stream", stream={"id": "room3", "source": "rtsp://127.0.0.1:8554/cam"})

        srv.call(add())
        status, wall = http_json(srv.port, "GET", "/streams", "moderator")
        assert status == 200
        by_id = {s["id"]: s for s in wall["streams"]}
        assert set(by_id) == {"s1", "room3"} and by_id["room3"]["state"] == "live"
        status, health_json = http_json(srv.port, "GET", "/healthz", None)
        assert "room3" in health_json["streams"]


def test_stream_requests_are_refused_with_the_right_codes(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv:

        async def go() -> None:
            admin = await connect(srv.ws_url("admin"))
            mod = await connect(srv.ws_url("moderator"))
            await admin.recv(), await mod.recv()
            for msg in ({"type": "add_stream", "stream": {"id": "x", "source": "a.mp4"}}, {"type": "list_streams"}):
                err = await ask(mod, "error", **msg)
                assert err["code"] == "forbidden", err
            err = await ask(mod, "error", type="remove_stream", stream="s1")
            assert err["code"] == "forbidden"
            err = await ask(admin, "error", type="add_stream", stream={"id": "bad id", "source": "ftp://x/y", "every_s": -1})
            assert err["code"] == "bad_request" and "id:" in err["message"] and "every_s:" in err["message"]
            err = await ask(admin, "error", type="add_stream", stream={"id": "x", "source": "rtmp://[::1/live/k"})
            assert err["code"] == "bad_request" and "malformed source URL" in err["message"]
            err = await ask(admin, "error", type="add_stream", stream={"id": "x", "source": "a.mp4", "policy": str(tmp_path / "none.toml")})
            assert err["code"] == "bad_request" and "no policy file" in err["message"]
            err = await ask(admin, "error", type="add_stream", stream="s2")
            assert err["code"] == "bad_request"
            err = await ask(admin, "error", type="add_stream", stream={"id": "s1", "source": "a.mp4"})
            assert err["code"] == "duplicate_stream" and "'s1'" in err["message"]
            err = await ask(admin, "error", type="remove_stream", stream="nope")
            assert err["code"] == "unknown_stream" and "known: s1" in err["message"]
            err = await ask(admin, "error", type="remove_stream", stream=7)
            assert err["code"] == "bad_field"
            # the connection survived all of it, and nothing was changed
            listed = await ask(admin, "streams", type="list_streams")
            assert [s["id"] for s in listed["streams"]] == ["s1"]
            await admin.close(), await mod.close()

        srv.call(go())
        assert srv.server.streams == {"s1"} and srv.control is not None and srv.control.log == []


def test_two_admins_adding_the_same_id_at_once_get_one_stream(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv:

        async def go() -> list[dict[str, Any]]:
            clients = [await connect(srv.ws_url("admin")) for _ in range(4)]
            for ws in clients:
                await ws.recv()
            stream = {"id": "race", "source": "rtmp://127.0.0.1/live/race"}
            answers = await asyncio.gather(*(ask(ws, None, type="add_stream", stream=stream) for ws in clients))
            for ws in clients:
                await ws.close()
            return answers

        answers = srv.call(go())
        kinds = sorted(a["type"] if a["type"] != "error" else a["code"] for a in answers)
        assert kinds == ["duplicate_stream"] * 3 + ["stream_added"]
        assert srv.control is not None and [c.id for c in srv.control.desired.streams()] == ["s1", "race"]


def test_a_server_without_stream_control_says_so(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", control=False) as srv:

        async def go() -> None:
            async with connect(srv.ws_url("admin")) as ws:
                await ws.recv()
                for msg in ({"type": "add_stream", "stream": {"id": "x", "source": "a.mp4"}}, {"type": "list_streams"}):
                    err = await ask(ws, "error", **msg)
                    assert err["code"] == "no_control" and "does not manage streams" in err["message"]

        srv.call(go())
        assert http_json(srv.api_port, "POST", "/streams", body={"id": "x", "source": "a.mp4"})[0] == 503


def test_http_api_manages_streams_with_json_errors(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv:
        port = srv.api_port
        body = {"id": "cam1", "source": "rtsp://u:p@127.0.0.1:8554/cam", "every_s": 1.5}
        status, got = http_json(port, "POST", "/streams", body=body)
        assert status == 201 and got["stream"]["id"] == "cam1" and got["stream"]["source"] == "rtsp://***@127.0.0.1:8554/cam"
        assert "cam1" in srv.server.streams
        assert http_json(port, "POST", "/streams", body={"stream": {"id": "cam2", "source": "b.mp4"}})[0] == 201
        status, got = http_json(port, "POST", "/streams", body=body)
        assert status == 409 and got["error"]["code"] == "duplicate_stream"
        status, got = http_json(port, "POST", "/streams", body={"id": "cam 3", "source": "x"})
        assert status == 400 and got["error"]["code"] == "bad_request" and "id:" in got["error"]["message"]
        status, got = http_json(port, "POST", "/streams", body=[1])
        assert status == 400 and got["error"]["code"] == "bad_request"
        assert http_json(port, "POST", "/streams", "moderator", body=body)[0] == 403
        assert http_json(port, "POST", "/streams", None, body=body)[0] == 401
        status, got = http_json(port, "GET", "/streams")
        assert status == 200 and [s["id"] for s in got["streams"]] == ["s1", "cam1", "cam2"]
        assert http_json(port, "DELETE", "/streams/cam1") == (200, {"removed": "cam1"})
        status, got = http_json(port, "DELETE", "/streams/cam1")
        assert status == 404 and got["error"]["code"] == "unknown_stream"
        assert http_json(port, "PUT", "/streams/cam2")[0] == 405
        assert srv.server.streams == {"s1", "cam2"}
        # sent to the main port, the API's methods are pointed at the API port
        status, got = http_json(srv.port, "POST", "/streams", body=body)
        assert status == 421 and got["error"]["code"] == "wrong_port" and f":{port}/streams" in got["error"]["url"]
        status, got = http_json(srv.port, "DELETE", "/streams/cam2")
        assert status == 421
    # the desired set persisted what the API did
    d = DesiredFile(tmp_path / "data" / FILE_NAME, [cfg("s1", "rtmp://127.0.0.1/live/s1")])
    assert [c.id for c in d.streams()] == ["s1", "cam2"]


def test_the_console_wall_gains_and_loses_a_stream_managed_at_run_time(tmp_path: Path) -> None:
    """Real Chromium on /console: a tile appears for an added stream and leaves when it is removed."""
    from test_overlay import CHROMIUM, FLAGS

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium (the .ci/run script does)")
    from playwright.sync_api import sync_playwright

    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv, sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = b.new_page(viewport={"width": 1280, "height": 720})
            page.goto(f"http://127.0.0.1:{srv.port}/console?token={TOKENS['moderator']}&lang=en")
            page.wait_for_selector("#wall .tile[data-stream=s1]", timeout=15_000)
            body = {"id": "room5", "source": "rtmp://127.0.0.1/live/k5"}
            assert http_json(srv.api_port, "POST", "/streams", body=body)[0] == 201
            page.wait_for_selector("#wall .tile[data-stream=room5][data-state=live]", timeout=10_000)
            assert http_json(srv.api_port, "DELETE", "/streams/room5")[0] == 200
            page.wait_for_selector("#wall .tile[data-stream=room5]", state="detached", timeout=10_000)
            time.sleep(2.5)  # the wall's periodic re-render and late events do not bring it back
            assert page.locator("#wall .tile[data-stream=room5]").count() == 0
            assert page.locator("#wall .tile[data-stream=s1]").count() == 1
            assert http_json(srv.api_port, "POST", "/streams", body=body)[0] == 201  # added again: back on the wall
            page.wait_for_selector("#wall .tile[data-stream=room5][data-state=live]", timeout=10_000)
        finally:
            b.close()


# --- the CLI, as a subprocess ---------------------------------------------------------------------


def cli(*args: str, token: str | None = TOKENS["admin"]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMWATCH_TOKEN"}
    if token:
        env["STREAMWATCH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "streamwatch", "streams", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_streams_add_list_remove_and_exit_codes(tmp_path: Path) -> None:
    with ControlledServer(tmp_path / "data", streams=("s1",)) as srv:
        url = f"ws://127.0.0.1:{srv.port}/ws"
        r = cli("add", "room9", "rtmp://127.0.0.1/live/k9", "--every-s", "2", "--policy", str(POLICY), "--url", url)
        assert r.returncode == 0, r.stderr
        assert "added room9" in r.stdout
        r = cli("list", "--url", url)
        assert r.returncode == 0, r.stderr
        rows = [ln.split() for ln in r.stdout.splitlines()]
        assert rows[0] == ["id", "state", "origin", "source"]
        assert rows[1:] == [
            ["s1", "live", "config", "rtmp://127.0.0.1/live/***"],
            ["room9", "live", "runtime", "rtmp://127.0.0.1/live/***"],
        ]
        r = cli("list", "--json", "--url", url)
        listed = json.loads(r.stdout)
        assert listed[1]["policy"] == str(POLICY) and listed[1]["every_s"] == 2.0

        r = cli("add", "room9", "b.mp4", "--url", url)
        assert r.returncode == 2 and "duplicate_stream" in r.stderr and "room9" in r.stderr
        r = cli("add", "room10", "ftp://host/x", "--url", url)
        assert r.returncode == 2 and "unsupported source scheme" in r.stderr
        r = cli("remove", "nope", "--url", url)
        assert r.returncode == 2 and "unknown_stream" in r.stderr
        r = cli("list", "--url", url, token=TOKENS["moderator"])
        assert r.returncode == 2 and "forbidden" in r.stderr
        r = cli("list", "--url", url, "--token", "wrong-secret-123", token=None)
        assert r.returncode == 2 and "refused the token" in r.stderr
        r = cli("list", "--url", url, token=None)
        assert r.returncode == 2 and "STREAMWATCH_TOKEN" in r.stderr

        r = cli("remove", "room9", "--url", url)
        assert r.returncode == 0 and "removed room9" in r.stdout
        assert srv.server.streams == {"s1"}
        port = srv.port
    r = cli("list", "--url", f"ws://127.0.0.1:{port}/ws")  # the server is gone
    assert r.returncode == 1 and "cannot talk to" in r.stderr and "is the daemon running" in r.stderr


# --- end to end: a real daemon ----------------------------------------------------------------------


def test_a_real_daemon_adds_and_removes_streams_at_run_time_and_keeps_the_set(nginx: Nginx, short_clip: Clip, tmp_path: Path) -> None:
    """`streamwatch streams add` → the stream goes live on a subscribed client; `remove` → ended; after a
    restart the added stream comes back and the removed config stream stays removed."""
    import threading

    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    pubs = [publish(short_clip.path, nginx.rtmp(name), loop=True) for name in ("cfgcam", "extra")]
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "data",
            "streams": [{"id": "cfgcam", "source": nginx.rtmp("cfgcam")}],
            "server": {"port": 0, "tokens": [{"name": f"{r}-client", "role": r, "secret": s} for r, s in TOKENS.items()]},
            "analysis": {"analyzers": ["qr"]},
        },
    )

    def start() -> tuple[Daemon, asyncio.AbstractEventLoop, threading.Thread]:
        daemon = Daemon(settings)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=lambda: loop.run_until_complete(daemon.run()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not daemon.ready.is_set():
            assert time.monotonic() < deadline and thread.is_alive(), "the daemon did not start"
            time.sleep(0.05)
        assert daemon.server is not None
        assert daemon.server.stream_admin.control is daemon
        return daemon, loop, thread

    def stop(daemon: Daemon, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        loop.call_soon_threadsafe(daemon.stop)
        thread.join(30)
        assert not thread.is_alive(), "the daemon did not stop"

    async def state_event(ws: ClientConnection, stream: str, state: str, wait: float, seen: list[Any] | None = None) -> dict[str, Any]:
        async with asyncio.timeout(wait):
            while True:
                msg = json.loads(await ws.recv())
                for ev in msg["events"] if msg.get("type") == "batch" else [msg]:
                    if seen is not None:
                        seen.append(ev)
                    if ev.get("type") == "health" and ev.get("stream") == stream and ev.get("state") == state:
                        return ev  # type: ignore[no-any-return]

    try:
        daemon, loop, thread = start()
        try:
            assert daemon.server is not None
            url = f"ws://127.0.0.1:{daemon.server.port}/ws"

            async def first_run() -> None:
                async with connect(f"{url}?token={TOKENS['moderator']}") as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "subscribe", "channels": ["health"]}))
                    await ws.recv()
                    r = await asyncio.to_thread(cli, "add", "extra", nginx.rtmp("extra"), "--url", url)
                    assert r.returncode == 0, r.stderr
                    await state_event(ws, "extra", "live", 15)
                    r = await asyncio.to_thread(cli, "list", "--json", "--url", url)
                    listed = {s["id"]: s for s in json.loads(r.stdout)}
                    assert set(listed) == {"cfgcam", "extra"}
                    assert (listed["extra"]["origin"], listed["extra"]["state"]) == ("runtime", "live")
                    assert listed["cfgcam"]["origin"] == "config" and listed["extra"]["source"].endswith("/live/***")
                    r = await asyncio.to_thread(cli, "remove", "cfgcam", "--url", url)
                    assert r.returncode == 0, r.stderr
                    ended.append((await state_event(ws, "cfgcam", "ended", 15))["id"])

            ended: list[int] = []
            asyncio.run(first_run())
        finally:
            stop(daemon, loop, thread)

        daemon, loop, thread = start()  # the same config: the desired set on disk wins
        try:
            assert daemon.server is not None
            url = f"ws://127.0.0.1:{daemon.server.port}/ws"

            async def second_run() -> None:
                seen: list[dict[str, Any]] = []
                async with connect(f"{url}?token={TOKENS['moderator']}") as ws:
                    await ws.recv()  # everything after the removal: the first run's shutdown, then this run
                    await ws.send(json.dumps({"type": "subscribe", "channels": ["health"], "since": ended[0]}))
                    await ws.recv()
                    await state_event(ws, "extra", "live", 20, seen)
                assert [e["state"] for e in seen if e["stream"] == "extra" and e.get("state")][:3] == ["ended", "connecting", "live"]
                assert not [e for e in seen if e["stream"] == "cfgcam"], seen
                r = await asyncio.to_thread(cli, "list", "--json", "--url", url)
                listed = json.loads(r.stdout)
                assert [(s["id"], s["origin"]) for s in listed] == [("extra", "runtime")]

            asyncio.run(second_run())
        finally:
            stop(daemon, loop, thread)
    finally:
        for p in pubs:
            stop_proc(p)


@pytest.mark.parametrize("source", ["rtmp://", "rtmp:///live/x", "http://:80/a.m3u8", "rtmp://h:abc/x", "rtsp://cam:99999/x"])
def test_a_network_source_without_a_host_or_with_a_bad_port_is_refused(source: str) -> None:
    with pytest.raises(ConfigError, match="no host or a bad port"):
        validate_stream({"id": "x", "source": source})
