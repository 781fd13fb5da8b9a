"""Actions on the stream: the pure planning (targets, templates, statuses, a cut's outage), the HTTP
actions against real local receivers (a generic endpoint, an SRS-shaped API), and nginx-rtmp's control
module dropping a real publisher: automatically on a planted QR code, after a moderator's ``act`` over
a real WebSocket, as a dry run, and with the show's switch off."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from streamwatch.analysis.policy import RuleSpec
from streamwatch.config import StreamConfig
from streamwatch.events.model import (
    ActionEvent,
    ActionStatus,
    AlertEvent,
    Evidence,
    HealthEvent,
    HealthKind,
    Severity,
    StreamState,
)
from streamwatch.events.store import StoredEvent
from streamwatch.outbound.actions import (
    ActionDesk,
    Target,
    attribute,
    backend_of,
    fields_of,
    first_status,
    json_value,
    render,
    target_of,
    url_value,
)
from streamwatch.outbound.actions_config import ActionsConfig

# --- pure planning -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "publisher", "listen", "want"),
    [
        ("rtmp://127.0.0.1:1935/live/show1", None, False, "live/show1"),
        ("rtmp://origin.example:1935/app2/room_7?token=abc", None, False, "app2/room_7"),
        ("rtmps://edge.example/live/inner/key", None, False, "live/key"),
        ("rtmp://h/onlyapp", None, False, None),
        ("http://127.0.0.1:8080/hls/show1.m3u8", None, False, None),
        ("/media/recording.mp4", None, False, None),
        ("rtmp://0.0.0.0:1935/live/in", None, True, None),
        ("http://127.0.0.1:8080/hls/show1.m3u8", "live/show1", False, "live/show1"),
        ("rtmp://0.0.0.0:1935/live/in", "relay/in", True, "relay/in"),
    ],
)
def test_the_publisher_to_act_on(source: str, publisher: str | None, listen: bool, want: str | None) -> None:
    t = target_of(StreamConfig(id="s", source=source, publisher=publisher, listen=listen))
    assert (str(t) if t else None) == want


def test_which_backend_performs_an_action() -> None:
    hooks = [{"name": "ban_room", "url": "http://x/ban"}, {"name": "tell_host", "url": "http://x/msg"}]
    cases = [
        ({}, "cut", "nginx"),
        ({"cut": "srs"}, "cut", "srs"),
        ({"cut": "ban_room", "http": hooks}, "cut", "http:ban_room"),
        ({}, "warn", ""),
        ({"warn": "tell_host", "http": hooks}, "warn", "http:tell_host"),
        ({"http": hooks}, "ban_room", "http:ban_room"),
        ({"http": hooks}, "nothing_here", "unknown:nothing_here"),
    ]
    for cfg, action, want in cases:
        assert backend_of(action, ActionsConfig.model_validate(cfg)) == want, (cfg, action)
    for bad in ({"cut": "nowhere"}, {"warn": "nowhere"}, {"http": [{"name": "cut", "url": "u"}]}, {"http": hooks + hooks[:1]}):
        with pytest.raises(ValueError):
            ActionsConfig.model_validate(bad)


def alert(message: str = "QR", text: str = "", stream: str = "s", rule: str = "qr_code", id: int = 7) -> AlertEvent:
    return AlertEvent(
        stream=stream,
        at=1_790_000_000.25,
        offset=12.5,
        rule=rule,
        severity=Severity.HIGH,
        message=message,
        confidence=0.9,
        evidence=Evidence("qr", text=text, labels=("qr",)),
        id=id,
    )


@pytest.mark.parametrize(
    "message",
    ["plain", 'quote " and \\ backslash', "line\nbreak\ttab", "二维码 指向站外：https://evil.example/j?a=1&b=2", "{braces} {rule}", ""],
)
def test_templates_carry_any_text_as_json_values_and_url_parts(message: str) -> None:
    fields = fields_of(alert(message, text=message), "cut", "policy", Target("live", "房间/1"))
    body = render(
        '{"room": {name}, "why": {message}, "id": {alert_id}, "labels": {labels}, "keep": {"x": 1}, "u": {unknown}}', fields, json_value
    )
    got = json.loads(body.replace("{unknown}", "null"))
    assert got == {"room": "房间/1", "why": message, "id": 7, "labels": ["qr"], "keep": {"x": 1}, "u": None}
    url = render("http://h/rooms/{name}/ban?why={message}&rule={rule}", fields, url_value)
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    assert unquote(parts.path.rsplit("/", 2)[1]) == "房间/1"
    assert parse_qs(parts.query, keep_blank_values=True) == {"why": [message], "rule": ["qr_code"]}


def rule(**kw: Any) -> RuleSpec:
    return RuleSpec.model_validate({"id": "qr_code", "severity": "high", "message": "m", "when": {"qr": "any"}, **kw})


def test_what_an_alerts_action_becomes_when_it_is_raised() -> None:
    for auto in (True, False):
        for switch in ("on", "dry_run", "off"):
            got = first_status(rule(action="cut", auto=auto), switch)
            want = ActionStatus.OFF if switch == "off" else (None if auto else ActionStatus.PENDING)
            assert got is want, (auto, switch)


def state(s: StreamState, cause: int | None = None) -> HealthEvent:
    return HealthEvent(stream="s", at=time.time(), offset=1.0, kind=HealthKind.STATE, state=s, caused_by=cause)


@pytest.mark.parametrize(
    "after",
    [
        [StreamState.STALLED, StreamState.RECONNECTING, StreamState.LIVE],
        [StreamState.RECONNECTING, StreamState.RECONNECTING, StreamState.RECONNECTING, StreamState.STOPPED],
        [StreamState.STALLED, StreamState.ENDED],
    ],
)
def test_the_outage_after_a_cut_is_the_cuts_and_ends_with_it(after: list[StreamState]) -> None:
    cut: int | None = 41
    marked = []
    for s in [*after, StreamState.STALLED]:  # the outage after the one the cut made is a fault again
        ev, over = attribute(state(s), cut)
        marked.append(ev.caused_by)
        if over:
            cut = None
    assert marked == [41] * len(after) + [None]
    black = HealthEvent(stream="s", at=0.0, offset=1.0, kind=HealthKind.BLACK, active=True)
    assert attribute(black, 41) == (black, False)


def test_an_outage_caused_by_a_cut_raises_no_stream_down_alert() -> None:
    from streamwatch.analysis.policy import load_policy
    from streamwatch.analysis.rules import RuleEngine

    engine = RuleEngine(load_policy(Path(__file__).resolve().parent.parent / "models" / "policy.toml"))
    t0 = time.time()
    for stream, cause in (("cut", 5), ("fault", None)):
        engine.on_health(HealthEvent(stream=stream, at=t0, offset=10.0, kind=HealthKind.STATE, state=StreamState.STALLED, caused_by=cause))
    assert [d.rule for _o, d in engine.tick("fault", t0 + 10)] == ["stream_outage"]
    assert engine.tick("cut", t0 + 10) == []


# --- the desk with a real HTTP receiver ----------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1: records requests, answers per path (status, body, delay)."""

    def __init__(self, answers: dict[str, tuple[int, str, float]]) -> None:
        self.answers = answers
        self.got: list[dict[str, Any]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode() if n else ""
                path = self.path.split("?", 1)[0]
                outer.got.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                status, text, delay = next((v for k, v in outer.answers.items() if path.startswith(k)), (404, "{}", 0.0))
                time.sleep(delay)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _any

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver({})
    yield r
    r.close()


class Bus:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def publish(self, event: Any) -> StoredEvent:
        self.events.append(event)
        return StoredEvent(len(self.events), event.type, event.stream, None, "")


def desk_run(cfg: dict[str, Any], rules: dict[str, RuleSpec], streams: list[StreamConfig], alerts: list[AlertEvent]) -> list[ActionEvent]:
    bus = Bus()

    async def go() -> None:
        desk = ActionDesk(ActionsConfig.model_validate(cfg), bus, lambda _s, r: rules.get(r))
        for s in streams:
            desk.register(s)
        for a in alerts:
            await desk.on_alert(a)
        while desk._tasks:
            await asyncio.gather(*desk._tasks)

    asyncio.run(go())
    return bus.events


def test_a_named_http_action_sends_the_events_fields_and_the_secret_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.answers.update({"/ok/": (200, '{"ok":true}', 0.0), "/down/": (503, "busy", 0.0), "/slow/": (200, "", 3.0)})
    monkeypatch.setenv("PLATFORM_TOKEN", "s3cr3t-value")
    hooks = [
        {"name": name, "method": m, "url": f"{receiver.url}/{name}/{{name}}?rule={{rule}}", "body": '{"room": {name}, "why": {message}}',
         "secret_env": env}
        for name, m, env in (("ok", "POST", "PLATFORM_TOKEN"), ("down", "PUT", None), ("slow", "POST", None),
                             ("nosecret", "POST", "UNSET_VAR"))
    ]  # fmt: skip
    cfg = {"http": hooks, "timeout_s": 1.0}
    rules = {n: rule(id=n, action=n, auto=True) for n in ("ok", "down", "slow", "nosecret")} | {
        "gone": rule(id="gone", action="gone", auto=True)
    }
    stream = StreamConfig(id="s", source="rtmp://h/live/room 1".replace(" ", "_"))
    msg = '二维码 "站外" {x}'
    evs = desk_run(cfg, rules, [stream], [alert(msg, rule=r, id=i + 1) for i, r in enumerate(rules)])
    by_rule = {e.rule: e for e in evs}
    assert {r: e.status for r, e in by_rule.items()} == {
        "ok": ActionStatus.DONE,
        "down": ActionStatus.FAILED,
        "slow": ActionStatus.FAILED,
        "nosecret": ActionStatus.FAILED,
        "gone": ActionStatus.FAILED,
    }
    assert "503" in by_rule["down"].detail and "1s" in by_rule["slow"].detail and "UNSET_VAR" in by_rule["nosecret"].detail
    ok = next(g for g in receiver.got if g["path"].startswith("/ok/"))
    assert ok["method"] == "POST" and ok["path"] == "/ok/room_1?rule=ok"
    assert json.loads(ok["body"]) == {"room": "room_1", "why": msg}
    assert ok["headers"]["Authorization"] == "Bearer s3cr3t-value"
    assert all("s3cr3t" not in json.dumps(e.detail + e.target) for e in evs)  # never recorded
    assert [g["method"] for g in receiver.got if g["path"].startswith("/down/")] == ["PUT"]
    assert not any(g["path"].startswith("/nosecret/") for g in receiver.got)  # no call without its secret


def test_srs_kick_finds_the_publishing_client_and_deletes_it(receiver: Receiver) -> None:
    streams = {
        "code": 0,
        "streams": [
            {"app": "live", "name": "other", "publish": {"active": True, "cid": "c-other"}},
            {"app": "live", "name": "show", "publish": {"active": True, "cid": "c-show"}},
            {"app": "live", "name": "idle", "publish": {"active": False}},
        ],
    }
    receiver.answers.update({"/api/v1/streams/": (200, json.dumps(streams), 0.0), "/api/v1/clients/": (200, '{"code":0}', 0.0)})
    cut = rule(action="cut", auto=True)
    cfgs = [StreamConfig(id=n, source=f"rtmp://srs.local/live/{n}") for n in ("show", "idle", "absent")]
    evs = desk_run(
        {"cut": "srs", "srs": {"url": receiver.url}}, {"qr_code": cut}, cfgs, [alert(stream=c.id, id=i + 1) for i, c in enumerate(cfgs)]
    )
    got = {e.stream: e for e in evs}
    assert got["show"].status is ActionStatus.DONE and "c-show" in got["show"].target
    assert got["idle"].status is ActionStatus.FAILED and got["absent"].status is ActionStatus.FAILED
    assert [g["path"] for g in receiver.got if g["method"] == "DELETE"] == ["/api/v1/clients/c-show"]


def test_unreachable_origin_and_unset_urls_fail_as_events_not_exceptions() -> None:
    cut = rule(action="cut", auto=True)
    s = StreamConfig(id="s", source="rtmp://h/live/x")
    for cfg in ({"nginx": {"url": "http://127.0.0.1:9/control"}}, {}, {"cut": "srs"}):
        (ev,) = desk_run(cfg, {"qr_code": cut}, [s], [alert()])
        assert ev.status is ActionStatus.FAILED and ev.detail, cfg


def test_switches_dry_run_and_a_warn_with_nothing_configured(receiver: Receiver) -> None:
    receiver.answers["/hook/"] = (200, "ok", 0.0)
    hooks = {"http": [{"name": "hook", "url": f"{receiver.url}/hook/{{stream}}"}], "cut": "hook"}
    rules = {"qr_code": rule(action="cut", auto=True), "contact_spam": rule(id="contact_spam", action="warn", auto=True)}
    modes = (("on", "on"), ("dry", "dry_run"), ("off", "off"))
    shows = [StreamConfig(id=sid, source="rtmp://h/live/x", actions=mode) for sid, mode in modes]
    alerts = [alert(stream=s.id, id=i + 1) for i, s in enumerate(shows)] + [alert(stream="on", rule="contact_spam", id=9)]
    evs = desk_run(hooks, rules, shows, alerts)
    got = {(e.stream, e.action): (e.status, e.backend) for e in evs}
    assert got == {
        ("on", "cut"): (ActionStatus.DONE, "http:hook"),
        ("dry", "cut"): (ActionStatus.DRY_RUN, "http:hook"),
        ("off", "cut"): (ActionStatus.OFF, ""),
        ("on", "warn"): (ActionStatus.DONE, ""),  # the event is the warning
    }
    assert [g["path"] for g in receiver.got] == ["/hook/on"]
    receiver.got.clear()
    evs = desk_run({**hooks, "dry_run": True}, rules, shows[:1], alerts[:1])  # the global dry run: nothing called
    assert [e.status for e in evs] == [ActionStatus.DRY_RUN] and receiver.got == []


def test_a_moderator_confirms_once_and_never_on_a_show_switched_off() -> None:
    from streamwatch.errors import ActionRefused

    calls: list[str] = []

    async def caller(action: str, backend: str, *_a: Any) -> Any:
        from streamwatch.outbound.actions import Outcome

        calls.append(f"{action}:{backend}")
        return Outcome(True, "live/x", "ok")

    bus = Bus()
    rules = {"qr_code": rule(action="cut"), "nudity": rule(id="nudity")}

    async def go() -> list[str]:
        desk = ActionDesk(ActionsConfig(), bus, lambda _s, r: rules.get(r), caller=caller)
        desk.register(StreamConfig(id="s", source="rtmp://h/live/x"))
        desk.register(StreamConfig(id="quiet", source="rtmp://h/live/q", actions="off"))
        refused = []
        for a in (alert(id=1), alert(id=2, stream="quiet"), alert(id=3, rule="nudity")):
            await desk.on_alert(a)
        done = await desk.confirm(alert(id=1), "mod-a")
        assert done.status is ActionStatus.DONE and done.by == "mod-a" and not done.auto
        assert desk.cuts == {"s": done.id}  # its outage will be the cut's
        for a in (alert(id=1), alert(id=2, stream="quiet"), alert(id=3, rule="nudity")):
            try:
                await desk.confirm(a, "mod-b")
            except ActionRefused as e:
                refused.append(str(e))
        return refused

    refused = asyncio.run(go())
    assert [(e.alert_id, e.status) for e in bus.events] == [(1, ActionStatus.PENDING), (2, ActionStatus.OFF), (1, ActionStatus.DONE)]
    assert calls == ["cut:nginx"] and len(refused) == 3
    assert "ran already" in refused[0] and "off" in refused[1] and "no action" in refused[2]


def test_a_restarted_daemon_never_runs_a_confirmed_action_twice(tmp_path: Path) -> None:
    """The desk's memory is gone after a restart: the event log (a real SQLite store) says what ran."""
    from streamwatch.errors import ActionRefused
    from streamwatch.events.store import EventStore
    from streamwatch.outbound.actions import Outcome, ran_in

    calls: list[int] = []

    async def caller(_action: str, _backend: str, _cfg: Any, _t: Any, fields: dict[str, object]) -> Outcome:
        calls.append(1)
        return Outcome(True, "live/x", "ok")

    store = EventStore(tmp_path)
    rules = {"qr_code": rule(action="cut")}

    class StoreBus:
        async def publish(self, event: Any) -> StoredEvent:
            return store.append([event])[0]

    async def ran_before(a: AlertEvent) -> bool:
        return ran_in(store.events(a.stream, start=a.at), a.id)

    def desk() -> ActionDesk:
        d = ActionDesk(ActionsConfig(), StoreBus(), lambda _s, r: rules.get(r), caller=caller, ran_before=ran_before)
        d.register(StreamConfig(id="s", source="rtmp://h/live/x"))
        return d

    async def go() -> list[str]:
        first, other = alert(id=1), alert(id=2)
        done = await desk().confirm(first, "mod-a")  # the first process
        assert done.status is ActionStatus.DONE
        refused = []
        again = desk()  # the restarted process: nothing in memory
        try:
            await again.confirm(first, "mod-b")
        except ActionRefused as e:
            refused.append(str(e))
        assert (await again.confirm(other, "mod-b")).status is ActionStatus.DONE  # another alert still runs

        async def broken(_a: AlertEvent) -> bool:
            from streamwatch.errors import EventsError

            raise EventsError("database is locked")

        blind = desk()
        blind.ran_before = broken
        try:
            await blind.confirm(alert(id=3), "mod-c")
        except ActionRefused as e:
            refused.append(str(e))
        return refused

    refused = asyncio.run(go())
    assert calls == [1, 1]  # alerts 1 and 2 once each; 3 not run while the log could not tell
    assert "ran already" in refused[0] and "cannot tell" in refused[1] and "database is locked" in refused[1]
    store.close()


def test_an_admin_switches_a_shows_actions_at_run_time_over_the_websocket(receiver: Receiver, tmp_path: Path) -> None:
    """``switch_actions`` on a real server and WebSocket clients: dry_run stops the call, the change is a
    ``config`` health event that every moderator sees, a moderator may not switch, ``on`` calls again."""
    from evserver import ServerThread
    from websockets.sync.client import connect

    s = ServerThread(tmp_path / "d")
    try:
        cfg = ActionsConfig.model_validate({"cut": "ban", "http": [{"name": "ban", "url": f"{receiver.url}/ban/{{stream}}"}]})
        rules = {"qr_code": rule(action="cut")}
        desk = ActionDesk(cfg, s.bus, lambda _s, r: rules.get(r))
        desk.register(StreamConfig(id="s1", source="rtmp://h/live/x"))
        s.server.actions = desk
        receiver.answers["/ban/"] = (200, "{}", 0.0)
        ids = [s.publish(alert(stream="s1", id=0)).id for _ in range(2)]

        def send(ws: Any, msg: dict[str, Any]) -> dict[str, Any]:
            ws.send(json.dumps(msg))
            while True:
                got = json.loads(ws.recv(timeout=15))
                if got.get("ref") == msg.get("ref") or got.get("type") == "error":
                    return got  # type: ignore[no-any-return]

        with connect(s.ws_url("admin")) as admin, connect(s.ws_url("moderator", since="0")) as mod:
            refused = send(mod, {"type": "switch_actions", "stream": "s1", "actions": "off", "ref": "m"})
            assert refused["type"] == "error" and refused["code"] == "forbidden"
            bad = send(admin, {"type": "switch_actions", "stream": "s1", "actions": "maybe", "ref": "b"})
            assert bad["type"] == "error" and bad["code"] == "bad_field"
            unknown = send(admin, {"type": "switch_actions", "stream": "nope", "actions": "off", "ref": "u"})
            assert unknown["type"] == "error" and unknown["code"] == "unknown_stream"
            ok = send(admin, {"type": "switch_actions", "stream": "s1", "actions": "dry_run", "ref": "a"})
            assert (ok["type"], ok["old"], ok["actions"]) == ("actions_switched", "on", "dry_run")
            dry = send(mod, {"type": "act", "alert": ids[0], "ref": "x"})
            assert dry["status"] == "dry_run" and receiver.got == []
            send(admin, {"type": "switch_actions", "stream": "s1", "actions": "on", "ref": "c"})
            done = send(mod, {"type": "act", "alert": ids[1], "ref": "y"})
            assert done["status"] == "done" and [g["path"] for g in receiver.got] == ["/ban/s1"]
        notices = [e for e in s.store.events("s1") if isinstance(e, HealthEvent) and e.kind is HealthKind.CONFIG]
        assert [n.reason for n in notices] == ["actions on → dry_run (admin-client)", "actions dry_run → on (admin-client)"]
    finally:
        s.close()
