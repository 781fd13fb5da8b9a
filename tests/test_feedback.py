"""Feedback on persona replies over real WebSocket clients: 👍 / 👎 / report, one vote per voter and reply
(also after a server restart), a report becomes a moderator alert, bad votes get clear errors, and the
report shows reply quality per model and persona."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from evserver import ServerThread, alert
from test_server import hello, recv, send

from streamwatch.events.model import ReplyEvent
from streamwatch.events.store import EventStore
from streamwatch.report import build_report

RELAY = "relay-secret-1"


def reply(model: str, persona: str = "xingmiao", submitter: str = "submitter-client", text: str = "好可爱的猫咪！") -> ReplyEvent:
    return ReplyEvent(stream="s1", at=time.time(), offset=12.0, submission="x", submitter=submitter, text=text, user="小明",
                      persona=persona, model=model)  # fmt: skip


async def vote(ws: Any, **msg: Any) -> dict[str, Any]:
    await send(ws, type="feedback", **msg)
    return await recv(ws)


def test_votes_count_once_per_voter_and_reports_alert_the_moderators(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "d") as srv:
        a = srv.publish(reply("qwen3-vl-4b"))
        b = srv.publish(reply("local"))
        other = srv.publish(reply("local", submitter="submitter-two"))
        not_a_reply = srv.publish(alert())

        async def go() -> list[dict[str, Any]]:
            watch, _ = await hello(srv.ws_url("moderator"))  # a moderator's console: sees votes and alerts
            await send(watch, type="subscribe", channels=["alerts", "feedback"], since=not_a_reply.id)
            assert (await recv(watch))["type"] == "subscribed"
            mod, _ = await hello(srv.ws_url("moderator"))
            relay, _ = await hello(srv.ws_url().replace("moderator-secret-1", RELAY))
            fan, _ = await hello(srv.ws_url("submitter"))
            answers = [
                await vote(relay, reply=a.id, vote="up", user="viewer1", ref="1"),
                await vote(relay, reply=a.id, vote="up", user="viewer2"),
                await vote(relay, reply=a.id, vote="down", user="viewer1"),  # a second vote by viewer1: refused
                await vote(relay, reply=b.id, vote="report", user="viewer1", note="rude"),
                await vote(mod, reply=a.id, vote="down"),
                await vote(mod, reply=a.id, vote="up"),  # the moderator again: refused
                await vote(fan, reply=a.id, vote="up"),  # the fan on the reply to its own image
                await vote(fan, reply=other.id, vote="up"),  # someone else's reply: refused
                await vote(mod, reply=not_a_reply.id, vote="up"),  # not a reply
                await vote(mod, reply=999999, vote="up"),
                await vote(mod, reply=a.id, vote="meh"),
                await vote(mod, reply="1", vote="up"),
            ]
            over, _ = await hello(srv.ws_url("overlay"))
            answers.append(await vote(over, reply=a.id, vote="up"))  # an overlay page may not vote (its relay does)
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while len([e for e in seen if e["type"] == "feedback"]) < 5 or not any(e["type"] == "alert" for e in seen):
                    msg = json.loads(await watch.recv())
                    seen.extend(msg["events"] if msg["type"] == "batch" else [msg])
            for ws in (watch, mod, relay, fan, over):
                await ws.close()
            return answers + seen

        out = asyncio.run(go())
    answers, seen = out[:13], out[13:]
    assert [m["type"] for m in answers[:2]] == ["voted", "voted"] and answers[0]["ref"] == "1"
    assert answers[2]["code"] == "duplicate_vote" and "viewer1" in answers[2]["message"]
    assert answers[3]["type"] == "voted" and answers[4]["type"] == "voted"
    assert answers[5]["code"] == "duplicate_vote"
    assert answers[6]["type"] == "voted" and answers[7]["code"] == "forbidden"
    assert answers[8]["code"] == "unknown_reply" and answers[9]["code"] == "unknown_reply"
    assert answers[10]["code"] == "bad_field" and "'vote'" in answers[10]["message"]
    assert answers[11]["code"] == "bad_field" and answers[12]["code"] == "forbidden"
    reported = [e for e in seen if e["type"] == "alert"]
    assert len(reported) == 1 and reported[0]["rule"] == "reply_reported" and "viewer1" in reported[0]["message"]
    assert "rude" in reported[0]["message"] and reported[0]["evidence"]["text"] == "好可爱的猫咪！"
    votes = [e for e in seen if e["type"] == "feedback"]
    assert sorted((v["reply_id"], v["vote"], v["user"]) for v in votes) == sorted(
        [(a.id, "up", "viewer1"), (a.id, "up", "viewer2"), (b.id, "report", "viewer1"), (a.id, "down", ""), (a.id, "up", "")]
    )

    store = EventStore(tmp_path / "d")
    try:
        report = build_report("s1", store.events("s1"))
    finally:
        store.close()
    assert report.feedback["qwen3-vl-4b / xingmiao"] == {"replies": 1, "up": 3, "down": 1, "report": 0}
    assert report.feedback["local / xingmiao"] == {"replies": 2, "up": 0, "down": 0, "report": 1}

    # one vote per voter holds across a server restart (the book is read back from the store)
    with ServerThread(tmp_path / "d") as srv:

        async def again() -> tuple[dict[str, Any], dict[str, Any]]:
            relay, _ = await hello(srv.ws_url().replace("moderator-secret-1", RELAY))
            first = await vote(relay, reply=a.id, vote="down", user="viewer2")
            fresh = await vote(relay, reply=a.id, vote="down", user="viewer3")
            await relay.close()
            return first, fresh

        first, fresh = asyncio.run(again())
    assert first["code"] == "duplicate_vote" and fresh["type"] == "voted"


def test_the_html_and_json_reports_show_reply_feedback(tmp_path: Path) -> None:
    from streamwatch.cli import main

    with ServerThread(tmp_path / "d") as srv:
        r = srv.publish(reply("qwen3-vl-4b"))

        async def go() -> None:
            mod, _ = await hello(srv.ws_url("moderator"))
            assert (await vote(mod, reply=r.id, vote="up"))["type"] == "voted"
            await mod.close()

        asyncio.run(go())
    assert main(["report", "s1", "--data", str(tmp_path / "d"), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "id='feedback'" in html and "qwen3-vl-4b / xingmiao" in html
    assert main(["report", "s1", "--data", str(tmp_path / "d"), "--format", "json", "-o", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["reply_feedback"]["qwen3-vl-4b / xingmiao"]["up"] == 1
