"""Audience images and live Q&A with the local backend: input safety through the real analyzers and
policy, persona replies, duplicates, output safety; over a real WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from evserver import TOKENS, ServerThread
from test_analyzers import caption, qr_png, rgb
from websockets.asyncio.client import connect

from streamwatch.analysis.base import create
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.detectors import AnalyzerSettings
from streamwatch.analysis.model import AnalyzedFrame, Detection, FrameAnalysis
from streamwatch.analysis.policy import load_policy
from streamwatch.errors import ConfigError
from streamwatch.vlm.persona import load_persona
from streamwatch.vlm.responder import AudienceResponder

MODELS = Path(__file__).resolve().parent.parent / "models"


def b64(img_rgb: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()


@pytest.fixture
def responder_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    analyzers = [create(n, AnalyzerSettings(device="cpu")) for n in ("nudity", "ocr", "qr")]
    pool = ThreadPoolExecutor(2)
    policy = load_policy(MODELS / "policy.toml")
    fa = FrameAnalysis("s1", 12.0, 0, 0, (Detection("ocr", "text", 0.9, (0, 0, 9, 9), "今晚的主题是星空"),), 640, 360)
    latest = {"s1": AnalyzedFrame(fa, np.zeros((360, 640, 3), np.uint8))}
    persona = load_persona(MODELS / "personas/xingmiao.toml")
    holder: dict[str, Any] = {}

    async def make() -> AudienceResponder:
        cascade = Cascade(analyzers, pool)
        holder["cascade"] = cascade
        return AudienceResponder(cascade, lambda _s: policy, persona, latest=latest.get)

    loop = asyncio.new_event_loop()
    responder = loop.run_until_complete(make())
    loop.close()
    with ServerThread(tmp_path / "d", responder=responder, api_port=0, rate_per_s=5, rate_burst=30, user_submit_burst=10) as s:
        yield s
    pool.shutdown()


async def submit(ws: Any, image: str, ref: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "submit", "stream": "s1", "image": image, "user": "小明", "text": "送给星喵", "ref": ref}))
    accepted = json.loads(await ws.recv())
    assert accepted["type"] == "accepted", accepted
    async with asyncio.timeout(30):
        while True:
            ev = json.loads(await ws.recv())
            if ev.get("submission") == accepted["submission"]:
                return ev  # type: ignore[no-any-return]


def test_audience_images_are_screened_then_answered_in_persona(responder_server: ServerThread) -> None:
    s = responder_server
    spam = caption("加微信 xiaomei88 领福利")
    scene = cv2.resize(rgb("coffee"), (640, 360)).copy()
    code = qr_png("https://evil.example/x")
    scene[20 : 20 + code.shape[0], 20 : 20 + code.shape[1]] = code

    async def go() -> None:
        async with connect(s.ws_url("submitter")) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["replies"]}))
            await ws.recv()
            reply = await submit(ws, b64(rgb("chelsea")), "cat")
            assert reply["type"] == "reply" and reply["persona"] == "xingmiao" and reply["model"] == "local"
            assert "送给星喵" in reply["text"] and reply["image"].startswith("/frames/")
            again = await submit(ws, b64(rgb("chelsea")), "cat-again")
            assert again["type"] == "rejected" and again["reason"] == "duplicate"
            bad = await submit(ws, b64(spam), "spam")
            assert bad["type"] == "rejected" and bad["reason"] == "contact_spam"
            qr = await submit(ws, b64(scene), "qr")
            assert qr["type"] == "rejected" and qr["reason"] == "qr_code"
        async with connect(s.ws_url("moderator")) as mod:
            await mod.recv()
            await mod.send(json.dumps({"type": "subscribe", "channels": ["answers"]}))
            await mod.recv()
            await mod.send(json.dumps({"type": "ask", "stream": "s1", "question": "屏幕上写了什么？", "ref": "q1"}))
            assert json.loads(await mod.recv())["type"] == "accepted"
            answer = json.loads(await mod.recv())
            assert answer["type"] == "answer" and "今晚的主题是星空" in answer["text"] and answer["ref"] == "q1"

    asyncio.run(go())


def test_a_danmaku_relay_may_ask_and_sees_only_its_answers(responder_server: ServerThread) -> None:
    s = responder_server

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with connect(f"ws://127.0.0.1:{s.port}/ws?token=relay-secret-1") as relay, connect(s.ws_url("moderator")) as mod:
            for ws in (relay, mod):
                await ws.recv()
                await ws.send(json.dumps({"type": "subscribe", "channels": ["answers"], "since": 10**9}))
                await ws.recv()
            await mod.send(json.dumps({"type": "ask", "stream": "s1", "question": "moderator question", "ref": "m"}))
            await mod.recv()  # accepted
            mod_answer = json.loads(await mod.recv())
            await relay.send(json.dumps({"type": "ask", "stream": "s1", "question": "弹幕: 屏幕上写了什么？", "ref": "r"}))
            assert json.loads(await relay.recv())["type"] == "accepted"
            relay_answer = json.loads(await relay.recv())  # its own answer, not the moderator's
            async with connect(s.ws_url("submitter")) as plain:
                await plain.recv()
                await plain.send(json.dumps({"type": "ask", "stream": "s1", "question": "x", "ref": "p"}))
                refused = json.loads(await plain.recv())
            return mod_answer, relay_answer, refused

    mod_answer, relay_answer, refused = asyncio.run(go())
    assert mod_answer["question"] == "moderator question"
    assert relay_answer["type"] == "answer" and relay_answer["asker"] == "danmaku-relay" and "今晚的主题是星空" in relay_answer["text"]
    assert refused["code"] == "forbidden"


def test_persona_errors_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('id = "x"\nname = "X"\nreply_length = 9000\n')
    with pytest.raises(ConfigError, match=r"reply_length \(line 3\)"):
        load_persona(p)
    assert load_persona(MODELS / "personas/xingmiao.toml").name == "星喵"


def test_http_infer_screens_then_answers(responder_server: ServerThread) -> None:
    api = responder_server.server.api
    assert api is not None
    base = f"http://127.0.0.1:{api.port}"
    auth = {"Authorization": f"Bearer {TOKENS['submitter']}"}
    cat = b64(rgb("chelsea"))
    with httpx.Client(base_url=base, timeout=60) as c:
        assert c.post("/vlm/infer", json={"image": cat}).status_code == 401
        r = c.post("/vlm/infer", json={"image": cat}, headers={"Authorization": f"Bearer {TOKENS['overlay']}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert c.get("/vlm/infer", headers=auth).status_code == 405
        assert c.get("/nope", headers=auth).status_code == 404
        assert c.get("/healthz").json() == {"ok": True}
        # a clean image: answered (the local backend here), on one keep-alive connection
        r = c.post("/vlm/infer", json={"image": cat, "question": "图里有什么？"}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "local" and body["answer"] and len(body["id"]) == 16
        r = c.post("/vlm/infer", json={"image": "data:image/jpeg;base64," + cat}, headers=auth)  # no question: persona reply
        persona = load_persona(MODELS / "personas/xingmiao.toml")
        assert r.status_code == 200 and any(p in r.json()["answer"] for p in [*persona.catchphrases, *persona.examples, persona.name])
        # refused images say why
        r = c.post("/vlm/infer", json={"image": b64(caption("加微信 xiaomei88 领福利"))}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["reason"] == "contact_spam"
        bad = {
            "not json": (b"{nope", 400, "bad_json"),
            "array": (b"[1]", 400, "bad_json"),
            "extra field": (json.dumps({"image": cat, "size": 3}).encode(), 400, "bad_field"),
            "no image": (json.dumps({"question": "hi"}).encode(), 400, "bad_field"),
            "not base64": (json.dumps({"image": "***"}).encode(), 400, "bad_image"),
            "not an image": (json.dumps({"image": base64.b64encode(b"hello world" * 20).decode()}).encode(), 400, "bad_image"),
            "bomb": (json.dumps({"image": base64.b64encode(png_header(100_000, 100_000)).decode()}).encode(), 413, "image_too_large"),
            "unknown stream": (json.dumps({"image": cat, "stream": "zzz"}).encode(), 400, "unknown_stream"),
            "long question": (json.dumps({"image": cat, "question": "x" * 2000}).encode(), 400, "bad_field"),
        }
        for name, (payload, status, code) in bad.items():
            r = c.post("/vlm/infer", content=payload, headers={**auth, "Content-Type": "application/json"})
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), name
        r = c.post("/vlm/infer", content=b"x", headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 415
    # a body over the limit is refused from its Content-Length, before it is read
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        head = f"POST /vlm/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['submitter']}\r\n"
        sock.sendall((head + "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{").encode())
        reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 413") and "too_large" in reply
    # garbage instead of HTTP
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 hello\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    # the per-token rate limit (burst 30, 5/s) answers 429, not silence
    with httpx.Client(base_url=base, timeout=60) as c:
        codes = [c.post("/vlm/infer", content=b"{}", headers={**auth, "Content-Type": "application/json"}).status_code for _ in range(40)]
    assert 429 in codes and codes[0] == 400


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w×h pixels (a decompression bomb's header)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
