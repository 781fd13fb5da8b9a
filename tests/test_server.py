"""WebSocket server with real clients: auth, replay/resume, roles, bad input, abuse, slow clients, HTTP routes."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
from evserver import TOKENS, EchoResponder, ServerThread, alert, health
from skimage import data as skdata
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamwatch.events.model import StreamState


def jpeg_b64(max_side: int = 256) -> str:
    img = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    img = cv2.resize(img, (max_side, max_side))
    return base64.b64encode(cv2.imencode(".jpg", img)[1].tobytes()).decode()


async def hello(url: str, **kw: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url, **kw)
    return ws, json.loads(await ws.recv())


async def send(ws: ClientConnection, **msg: Any) -> None:
    await ws.send(json.dumps(msg))


async def recv(ws: ClientConnection, wait: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(wait):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def events_until(ws: ClientConnection, last_id: int, wait: float = 30) -> list[dict[str, Any]]:
    """Events received (batches unpacked) until one with id >= last_id."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(wait):
        while not out or out[-1]["id"] < last_id:
            msg = json.loads(await ws.recv())
            if msg["type"] == "batch":
                out.extend(msg["events"])
            elif "id" in msg:
                out.append(msg)
    return out


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, resp.getheader("Content-Type") or ""


@pytest.fixture
def srv(tmp_path: Path):
    with ServerThread(tmp_path / "data") as s:
        yield s


def test_handshake_refused_without_or_with_a_wrong_token(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", allowed_origins=["http://obs.local"]) as s:

        async def go() -> None:
            base = f"ws://127.0.0.1:{s.port}/ws"
            for url, headers, status in [
                (base, {}, 401),
                (base + "?token=wrong-token-xyz", {}, 403),
                (base, {"Authorization": "Bearer nope-nope-nope"}, 403),
                (s.ws_url("moderator"), {"Origin": "http://evil.example"}, 403),
            ]:
                with pytest.raises(InvalidStatus) as e:
                    await connect(url, additional_headers=headers)
                assert e.value.response.status_code == status
            ws, h = await hello(base, additional_headers={"Authorization": f"Bearer {TOKENS['admin']}", "Origin": "http://obs.local"})
            assert h == {"v": 1, "type": "hello", "role": "admin", "name": "admin-client", "last_id": 0, "limits": h["limits"],
                         "ui": {"language": "zh", "timezone": "Asia/Shanghai"}}  # fmt: skip
            await ws.close()

        asyncio.run(go())
        body = http_get(s.port, "/metrics")[1]
        assert 'streamwatch_handshakes_refused_total{status="401"} 1.0' in body.decode()
        assert 'streamwatch_handshakes_refused_total{status="403"} 3.0' in body.decode()


def test_replay_then_live_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", replay_page=10) as s:
        s.publish_many([alert(offset=i) for i in range(40)])

        async def go() -> list[dict[str, Any]]:
            ws, h = await hello(s.ws_url())
            assert h["last_id"] == 40
            await send(ws, type="subscribe", channels=["alerts", "health"], since=12, ref="sub1")
            loop = asyncio.get_running_loop()
            # keep publishing from the server thread while the replay is paged out
            fut = loop.run_in_executor(None, lambda: [s.publish(health(offset=i)) for i in range(300)])
            got = await events_until(ws, 340)
            await fut
            await ws.close()
            return got

        got = asyncio.run(go())
        assert [e["id"] for e in got] == list(range(13, 341))


def test_resume_after_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    s = ServerThread(data)
    s.publish_many([alert(offset=i) for i in range(25)])

    async def first() -> tuple[list[dict[str, Any]], int | None]:
        ws, _ = await hello(s.ws_url())
        await send(ws, type="subscribe", channels=["alerts"], since=0)
        got = await events_until(ws, 25)
        asyncio.get_running_loop().run_in_executor(None, s.close)
        with pytest.raises(ConnectionClosed) as e:
            while True:
                await ws.recv()
        return got, e.value.rcvd.code if e.value.rcvd else None

    got, code = asyncio.run(first())
    assert code == 1001  # going away
    time.sleep(0.5)
    with ServerThread(data) as s2:
        s2.publish_many([alert(offset=100 + i) for i in range(10)])

        async def second() -> list[dict[str, Any]]:
            ws, h = await hello(s2.ws_url())
            assert h["last_id"] == 35
            await send(ws, type="subscribe", channels=["alerts"], since=got[-1]["id"])
            return await events_until(ws, 35)

        rest = asyncio.run(second())
    ids = [e["id"] for e in got + rest]
    assert ids == list(range(1, 36))


def test_roles_see_only_their_events_and_submitters_only_their_own(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", responder=EchoResponder()) as s:

        async def go() -> None:
            over, _ = await hello(s.ws_url("overlay"))
            await send(over, type="subscribe", channels=["alerts", "replies"], ref="o")
            err = await recv(over)
            assert err["type"] == "error" and err["code"] == "forbidden" and err["ref"] == "o"
            assert (await recv(over))["channels"] == ["replies"]
            sub1, _ = await hello(s.ws_url("submitter"))
            sub2, _ = await hello(f"ws://127.0.0.1:{s.port}/ws?token=submitter-secret-2")
            mod, _ = await hello(s.ws_url("moderator"))
            for ws in (sub1, sub2, mod):
                await send(ws, type="subscribe", channels=["replies", "alerts"] if ws is mod else ["replies"])
                assert (await recv(ws))["type"] == "subscribed"
            s.publish(alert())
            await send(sub1, type="submit", stream="s1", image=jpeg_b64(), user="小明", text="看我的猫", ref="img1")
            acc = await recv(sub1)
            assert acc["type"] == "accepted" and acc["ref"] == "img1" and acc["width"] == 256
            reply = await recv(sub1)
            assert reply["type"] == "reply" and reply["submission"] == acc["submission"] and "256×256" in reply["text"]
            assert reply["image"].startswith("/frames/s1/")
            assert (await recv(over))["id"] == reply["id"]  # overlay shows it
            mod_got = [await recv(mod), await recv(mod)]
            assert [m["type"] for m in mod_got] == ["alert", "reply"]
            await send(sub2, type="ping", ref="p")
            assert (await recv(sub2))["type"] == "pong"  # sub2 got nothing of sub1's
            status, body, ctype = http_get(s.port, reply["image"] + f"?token={TOKENS['overlay']}")
            assert status == 200 and ctype == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
            assert http_get(s.port, reply["image"])[0] == 401
            await send(mod, type="ask", stream="s1", question="what is on screen?", ref="q")
            assert (await recv(mod))["type"] == "accepted"
            for ws in (over, sub1, sub2, mod):
                await ws.close()

        asyncio.run(go())


def test_submission_without_a_responder_is_rejected_not_dropped(srv: ServerThread) -> None:
    async def go() -> None:
        ws, _ = await hello(srv.ws_url("submitter"))
        await send(ws, type="subscribe", channels=["replies"])
        await recv(ws)
        await send(ws, type="submit", stream="s1", image=jpeg_b64(), user="fan", ref=7)
        assert (await recv(ws))["type"] == "accepted"
        rej = await recv(ws)
        assert rej["type"] == "rejected" and rej["reason"] == "no_responder" and rej["user"] == "fan"
        await send(ws, type="ask", stream="s1", question="hi")
        assert (await recv(ws))["code"] == "forbidden"
        await ws.close()

    asyncio.run(go())
    assert [e.type for e in srv.store.events("s1")] == ["rejected"]


def test_each_fan_of_a_relay_token_has_their_own_submission_limit(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", rate_burst=100, user_submit_per_min=6, user_submit_burst=2) as s:

        async def go() -> list[tuple[str, str]]:
            ws, _ = await hello(s.ws_url("submitter"))
            out = []
            for user in ("小明", "小明", "小明", "小红", "小明"):
                await send(ws, type="submit", stream="s1", image=jpeg_b64(), user=user)
                while (m := await recv(ws))["type"] not in ("accepted", "error"):
                    pass
                out.append((user, m["type"] if m["type"] == "accepted" else m["code"]))
            await ws.close()
            return out

        got = asyncio.run(go())
        deadline = time.monotonic() + 10
        while len([e for e in s.store.events("s1") if e.type == "rejected"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len([e for e in s.store.events("s1") if e.type == "rejected"]) == 3  # every accepted one answered (no responder here)
    assert got == [("小明", "accepted"), ("小明", "accepted"), ("小明", "rate_limited"), ("小红", "accepted"), ("小明", "rate_limited")]


def png_header(w: int, h: int) -> str:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64
    return base64.b64encode(raw).decode()


BAD_INPUTS: list[tuple[str | bytes, str]] = [
    ("{not json", "bad_json"),
    ("[1,2]", "bad_json"),
    ('{"type":"dance"}', "unknown_type"),
    ('{"type":"subscribe","channels":"alerts"}', "bad_field"),
    ('{"type":"subscribe","channels":["alerts","gossip"]}', "bad_field"),
    ('{"type":"subscribe","channels":["alerts"],"since":"5"}', "bad_field"),
    ('{"type":"ack","id":"1","action":"confirm"}', "bad_field"),
    ('{"type":"ack","id":1,"action":"maybe"}', "bad_field"),
    ('{"type":"ack","id":999,"action":"confirm"}', "unknown_alert"),
    ('{"type":"ask","stream":"s1","question":"' + "x" * 70_000 + '"}', "too_large"),
    ('{"type":"submit","stream":"s1","image":"@@@"}', "bad_image"),
    ('{"type":"submit","stream":"s1","image":"' + base64.b64encode(b"hello, not an image").decode() + '"}', "bad_image"),
    ('{"type":"submit","stream":"s1","image":"' + base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 50).decode() + '"}', "bad_image"),
    ('{"type":"submit","stream":"s1","image":"' + png_header(100_000, 100_000) + '"}', "image_too_large"),
    ('{"type":"submit","stream":"nope","image":"' + png_header(10, 10) + '"}', "unknown_stream"),
    (b"\x00\x01binary", "bad_frame"),
]


def test_every_bad_input_gets_an_error_and_the_connection_survives(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", rate_burst=100, abuse_limit=100) as s:

        async def go() -> None:
            ws, _ = await hello(s.ws_url("admin"))
            for i, (raw, code) in enumerate(BAD_INPUTS):
                if isinstance(raw, str) and raw.startswith("{") and raw.endswith("}") and '"ref"' not in raw:
                    raw = raw[:-1] + f',"ref":"r{i}"}}'
                await ws.send(raw)
                err = await recv(ws)
                assert err["type"] == "error" and err["code"] == code, (raw[:80], err)
                if code not in ("bad_json", "bad_frame"):
                    assert err["ref"] == f"r{i}"
            big = json.dumps({"type": "submit", "stream": "s1", "image": "A" * (9 * 1024 * 1024)})
            await ws.send(big)
            assert (await recv(ws))["code"] == "too_large"
            await send(ws, type="ping", ref="alive")
            assert (await recv(ws))["type"] == "pong"
            await ws.send("x" * (17 * 1024 * 1024))  # over the hard frame cap: closed with 1009
            with pytest.raises(ConnectionClosed) as e:
                await recv(ws)
            assert e.value.sent is not None and e.value.sent.code == 1009

        asyncio.run(go())
        assert s.store.last_id() == 0  # nothing bad was stored


def test_abuse_closes_the_connection_and_rate_limit_answers(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", abuse_limit=5, rate_per_s=0.5, rate_burst=3) as s:

        async def go() -> None:
            ws, _ = await hello(s.ws_url())
            for _ in range(3):
                await send(ws, type="ping")
                assert (await recv(ws))["type"] == "pong"
            await send(ws, type="ping", ref="x")
            assert (await recv(ws))["code"] == "rate_limited"
            bad, _ = await hello(s.ws_url("overlay"))
            for _ in range(5):
                await bad.send("{oops")
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    await recv(bad)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1008
            await ws.close()

        asyncio.run(go())


def test_ack_stores_a_review_event(srv: ServerThread) -> None:
    a = srv.publish(alert())

    async def go() -> None:
        ws, _ = await hello(srv.ws_url())
        await send(ws, type="subscribe", channels=["reviews"])
        await recv(ws)
        await send(ws, type="ack", id=a.id, action="dismiss", note="sponsor logo", ref="k")
        msgs = [await recv(ws), await recv(ws)]
        acked = next(m for m in msgs if m["type"] == "acked")
        review = next(m for m in msgs if m["type"] == "review")
        assert acked["alert_id"] == a.id and acked["id"] == review["id"]
        assert review["action"] == "dismiss" and review["by"] == "moderator-client" and review["note"] == "sponsor logo"
        over, _ = await hello(srv.ws_url("overlay"))
        await send(over, type="ack", id=a.id, action="confirm")
        assert (await recv(over))["code"] == "forbidden"
        await over.close()
        await ws.close()

    asyncio.run(go())


def test_a_stalled_client_is_cut_off_without_delaying_fifty_live_ones(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d", client_queue=100) as s:
        n = 1500
        pad = "x" * 2000

        async def go() -> None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", s.port))
            stalled, _ = await hello(s.ws_url(), sock=sock, max_queue=1)
            await send(stalled, type="subscribe", channels=["alerts"])
            await recv(stalled)
            live = [(await hello(s.ws_url()))[0] for _ in range(50)]
            for ws in live:
                await send(ws, type="subscribe", channels=["alerts"])
                await recv(ws)
            loop = asyncio.get_running_loop()
            pub = loop.run_in_executor(
                None, lambda: [s.publish_many([alert(offset=i, message=pad) for i in range(j, j + 50)]) for j in range(0, n, 50)]
            )
            results = await asyncio.gather(*(events_until(ws, n, wait=60) for ws in live))
            await pub
            for got in results:
                assert [e["id"] for e in got] == list(range(1, n + 1))
            # the stalled one was told and disconnected; it can resume with since
            seen: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    msg = await recv(stalled)
                    seen.extend(msg["events"] if msg["type"] == "batch" else [msg])
            assert e.value.rcvd is not None and e.value.rcvd.code == 4001
            assert seen and seen[-1].get("code") == "lagging"
            last = max(ev["id"] for ev in seen if "id" in ev)
            assert last < n
            again, _ = await hello(s.ws_url())
            await send(again, type="subscribe", channels=["alerts"], since=last)
            await recv(again)
            rest = await events_until(again, n)
            assert [ev["id"] for ev in rest] == list(range(last + 1, n + 1))

        asyncio.run(go())
        body = http_get(s.port, "/metrics")[1]
        assert "streamwatch_clients_lagging_total 1.0" in body.decode()


def test_http_routes_healthz_metrics_frames_report(srv: ServerThread) -> None:
    srv.publish(health(state=StreamState.LIVE))
    rel = srv.store.save_image("s1", cv2.imencode(".jpg", skdata.camera())[1].tobytes())
    from streamwatch.events.model import Evidence

    srv.publish(alert(evidence=Evidence(kind="frame", frame=rel)))
    status, body, ctype = http_get(srv.port, "/healthz")
    h = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert h["streams"]["s1"]["state"] == "live" and h["streams"]["s2"]["state"] == "unknown" and h["last_id"] == 2
    metrics = http_get(srv.port, "/metrics")[1].decode()
    assert 'streamwatch_events_total{type="alert"} 1.0' in metrics
    assert 'streamwatch_events_total{type="health"} 1.0' in metrics
    assert "streamwatch_clients_connected" in metrics and "streamwatch_stage_latency_seconds" in metrics
    tok = {"Authorization": f"Bearer {TOKENS['moderator']}"}
    assert http_get(srv.port, f"/frames/{rel}", tok)[0] == 200
    for bad in ("/frames/../events.sqlite3", "/frames/%2e%2e/events.sqlite3", "/frames/s1/..%2f..%2fevents.sqlite3", "/frames//etc/passwd"):
        assert http_get(srv.port, bad, tok)[0] == 404, bad
    status, body, ctype = http_get(srv.port, "/report/s1?format=html", tok)
    assert status == 200 and ctype.startswith("text/html") and b"<svg" in body and b"data:image/jpeg;base64," in body
    status, body, _ = http_get(srv.port, "/report/s1?format=json", tok)
    assert json.loads(body)["summary"]["alerts"] == 1
    assert http_get(srv.port, "/report/s1", {"Authorization": f"Bearer {TOKENS['overlay']}"})[0] == 403
    assert http_get(srv.port, "/report/s1")[0] == 401
    assert http_get(srv.port, "/report/zzz", tok)[0] == 404
    assert http_get(srv.port, "/report/s1?format=pdf", tok)[0] == 400
    status, body, ctype = http_get(srv.port, "/overlay?token=x")
    assert status == 200 and b"new WebSocket" in body
    assert http_get(srv.port, "/nope")[0] == 404
