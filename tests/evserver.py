"""Test helpers: a real event store + bus + WebSocket server on 127.0.0.1:0 in a background loop thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from streamwatch.config import ServerConfig, TokenConfig
from streamwatch.events.bus import EventBus
from streamwatch.events.model import (
    AlertEvent,
    AnswerEvent,
    Event,
    Evidence,
    HealthEvent,
    HealthKind,
    RejectedEvent,
    ReplyEvent,
    Severity,
    StreamState,
)
from streamwatch.events.store import EventStore, StoredEvent
from streamwatch.server import EventServer
from streamwatch.server.submit import Question, Responder, Submission

TOKENS = {
    "overlay": "overlay-secret-1",
    "moderator": "moderator-secret-1",
    "submitter": "submitter-secret-1",
    "admin": "admin-secret-1",
}


def server_config(**kw: Any) -> ServerConfig:
    tokens = [TokenConfig(name=f"{role}-client", role=role, secret=secret) for role, secret in TOKENS.items()]
    tokens.append(TokenConfig(name="submitter-two", role="submitter", secret="submitter-secret-2"))
    tokens.append(TokenConfig(name="moderator-two", role="moderator", secret="moderator-secret-2"))
    tokens.append(TokenConfig(name="danmaku-relay", role="submitter", secret="relay-secret-1", relay=True))
    return ServerConfig(port=kw.pop("port", 0), tokens=tokens, **kw)


class ServerThread:
    """Store, bus and server running in their own event loop thread; ``call`` runs coroutines there."""

    def __init__(
        self,
        data_dir: Path,
        *,
        streams: tuple[str, ...] = ("s1", "s2"),
        responder: Responder | None = None,
        latest: Callable[[str], Any] | None = None,
        **cfg: Any,
    ) -> None:
        self.data_dir = data_dir
        self.cfg = server_config(**cfg)
        self.streams = streams
        self.responder = responder
        self.latest = latest
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store: EventStore
        self.bus: EventBus
        self.server: EventServer
        self.call(self._start())

    async def _start(self) -> None:
        self.store = EventStore(self.data_dir)
        self.bus = EventBus(self.store)
        await self.bus.start()
        inferrer = self.responder if hasattr(self.responder, "infer") else None
        self.server = EventServer(self.cfg, self.bus, streams=self.streams, responder=self.responder, inferrer=inferrer, latest=self.latest)  # type: ignore[arg-type]
        await self.server.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    def ws_url(self, role: str = "moderator", **query: str) -> str:
        q = "&".join([f"token={TOKENS[role]}"] + [f"{k}={v}" for k, v in query.items()])
        return f"ws://127.0.0.1:{self.port}/ws?{q}"

    def publish(self, event: Event) -> StoredEvent:
        return self.call(self.bus.publish(event))  # type: ignore[no-any-return]

    def publish_many(self, events: list[Event]) -> list[StoredEvent]:
        async def go() -> list[StoredEvent]:
            return list(await asyncio.gather(*(self.bus.publish(e) for e in events)))

        return self.call(go())  # type: ignore[no-any-return]

    def close(self) -> None:
        async def stop() -> None:
            await self.server.stop()
            await self.bus.stop()
            self.store.close()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def alert(stream: str = "s1", offset: float = 1.0, rule: str = "contact_spam", severity: Severity = Severity.HIGH, **kw: Any) -> AlertEvent:
    return AlertEvent(
        stream=stream,
        at=time.time(),
        offset=offset,
        rule=rule,
        severity=severity,
        message=kw.pop("message", f"{rule} at {offset:.0f}s"),
        confidence=kw.pop("confidence", 0.91),
        evidence=kw.pop("evidence", Evidence(kind="ocr", text="加微信 abc123", bbox=(10, 20, 200, 60))),
        **kw,
    )


def health(stream: str = "s1", offset: float = 0.0, state: StreamState = StreamState.LIVE, **kw: Any) -> HealthEvent:
    return HealthEvent(stream=stream, at=time.time(), offset=offset, kind=kw.pop("kind", HealthKind.STATE), state=state, **kw)


class EchoResponder:
    """A real Responder implementation for tests: replies with the image size (no model)."""

    async def reply(self, submission: Submission) -> ReplyEvent | RejectedEvent:
        await asyncio.sleep(0.01)
        return ReplyEvent(
            stream=submission.stream,
            at=time.time(),
            offset=0.0,
            submission=submission.id,
            submitter=submission.submitter,
            user=submission.user,
            text=f"{submission.user} sent a {submission.width}×{submission.height} picture",
            image=submission.thumb,
        )

    async def answer(self, question: Question) -> AnswerEvent:
        return AnswerEvent(stream=question.stream, at=time.time(), offset=0.0, question=question.question, text="42", asker=question.asker)
