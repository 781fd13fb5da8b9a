"""A worker's side of fans' images and questions: pull requests, answer, publish on the event log.

For each role in ``cluster.roles`` the worker pulls from that role's durable consumer of the work
queue (:mod:`streamwatch.cluster.requests`), at most ``cluster.answer_concurrency`` requests at a time
in all; every VLM call inside also takes a slot of the cluster-wide budget (the router's admission),
so the answering never overloads a shared model. While a request runs the worker tells JetStream it
is in progress every third of ``request_ack_wait_s``; killed, it stops, and after the ack wait the
request goes to another worker. The reply, rejection or answer is published with
``Nats-Msg-Id`` = :func:`~streamwatch.cluster.requests.answer_key` (a second answer to the same
request is dropped by JetStream), then the request is acked.

An image is screened against the policy of its stream (from the desired set); a question about the
current picture is answered from this worker's own latest frame of the stream, else from the frame
the cluster shares in the ``latest`` bucket (:mod:`streamwatch.cluster.latest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from streamwatch.analysis.model import AnalyzedFrame
from streamwatch.analysis.policy import Policy
from streamwatch.cluster.desired import DesiredStreams
from streamwatch.cluster.events import JetStreamPublisher, reraise_cancel
from streamwatch.cluster.kv import NATS_ERRORS, stream_key
from streamwatch.cluster.latest import decode as decode_latest
from streamwatch.cluster.requests import RequestError, Role, answer_key, decode_question, decode_submission, stream_name, subject
from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError, StreamwatchError
from streamwatch.events.model import Event
from streamwatch.runtime.services import StreamServices
from streamwatch.server.submit import rejection
from streamwatch.vlm.responder import AudienceResponder

logger = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 120.0  # as on the single box (server/session.py)
FETCH_WAIT_S = 1.0


class Answering:
    """Answers the cluster's audience requests for ``roles``. :meth:`run` until cancelled."""

    def __init__(
        self,
        js: JetStreamContext,
        cfg: ClusterConfig,
        svc: StreamServices,
        publisher: JetStreamPublisher,
        desired: DesiredStreams,
        latest_kv: KeyValue,
        *,
        roles: Sequence[Role],
    ) -> None:
        self.js = js
        self.cfg = cfg
        self.svc = svc
        self.publisher = publisher
        self.desired = desired
        self.latest_kv = latest_kv
        self.roles = tuple(roles)
        self.slots = asyncio.Semaphore(cfg.answer_concurrency)
        self.shared: dict[str, AnalyzedFrame] = {}  # latest frames of streams run elsewhere
        self.policies: dict[str, Policy] = {}
        s = svc.settings
        self.responder = AudienceResponder(
            svc.cascade,
            self._policy,
            svc.persona,
            service=svc.vlm,
            latest=self._latest,
            offsets=self._offset,
            dedupe=False,  # the gateways checked duplicates cluster-wide; a redelivered image is no duplicate
            max_side=s.analysis.max_side,
        )
        self.answered = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _policy(self, sid: str) -> Policy:
        return self.policies[sid] if sid in self.policies else self.svc.engines.engine_for(sid).policy

    def _latest(self, sid: str) -> AnalyzedFrame | None:
        return self.svc.latest.get(sid) or self.shared.get(sid)

    def _offset(self, sid: str) -> float:
        if sid in self.svc.offsets:
            return self.svc.offsets[sid]
        frame = self.shared.get(sid)
        return frame.analysis.offset if frame is not None else 0.0

    async def run(self) -> None:
        if not self.roles:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for role in self.roles:
                    tg.create_task(self._pull(role), name=f"answering-{role}")
        finally:
            for task in list(self._tasks):
                task.cancel()  # each hands its request back (nak): another worker takes it at once
            if self._tasks:
                await asyncio.wait(self._tasks)

    async def _pull(self, role: Role) -> None:
        sub = None
        while sub is None:
            try:
                sub = await self.js.pull_subscribe_bind(role, stream_name(self.cfg))
            except NATS_ERRORS as e:
                reraise_cancel()
                logger.warning("answering %s: cannot bind to the request queue: %s; retrying", role, e)
                await asyncio.sleep(1.0)
        logger.info("answering %s requests (%s)", role, subject(self.cfg, role))
        try:
            await self._take(role, sub)
        finally:  # before the connection drains (a pending pull would hold the drain up)
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    async def _take(self, role: Role, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            await self.slots.acquire()
            try:
                msgs = await sub.fetch(1, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                reraise_cancel()
                self.slots.release()
                continue
            except NATS_ERRORS as e:
                reraise_cancel()
                self.slots.release()
                logger.warning("answering %s: fetch failed: %s", role, e)
                await asyncio.sleep(0.5)
                continue
            except BaseException:
                self.slots.release()
                raise
            for msg in msgs:
                task = asyncio.create_task(self._handle(role, msg), name=f"answer-{role}")
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.slots.release()

    async def _handle(self, role: Role, msg: Msg) -> None:
        beat = asyncio.create_task(self._in_progress(msg))
        try:
            try:
                rid, event = await self._answer(role, msg.data)
            except ClusterError as e:
                logger.error("answering %s: %s; dropped", role, e)
                await msg.term()
                return
            await self.publisher.publish(event, msg_id=answer_key(role, rid), upload=False)
            await msg.ack()
            self.answered += 1
        except StreamwatchError as e:  # the event log refused: try again later (here or elsewhere)
            logger.error("answering %s: not published: %s", role, e)
            await _quietly(msg.nak(delay=1.0))
        except NATS_ERRORS as e:
            reraise_cancel()
            logger.warning("answering %s: ack failed (%s): the request may be answered again, the fan sees one answer", role, e)
        except asyncio.CancelledError:  # stopping (drained): another worker takes it now, not after the ack wait
            await _quietly(msg.nak())
            raise
        finally:
            beat.cancel()

    async def _answer(self, role: Role, data: bytes) -> tuple[str, Event]:
        """(request id, the event to publish). Raises ClusterError for a request that cannot be read."""
        if role == "reply":
            sub = decode_submission(data)
            logger.info("stream %s: answering submission %s", sub.stream, sub.id)
            await self._load_policy(sub.stream)
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    return sub.id, await self.responder.reply(sub)
            except Exception as e:  # a fan is never left without an answer (as on the single box)
                reraise_cancel()
                logger.exception("stream %s: responder failed on submission %s", sub.stream, sub.id)
                return sub.id, rejection(sub, "responder_failed", type(e).__name__, self._offset(sub.stream))
        q = decode_question(data)
        logger.info("stream %s: answering question %s", q.stream, q.id)
        await self._load_latest(q.stream)
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return q.id, await self.responder.answer(q)
        except Exception as e:  # (the responder falls back to the local evidence: only a bug gets here)
            reraise_cancel()
            logger.exception("stream %s: responder failed on question %s", q.stream, q.id)
            raise RequestError(f"question {q.id} could not be answered: {type(e).__name__}") from e

    async def _in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.cfg.request_ack_wait_s / 3)
            await _quietly(msg.in_progress())

    async def _load_policy(self, sid: str) -> None:
        """The stream's own policy (the desired set names it); the default one if it cannot be read."""
        try:
            cfg = await self.desired.get(sid)
            engine = await self.svc.engines.load(cfg.policy if cfg is not None and cfg.policy else self.svc.engines.default)
            self.policies[sid] = engine.policy
        except StreamwatchError as e:
            logger.warning("stream %s: its policy cannot be read (%s); the image is screened with the default", sid, e)

    async def _load_latest(self, sid: str) -> None:
        """The frame the cluster shares for ``sid``, unless this worker runs it."""
        if sid in self.svc.latest:
            return
        try:
            entry = await self.latest_kv.get(stream_key(sid))
        except NATS_ERRORS as e:
            reraise_cancel()
            logger.info("stream %s: no shared latest frame (%s); answering without the picture", sid, type(e).__name__)
            return
        if entry.value:
            try:
                self.shared[sid] = await asyncio.get_running_loop().run_in_executor(None, decode_latest, sid, entry.value)
            except (ValueError, KeyError) as e:
                logger.warning("stream %s: unreadable latest frame: %s", sid, e)


async def _quietly(call: Awaitable[None]) -> None:
    try:
        await call
    except NATS_ERRORS as e:
        reraise_cancel()
        logger.debug("request ack/progress not sent: %s", e)
