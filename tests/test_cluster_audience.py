"""Fans' images and live Q&A through any gateway of a cluster: real 3-node NATS, real worker and gateway
processes, a real OpenAI-compatible VLM server (tests/chat_server.py), a real RTMP show from nginx.

Roles are split as in a real deployment: ``w0`` runs the show and answers nothing (``roles = []``);
``w1`` and ``w2`` run no streams (``capacity = 0``) and answer fans' images and questions, so every
answer about the picture comes from the frame the cluster shares.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from chat_server import Answer, ChatServer
from cluster_rig import MODERATOR, Moderator, Node, Rig, request, write_config
from conftest import Nginx, publish, stop
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streamwatch.vlm.backend import VLMRequest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_overlay_suite import SuiteClip, write_clip

FANS_SECRET = "fans-secret"
ACK_WAIT_S = 6.0
SLOW_S = 12.0  # the first image's VLM call: long enough for the kill to land in it
BUDGET = 2  # the model's cluster-wide VLM budget
QA_MARK = "Answer the moderator's question"


@dataclass
class Vlm:
    """What the VLM server saw: each request's kind, start time and images; the peak in flight."""

    slow_next: bool = False
    calls: list[tuple[str, float, list[tuple[int, int] | None]]] = field(default_factory=list)
    now: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def respond(self, req: VLMRequest) -> Answer:
        kind = "qa" if QA_MARK in req.prompt else "reply"
        sizes = [None if (img := cv2.imdecode(np.frombuffer(d, np.uint8), 1)) is None else (img.shape[1], img.shape[0]) for d in req.images]
        with self.lock:
            self.calls.append((kind, time.time(), sizes))
            slow, self.slow_next = self.slow_next and kind == "reply", self.slow_next and kind != "reply"
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(SLOW_S if slow else 0.3)
        finally:
            with self.lock:
                self.now -= 1
        return Answer("台上有一只猫在喝咖啡。" if kind == "qa" else "谢谢你的画, 星喵很喜欢!")

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for k, _, _ in self.calls if k == kind)


class Fan:
    """A submitter connection (one token, many fans' user names) in a thread: every frame it gets."""

    def __init__(self, url: str) -> None:
        self.ws = connect(url, additional_headers={"Authorization": f"Bearer {FANS_SECRET}"}, open_timeout=30, max_size=None).__enter__()
        self.ws.recv(30)  # hello
        self.frames: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.ws.send(json.dumps({"type": "subscribe", "channels": ["replies"], "ref": "sub"}))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                frame = json.loads(raw)
                batch = frame["events"] if frame.get("type") == "batch" else [frame]
                with self.lock:
                    self.frames.extend(batch)
        except (ConnectionClosed, OSError):
            return

    def submit(self, image: bytes, user: str, text: str, ref: str, stream: str = "show") -> None:
        b64 = base64.b64encode(image).decode()
        self.ws.send(json.dumps({"type": "submit", "stream": stream, "image": b64, "user": user, "text": text, "ref": ref}))

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.frames)

    def wait(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames = self.snapshot()
            if pred(frames):
                return frames
            time.sleep(0.1)
        raise AssertionError(f"{what}: not seen within {timeout:g}s")

    def close(self) -> None:
        self.ws.close()
        self.thread.join(10)


def picture(seed: int, quality: int = 92) -> bytes:
    """A distinct 480×320 JPEG per seed (pHashes far apart); ``quality`` changes the bytes, not the picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.resize(small, (480, 320), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf)


def answers_to(frames: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") in ("reply", "rejected") and f.get("submission") == sid]


@dataclass
class Audience:
    rig: Rig
    vlm: Vlm
    g1: Node
    g2: Node


@pytest.fixture(scope="module")
def audience(nats3: Any, nginx: Nginx, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audience]:
    root = tmp_path_factory.mktemp("audience")
    clip = root / "show.mp4"
    write_clip(SuiteClip("show", "coffee", 640, 360, 10, 12, 12.0, ()), clip)
    publisher = publish(clip, nginx.rtmp("audience"), loop=True)
    vlm = Vlm()
    with ChatServer(vlm.respond) as srv:
        model = {"id": "m", "backend": "openai", "endpoint": srv.url, "model_name": "m", "capabilities": ["reply", "qa"],
                 "concurrency": BUDGET, "timeout_s": 30}  # fmt: skip
        registry = root / "registry.json"
        registry.write_text(json.dumps({"models": [model], "roles": {"reply": ["m", "local"], "qa": ["m", "local"]}}))
        extra = f"""[server]
rate_per_s = 200
rate_burst = 500
abuse_limit = 1000
user_submit_per_min = 0.6
user_submit_burst = 3
[[server.tokens]]
name = "fans"
role = "submitter"
secret = "{FANS_SECRET}"
[vlm]
registry = "{registry}"
"""
        answering = f"capacity = 0\nrequest_ack_wait_s = {ACK_WAIT_S}\nanswer_concurrency = 2"
        ingest = write_config(root / "ingest.toml", nats3.urls, name="aud", cluster_extra="roles = []", extra=extra)
        rig = Rig(root, write_config(root / "answer.toml", nats3.urls, name="aud", cluster_extra=answering, extra=extra))
        try:
            rig.add("worker", "w0", config=ingest)
            rig.add("worker", "w1")
            rig.add("worker", "w2")
            g1, g2 = rig.add("gateway", "g1"), rig.add("gateway", "g2")
            rig.wait_ready()
            added = request(g1.url, {"type": "add_stream", "stream": {"id": "show", "source": nginx.rtmp("audience")}})
            assert added["type"] == "stream_added", added
            yield Audience(rig, vlm, g1, g2)
        finally:
            rig.stop()
            stop(publisher)


@contextlib.contextmanager
def logs_on_failure(rig: Rig) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(rig.logs())
        raise


@pytest.mark.timeout(300)
def test_a_fan_on_gateway_2_gets_one_reply_when_the_answering_worker_is_killed(audience: Audience) -> None:
    with logs_on_failure(audience.rig):
        _kill_mid_request_then_ask(audience)


def _kill_mid_request_then_ask(a: Audience) -> None:
    mod = Moderator(a.g1.url, channels=("replies", "answers"))
    mod.start()
    fan = Fan(a.g2.url)
    try:
        a.vlm.slow_next = True
        fan.submit(picture(1000), "小红", "送给星喵", "kill")
        accepted = fan.wait(lambda fs: any(f.get("ref") == "kill" for f in fs), 30, "accepted")
        sid = next(f for f in accepted if f.get("ref") == "kill")["submission"]
        deadline = time.monotonic() + 60
        while a.vlm.count("reply") < 1:  # the VLM call has started: the worker is mid-request
            assert time.monotonic() < deadline, a.rig.logs()
            time.sleep(0.05)
        holder = next(w for w in ("w1", "w2") if f"answering submission {sid}" in a.rig.nodes[w].log.read_text(errors="replace"))
        other = "w2" if holder == "w1" else "w1"
        killed_at = time.time()
        a.rig.nodes[holder].kill()

        got = fan.wait(lambda fs: bool(answers_to(fs, sid)), 90, f"a reply to {sid} after {holder} was killed")
        took = time.time() - killed_at
        reply = answers_to(got, sid)[0]
        assert reply["type"] == "reply" and reply["model"] == "m" and "星喵" in reply["text"], reply
        assert f"answering submission {sid}" in a.rig.nodes[other].log.read_text(errors="replace")
        print(f"\nreply after the kill of {holder}: {took:.1f}s (ack wait {ACK_WAIT_S:g}s), answered by {other}")
        time.sleep(ACK_WAIT_S * 2 + 2)  # a second answer (redelivered again, or the dead worker's) would be in by now
        assert len(answers_to(fan.snapshot(), sid)) == 1
        seen = mod.wait_for(lambda evs: bool(answers_to(evs, sid)), 30, "the reply on gateway 1")
        assert [e["id"] for e in answers_to(seen, sid)] == [reply["id"]]  # one id on every gateway
        assert a.vlm.count("reply") == 2  # the killed worker's call and the one that answered

        # the console's Q&A on gateway 2 about the current picture: answered by a worker that runs no stream
        with connect(a.g2.url, additional_headers={"Authorization": f"Bearer {MODERATOR}"}, open_timeout=30) as ws:
            ws.recv(30)
            ws.send(json.dumps({"type": "subscribe", "channels": ["answers"], "ref": "s"}))
            ws.send(json.dumps({"type": "ask", "stream": "show", "question": "台上是什么?", "ref": "q1"}))
            deadline = time.monotonic() + 60
            answer = None
            while answer is None and time.monotonic() < deadline:
                frame = json.loads(ws.recv(max(0.1, deadline - time.monotonic())))
                assert frame.get("type") != "error", frame
                if frame.get("type") == "answer" and frame.get("ref") == "q1":
                    answer = frame
        assert answer is not None and answer["text"] == "台上有一只猫在喝咖啡。" and answer["model"] == "m", answer
        qa = [sizes for kind, _, sizes in a.vlm.calls if kind == "qa"]
        assert qa and qa[-1] and qa[-1][0] is not None and max(qa[-1][0]) <= 640, qa  # the shared frame went to the model
        mod.wait_for(lambda evs: any(e.get("type") == "answer" and e["id"] == answer["id"] for e in evs), 30, "the answer on gateway 1")
    finally:
        fan.close()
        mod.close()
        for node in (a.rig.nodes["w1"], a.rig.nodes["w2"]):
            if not _alive(node):  # back for the next test
                node.start()
                node.wait_ready()


@pytest.mark.timeout(300)
def test_a_drained_worker_hands_its_request_back_at_once(audience: Audience) -> None:
    """SIGTERM to the worker whose VLM call is in flight: the request goes back to the queue at once
    (answered by the other worker well before the ack wait), and the fan still gets one reply."""
    with logs_on_failure(audience.rig):
        a = audience
        fan = Fan(a.g1.url)
        try:
            a.vlm.slow_next = True
            before = a.vlm.count("reply")
            fan.submit(picture(2000), "小蓝", "晚上好", "drain")
            frames = fan.wait(lambda fs: any(f.get("ref") == "drain" for f in fs), 30, "accepted")
            sid = next(f for f in frames if f.get("ref") == "drain")["submission"]
            deadline = time.monotonic() + 60
            while a.vlm.count("reply") <= before:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            holder = next(w for w in ("w1", "w2") if f"answering submission {sid}" in a.rig.nodes[w].log.read_text(errors="replace"))
            other = "w2" if holder == "w1" else "w1"
            t0 = time.time()
            a.rig.nodes[holder].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            got = fan.wait(lambda fs: bool(answers_to(fs, sid)), 60, f"a reply to {sid} after {holder} was drained")
            took = time.time() - t0
            assert answers_to(got, sid)[0]["type"] == "reply"
            assert f"answering submission {sid}" in a.rig.nodes[other].log.read_text(errors="replace")
            print(f"\nreply after {holder} was drained: {took:.1f}s (ack wait {ACK_WAIT_S:g}s), answered by {other}")
            assert took < ACK_WAIT_S, f"handed back at once, not after the ack wait: {took:.1f}s"
            assert a.rig.nodes[holder].proc.wait(30) == 0  # type: ignore[union-attr]
            time.sleep(2)
            assert len(answers_to(fan.snapshot(), sid)) == 1
        finally:
            fan.close()
            for node in (a.rig.nodes["w1"], a.rig.nodes["w2"]):
                if not _alive(node):
                    node.start()
                    node.wait_ready()


def _alive(node: Node) -> bool:
    return node.proc is not None and node.proc.poll() is None


@pytest.mark.timeout(300)
def test_a_burst_of_100_images_from_20_fans_over_two_gateways(audience: Audience) -> None:
    """Each fan sends 5 images alternately through both gateways (its limit, 3, holds cluster-wide);
    fans 2k and 2k+1 send the same 5 pictures through opposite gateways (re-encoded: other bytes)."""
    with logs_on_failure(audience.rig):
        _burst(audience)


def _burst(a: Audience) -> None:
    mods = [Moderator(g.url, channels=("replies",)) for g in (a.g1, a.g2)]
    for m in mods:
        m.start()
    fans = [Fan(a.g1.url), Fan(a.g2.url)]
    deadline = time.monotonic() + SLOW_S + 10
    while a.vlm.now:  # the calls the earlier tests abandoned have ended
        assert time.monotonic() < deadline
        time.sleep(0.1)
    replies_before = a.vlm.count("reply")
    a.vlm.peak = 0
    try:
        sent: dict[str, tuple[int, int]] = {}  # ref → (fan, picture)
        for j in range(5):
            for f in range(20):
                pic = (f // 2) * 5 + j
                ref = f"f{f}-{j}"
                sent[ref] = (f, pic)
                fans[(f + j) % 2].submit(picture(pic, 92 if f % 2 == 0 else 80), f"粉丝{f}", f"第{j}张", ref)

        def settled(frames: list[dict[str, Any]]) -> bool:
            return len({fr["ref"] for fr in frames if fr.get("ref") in sent}) >= 50

        outcome = {
            fr["ref"]: fr for fn in fans for fr in fn.wait(settled, 120, "every submission accepted or refused") if fr.get("ref") in sent
        }
        assert set(outcome) == set(sent), set(sent) - set(outcome)
        accepted = {ref: fr["submission"] for ref, fr in outcome.items() if fr["type"] == "accepted"}
        limited = [ref for ref, fr in outcome.items() if fr["type"] == "error" and fr["code"] == "rate_limited"]
        assert len(accepted) + len(limited) == 100, Counter(fr["type"] for fr in outcome.values())
        per_fan = Counter(sent[ref][0] for ref in accepted)
        assert all(per_fan[f] == 3 for f in range(20)), per_fan  # through both gateways, one budget per fan

        ids = set(accepted.values())

        def all_answered(frames: list[dict[str, Any]]) -> bool:
            return ids <= {fr.get("submission") for fr in frames if fr.get("type") in ("reply", "rejected")}

        t0 = time.monotonic()
        for fn in fans:
            fn.wait(all_answered, 120, "a reply or a rejection for every accepted image")
        took = time.monotonic() - t0
        time.sleep(ACK_WAIT_S + 2)  # nothing doubled, even late
        # the fans' token is connected to both gateways: each connection gets each answer once, under one id
        views = [{sid: answers_to(fn.snapshot(), sid) for sid in ids} for fn in fans]
        for view in views:
            assert all(len(v) == 1 for v in view.values()), {k: len(v) for k, v in view.items() if len(v) != 1}
        by_sub = views[0]
        assert {sid: v[0]["id"] for sid, v in by_sub.items()} == {sid: v[0]["id"] for sid, v in views[1].items()}
        by_picture: dict[int, list[dict[str, Any]]] = {}
        for ref, sid in accepted.items():
            by_picture.setdefault(sent[ref][1], []).append(by_sub[sid][0])
        for pic, evs in by_picture.items():
            kinds = Counter(e["type"] if e["type"] == "reply" else e["reason"] for e in evs)
            assert kinds["reply"] == 1 and kinds["duplicate"] == len(evs) - 1, (pic, kinds)
        replies = sum(1 for evs in by_picture.values() for e in evs if e["type"] == "reply")
        assert a.vlm.count("reply") - replies_before == replies  # one VLM call per image answered, none for duplicates
        assert a.vlm.peak <= BUDGET, a.vlm.peak  # the model's budget held across both answering workers
        # every gateway has every answer under the same id, and the thumbnail of a reply on the other gateway
        seen = [
            {e.get("submission"): e["id"] for e in m.wait_for(lambda evs: ids <= {e.get("submission") for e in evs}, 60, "all")}
            for m in mods
        ]
        assert seen[0] == seen[1] == {sid: v[0]["id"] for sid, v in by_sub.items()}
        thumb = next(e for evs in by_picture.values() for e in evs if e["type"] == "reply")["image"]
        for g in (a.g1, a.g2):
            assert _get(f"http://127.0.0.1:{g.port}{thumb}?token={MODERATOR}")[:2] == b"\xff\xd8"
        dups = sum(len(evs) - 1 for evs in by_picture.values())
        print(f"\nburst: 100 sent, {len(accepted)} accepted, {len(limited)} rate-limited, {replies} replies, {dups} duplicates;"
              f" all answered {took:.1f}s after the last acceptance; VLM peak in flight {a.vlm.peak}")  # fmt: skip
    finally:
        for fn in fans:
            fn.close()
        for m in mods:
            m.close()


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return bytes(r.read())


@pytest.mark.timeout(300)
def test_feedback_and_the_summary_from_any_gateway(audience: Audience) -> None:
    """A fan's vote on its reply sent through gateway 2 reaches gateway 1's moderator under one id, and
    the post-show summary written from gateway 2's own store has the fan's image in its collage."""
    from streamwatch.cli import main

    with logs_on_failure(audience.rig):
        a = audience
        mod = Moderator(a.g1.url, channels=("replies", "feedback"))
        mod.start()
        fan1, fan2 = Fan(a.g1.url), Fan(a.g2.url)
        try:
            fan1.submit(picture(4242), "小绿", "给你画的", "fb")
            frames = fan1.wait(lambda fs: any(f.get("ref") == "fb" for f in fs), 30, "accepted")
            sid = next(f for f in frames if f.get("ref") == "fb")["submission"]
            reply = answers_to(fan1.wait(lambda fs: bool(answers_to(fs, sid)), 90, f"a reply to {sid}"), sid)[0]
            assert reply["type"] == "reply", reply
            fan2.wait(lambda fs: bool(answers_to(fs, sid)), 30, "the reply on gateway 2")
            fan2.ws.send(json.dumps({"type": "feedback", "reply": reply["id"], "vote": "up", "user": "小绿", "ref": "vote"}))
            voted = _answer(fan2, "vote")
            assert voted["type"] == "voted" and voted["reply"] == reply["id"], voted
            fan2.ws.send(json.dumps({"type": "feedback", "reply": reply["id"], "vote": "up", "user": "小绿", "ref": "again"}))
            assert _answer(fan2, "again").get("code") == "duplicate_vote"  # one vote per voter, cluster-wide

            def the_vote(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [e for e in evs if e.get("type") == "feedback" and e["id"] == voted["id"]]

            seen = mod.wait_for(lambda evs: bool(the_vote(evs)), 30, "the vote on gateway 1")
            assert [e["reply_id"] for e in the_vote(seen)] == [reply["id"]]
        finally:
            fan1.close()
            fan2.close()
            mod.close()
        out = a.g2.data.parent / "g2-summary"
        assert main(["summary", "show", "--data", str(a.g2.data), "-o", str(out), "--template"]) == 0
        assert (out / "collage.jpg").read_bytes()[:2] == b"\xff\xd8"


def _answer(fan: Fan, ref: str) -> dict[str, Any]:
    frames = fan.wait(lambda fs: any(f.get("ref") == ref for f in fs), 30, f"the answer to {ref}")
    return next(f for f in frames if f.get("ref") == ref)
