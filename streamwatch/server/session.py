"""One WebSocket client: hello, subscriptions with replay, live delivery, and its requests.

Delivery runs in its own task: replay stored events after ``since`` page by page, then register with
the bus at the exact id reached (no await between the check and the registration, so there is no gap
and no duplicate at the seam), then send live events as they arrive — one frame per event, or one
``batch`` frame when several are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streamwatch.errors import ActionRefused, StreamwatchError
from streamwatch.events.bus import Chunk, Subscription
from streamwatch.events.model import AlertEvent, HealthEvent, HealthKind, RejectedEvent, ReplyEvent, ReviewEvent
from streamwatch.server import protocol
from streamwatch.server.auth import Principal, RateLimiter, resolve_channels
from streamwatch.server.protocol import (
    Ack,
    Act,
    AddStream,
    AskMsg,
    FeedbackMsg,
    ListStreams,
    Ping,
    ProtocolError,
    RemoveStream,
    SubmitMsg,
    Subscribe,
    SwitchActions,
    SwitchModel,
)
from streamwatch.server.submit import Question, Submission, check_image, decode_base64, rejection, thumbnail_jpeg

if TYPE_CHECKING:
    from streamwatch.server.server import EventServer

logger = logging.getLogger(__name__)

CLOSE_LAGGING = 4001  # fell too far behind; resume with since
CLOSE_ABUSE = 1008  # policy violation: too many bad messages
ANSWER_TIMEOUT_S = 120.0
BATCH_BYTES = 256 * 1024
_ACTIONS: dict[type, str] = {
    Ack: "ack",
    Act: "act",
    SwitchActions: "switch_actions",
    SubmitMsg: "submit",
    AskMsg: "ask",
    SwitchModel: "switch_model",
    FeedbackMsg: "feedback",
    AddStream: "add_stream",
    RemoveStream: "remove_stream",
    ListStreams: "list_streams",
}


class ClientSession:
    def __init__(self, server: EventServer, ws: ServerConnection, principal: Principal) -> None:
        self.server = server
        self.ws = ws
        self.who = principal
        self.cfg = server.cfg
        self.sub: Subscription | None = None
        self.delivery: asyncio.Task[None] | None = None
        self.bad: deque[float] = deque()
        self.limit = RateLimiter(self.cfg.rate_per_s, self.cfg.rate_burst)

    async def run(self) -> None:
        bus = self.server.bus
        try:
            await self.ws.send(
                protocol.frame(
                    "hello",
                    role=self.who.role.value,
                    name=self.who.name,
                    last_id=bus.last_id,
                    ui={"language": self.server.ui.language, "timezone": self.server.ui.timezone},  # the desk's defaults
                    limits={
                        "message_bytes": self.cfg.max_message_kb * 1024,
                        "submission_bytes": int(self.cfg.max_submission_mb * 1024 * 1024),
                        "rate_per_s": self.cfg.rate_per_s,
                    },
                )
            )
            async for message in self.ws:
                if not await self._on_message(message):
                    break
        except ConnectionClosed:
            pass
        finally:
            self._drop_subscription()

    # --- inbound -------------------------------------------------------------------------------

    async def _on_message(self, message: str | bytes) -> bool:
        """Handle one client message; False when the connection should close."""
        sub_limit = int(self.cfg.max_submission_mb * 1024 * 1024)
        ref = None
        try:
            if len(message) > sub_limit:
                raise ProtocolError("too_large", f"message is {len(message)} bytes; the limit is {sub_limit}")
            obj = protocol.loads(message)
            if obj.get("type") != "submit" and len(message) > self.cfg.max_message_kb * 1024:
                raise ProtocolError(
                    "too_large", f"message is {len(message)} bytes; the limit is {self.cfg.max_message_kb} KiB", obj.get("ref")
                )
            msg = protocol.parse(obj)
            ref = msg.ref
            self.server.metrics.client_messages.labels(type(msg).__name__.lower()).inc()
            now = time.monotonic()
            # every message counts against this connection; requests that cost work (submit, ask, ack)
            # also against the token, shared by all its connections
            shared = isinstance(msg, Ack | Act | SubmitMsg | AskMsg | SwitchModel | FeedbackMsg | AddStream | RemoveStream)
            if not self.limit.allow(now) or (shared and not self.server.limiter(self.who.name).allow(now)):
                await self._error("rate_limited", f"more than {self.cfg.rate_per_s}/s; slow down", ref)
                return True
            await self._dispatch(msg)
        except ProtocolError as e:
            await self._error(e.code, e.message, e.ref or ref)
            return await self._count_bad()
        return True

    async def _count_bad(self) -> bool:
        now = time.monotonic()
        self.bad.append(now)
        while self.bad and now - self.bad[0] > 60:
            self.bad.popleft()
        if len(self.bad) >= self.cfg.abuse_limit:
            logger.warning("closing %s (%s): %d bad messages in a minute", self.who.name, self.who.role.value, len(self.bad))
            await self.ws.close(CLOSE_ABUSE, "too many bad messages")
            return False
        return True

    async def _error(self, code: str, message: str, ref: str | None) -> None:
        self.server.metrics.client_errors.labels(code).inc()
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(protocol.error_frame(code, message, ref))

    async def _dispatch(self, msg: protocol.ClientMessage) -> None:
        if isinstance(msg, Ping):
            await self.ws.send(protocol.frame("pong", ref=msg.ref, last_id=self.server.bus.last_id))
            return
        if isinstance(msg, Subscribe):
            await self._subscribe(msg)
            return
        action = _ACTIONS[type(msg)]
        if not self.who.may(action):
            raise ProtocolError("forbidden", f"role {self.who.role.value!r} may not {action}", msg.ref)
        admin = self.server.stream_admin
        if isinstance(msg, AddStream):
            listed = await admin.add(msg.stream, self.who.name, msg.ref)
            await self.ws.send(protocol.frame("stream_added", ref=msg.ref, stream=listed))
        elif isinstance(msg, RemoveStream):
            await admin.remove(msg.stream, self.who.name, msg.ref)
            await self.ws.send(protocol.frame("stream_removed", ref=msg.ref, stream=msg.stream))
        elif isinstance(msg, ListStreams):
            await self.ws.send(protocol.frame("streams", ref=msg.ref, streams=admin.list(msg.ref)))
        elif isinstance(msg, Ack):
            await self._ack(msg)
        elif isinstance(msg, Act):
            await self._act(msg)
        elif isinstance(msg, SwitchActions):
            await self._switch_actions(msg)
        elif isinstance(msg, SubmitMsg):
            await self._submit(msg)
        elif isinstance(msg, AskMsg):
            await self._ask(msg)
        elif isinstance(msg, FeedbackMsg):
            await self._feedback(msg)
        else:
            await self._switch(msg)

    def _check_stream(self, stream: str, ref: str | None) -> None:
        if self.server.streams and stream not in self.server.streams:
            raise ProtocolError("unknown_stream", f"no stream {stream!r}; known: {sorted(self.server.streams)}", ref)

    # --- subscribe + delivery ------------------------------------------------------------------

    async def _subscribe(self, msg: Subscribe) -> None:
        types, refused = resolve_channels(self.who, list(msg.channels))
        if refused:
            await self._error("forbidden", f"role {self.who.role.value!r} cannot see channels {refused}", msg.ref)
        if not types:
            return
        self._drop_subscription()
        owner = self.who.name if self.who.private else None
        bus = self.server.bus
        since = bus.last_id if msg.since is None else min(msg.since, bus.last_id)
        await self.ws.send(
            protocol.frame(
                "subscribed", ref=msg.ref, channels=[c for c in msg.channels if c not in refused], streams=msg.streams, since=since
            )
        )
        self.delivery = asyncio.create_task(self._deliver(types, msg.streams, owner, since), name=f"deliver-{self.who.name}")
        self.delivery.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error("delivery to %s failed; closing", self.who.name, exc_info=task.exception())
        asyncio.get_running_loop().create_task(self.ws.close(1011, "internal error"))

    def _drop_subscription(self) -> None:
        if self.delivery is not None:
            self.delivery.cancel()
            self.delivery = None
        if self.sub is not None:
            self.server.bus.unsubscribe(self.sub)
            self.sub = None

    async def _deliver(self, types: frozenset[str], streams: tuple[str, ...] | None, owner: str | None, since: int) -> None:
        bus = self.server.bus
        page = self.cfg.replay_page
        probe = Subscription(types, streams, owner, 0)
        cursor = since
        try:
            while True:  # replay until caught up with what the bus has broadcast
                upto = bus.last_id
                if cursor >= upto:
                    self.sub = bus.subscribe(types, streams, owner, self.cfg.client_queue)  # no await since the check
                    break
                rows = await bus.read(cursor, upto, probe, page)
                cursor = rows[-1].id if len(rows) == page else upto
                if rows:
                    await self._send([r.text for r in rows])
            sub = self.sub
            while True:
                await sub.wake.wait()
                if sub.lagging:
                    self.server.metrics.lagging.inc()
                    logger.warning("client %s fell behind by %d events; disconnecting", self.who.name, self.cfg.client_queue)
                    with contextlib.suppress(ConnectionClosed):
                        async with asyncio.timeout(1):
                            await self.ws.send(protocol.error_frame("lagging", "too far behind; reconnect with since=<last id seen>"))
                    await self.ws.close(CLOSE_LAGGING, "lagging")
                    return
                await self._send_chunks(sub.take(page))
        except ConnectionClosed:
            return

    async def _send(self, texts: list[str]) -> None:
        """Send events as single frames or batches of at most ``BATCH_BYTES`` (clients' default 1 MiB cap)."""
        if sum(map(len, texts)) <= BATCH_BYTES:
            await self.ws.send(texts[0] if len(texts) == 1 else protocol.batch_frame(texts))
            return
        chunk: list[str] = []
        size = 0
        for text in texts:
            if chunk and size + len(text) > BATCH_BYTES:
                await self.ws.send(chunk[0] if len(chunk) == 1 else protocol.batch_frame(chunk))
                chunk, size = [], 0
            chunk.append(text)
            size += len(text) + 1
        if chunk:
            await self.ws.send(chunk[0] if len(chunk) == 1 else protocol.batch_frame(chunk))

    async def _send_chunks(self, chunks: list[Chunk]) -> None:
        """Live delivery: one chunk (the usual case) goes out as its shared, already encoded frame."""
        if len(chunks) == 1:
            chunk = chunks[0]
            if chunk.frame is None:
                texts = chunk.texts
                text = texts[0] if len(texts) == 1 else protocol.batch_frame(texts)
                chunk.frame = text.encode() if len(text) <= BATCH_BYTES else b""
            if chunk.frame:
                await self.ws.send(chunk.frame, text=True)
                return
        await self._send([t for c in chunks for t in c.texts])

    # --- requests ------------------------------------------------------------------------------

    async def _ack(self, msg: Ack) -> None:
        store = self.server.store
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(None, store.get, msg.id)
        if not isinstance(target, AlertEvent):
            raise ProtocolError("unknown_alert", f"no alert with id {msg.id}", msg.ref)
        review = ReviewEvent(
            stream=target.stream, at=time.time(), offset=target.offset, alert_id=msg.id, action=msg.action, by=self.who.name, note=msg.note
        )
        stored = await self.server.bus.publish(review)
        await self.ws.send(protocol.frame("acked", ref=msg.ref, id=stored.id, alert_id=msg.id, action=msg.action.value))

    async def _act(self, msg: Act) -> None:
        desk = self.server.actions
        if desk is None:
            raise ProtocolError("no_actions", "this server runs no actions on streams", msg.ref)
        target = await asyncio.get_running_loop().run_in_executor(None, self.server.store.get, msg.alert)
        if not isinstance(target, AlertEvent):
            raise ProtocolError("unknown_alert", f"no alert with id {msg.alert}", msg.ref)
        try:
            ev = await desk.confirm(target, self.who.name)
        except ActionRefused as e:
            raise ProtocolError("action_refused", str(e), msg.ref) from e
        await self.ws.send(
            protocol.frame("acted", ref=msg.ref, id=ev.id, alert_id=msg.alert, action=ev.action, status=ev.status.value, detail=ev.detail)
        )

    async def _switch_actions(self, msg: SwitchActions) -> None:
        desk = self.server.actions
        if desk is None:
            raise ProtocolError("no_actions", "this server runs no actions on streams", msg.ref)
        if msg.stream not in desk.streams:
            raise ProtocolError("unknown_stream", f"no stream {msg.stream!r} runs here", msg.ref)
        old = desk.set_switch(msg.stream, msg.actions)
        reason = f"actions {old} → {msg.actions} ({self.who.name})"
        logger.info("stream %s: %s", msg.stream, reason)
        offset = self.server.offsets(msg.stream)
        await self.server.bus.publish(HealthEvent(stream=msg.stream, at=time.time(), offset=offset, kind=HealthKind.CONFIG, reason=reason))
        await self.ws.send(protocol.frame("actions_switched", ref=msg.ref, stream=msg.stream, old=old, actions=msg.actions))

    async def _feedback(self, msg: FeedbackMsg) -> None:
        vote, alert = await self.server.votes.cast(self.server.bus, self.who, msg)
        stored = await self.server.bus.publish(vote)
        if alert is not None:
            await self.server.bus.publish(alert)
        await self.ws.send(protocol.frame("voted", ref=msg.ref, id=stored.id, reply=msg.reply, vote=msg.vote.value))

    async def _submit(self, msg: SubmitMsg) -> None:
        self._check_stream(msg.stream, msg.ref)
        received = time.time()
        data = decode_base64(msg.image, msg.ref)
        loop = asyncio.get_running_loop()
        store = self.server.store
        mime, w, h, pixels = await loop.run_in_executor(None, check_image, data, self.cfg.max_image_pixels, msg.ref)
        # per fan (a relay token submits for many): counted on valid images, before anything is stored
        if not await self._fan_allowed(msg.user):
            who = f"user {msg.user!r}" if msg.user else "this client"
            raise ProtocolError("rate_limited", f"{who} may send {self.cfg.user_submit_per_min:g} images a minute; slow down", msg.ref)
        try:
            thumb = await loop.run_in_executor(None, lambda: store.save_image(msg.stream, thumbnail_jpeg(pixels)))
        except StreamwatchError as e:
            raise ProtocolError("server_error", f"could not store the image: {e}", msg.ref) from e
        sub = Submission(uuid.uuid4().hex[:16], msg.stream, self.who.name, msg.user, msg.text, data, mime, w, h, thumb, received)
        await self.ws.send(protocol.frame("accepted", ref=msg.ref, submission=sub.id, width=w, height=h))
        self._spawn(self._answer_submission(sub))

    async def _fan_allowed(self, user: str) -> bool:
        """The fan's rate limit: cluster-wide on a gateway (the gateway's own if the cluster cannot say)."""
        if self.server.forwarder is not None:
            try:
                return await self.server.forwarder.allow(self.who.name, user)
            except StreamwatchError as e:
                logger.warning("fan rate limit: the cluster cannot say (%s); this gateway's own limit holds", e)
        return self.server.user_limiter(self.who.name, user).allow(time.monotonic())

    async def _answer_submission(self, sub: Submission) -> None:
        server = self.server

        def rejected(reason: str, message: str) -> RejectedEvent:
            return rejection(sub, reason, message, server.offsets(sub.stream))

        result: ReplyEvent | RejectedEvent | None
        if server.forwarder is not None:  # a worker answers through the event log
            try:
                result = await server.forwarder.forward_submission(sub)
            except StreamwatchError as e:
                logger.error("stream %s: submission %s not handed to a worker: %s", sub.stream, sub.id, e)
                result = rejected("responder_failed", "no worker could take the image")
            if result is None:
                return
        elif server.responder is None:
            result = rejected("no_responder", "no responder is configured for audience images")
        else:
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    result = await server.responder.reply(sub)
            except Exception as e:
                logger.exception("responder failed on submission %s", sub.id)
                result = rejected("responder_failed", type(e).__name__)
        await server.bus.publish(result)

    async def _ask(self, msg: AskMsg) -> None:
        self._check_stream(msg.stream, msg.ref)
        responder, forwarder = self.server.responder, self.server.forwarder
        if responder is None and forwarder is None:
            raise ProtocolError("no_responder", "no responder is configured for questions", msg.ref)
        q = Question(uuid.uuid4().hex[:16], msg.stream, self.who.name, msg.question, msg.ref, time.time())
        await self.ws.send(protocol.frame("accepted", ref=msg.ref, question=q.id))
        if forwarder is not None:  # a worker with the qa role answers through the event log

            async def forward() -> None:
                try:
                    await forwarder.forward_question(q)
                except StreamwatchError as e:
                    logger.error("stream %s: question %s not handed to a worker: %s", q.stream, q.id, e)
                    await self._error("responder_failed", "no worker could take the question", msg.ref)

            self._spawn(forward())
            return
        assert responder is not None

        async def answer() -> None:
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    await self.server.bus.publish(await responder.answer(q))
            except Exception:
                logger.exception("responder failed on question %s", q.id)
                await self._error("responder_failed", "the question could not be answered", msg.ref)

        self._spawn(answer())

    async def _switch(self, msg: SwitchModel) -> None:
        switcher = self.server.models
        if switcher is None:
            raise ProtocolError("no_models", "this server has no VLM tier to switch", msg.ref)
        await self.ws.send(protocol.frame("accepted", ref=msg.ref, role=msg.role, model=msg.model))

        async def switch() -> None:  # loading a model can take minutes: the connection stays responsive
            try:
                report = await switcher.switch_model(msg.role, msg.model, self.who.name)
            except StreamwatchError as e:
                await self._error("switch_failed", str(e), msg.ref)
                return
            except Exception:
                logger.exception("model switch %s → %s failed", msg.role, msg.model)
                await self._error("switch_failed", "internal error while switching", msg.ref)
                return
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(
                    protocol.frame(
                        "switched", ref=msg.ref, role=report.role, old=report.old, model=report.new, seconds=round(report.seconds, 3)
                    )
                )

        self._spawn(switch())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)
