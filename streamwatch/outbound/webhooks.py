"""Webhook delivery: one sender task per ``[[webhooks]]`` endpoint, reading the event store after its
outbox cursor, oldest first.

A round reads the next events the endpoint wants, POSTs them as one signed JSON body
(``{"events": [...]}``, :mod:`streamwatch.outbound.signing`), and moves the cursor only after a 2xx:
at-least-once, duplicates carry the same event ``id``. A failed round waits (exponential back-off with
jitter) and retries the same events; after ``unhealthy_after_s`` of failures a ``webhook`` health event
is published (and another when the endpoint recovers); events older than ``dead_letter_after_s`` that
still fail go to the outbox's dead letters. The bus only wakes the sender: what is sent is always read
back from the store, so a restart resumes exactly where the cursor is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from streamwatch import __version__
from streamwatch.analysis.policy import RuleSpec
from streamwatch.errors import DeliveryFailed, EventsError, OutboundError
from streamwatch.events.bus import EventBus
from streamwatch.events.codec import parse_iso
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.events.store import EventStore, StoredEvent
from streamwatch.ingest.url import redact_url
from streamwatch.outbound.config import WebhookConfig
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.outbox import Outbox, count_pending
from streamwatch.outbound.payload import Selector, payload
from streamwatch.outbound.signing import SIGNATURE_HEADER, evidence_link, signature

logger = logging.getLogger(__name__)

RuleOf = Callable[[str, str], RuleSpec | None]  # (stream, rule id) → the rule in the stream's policy


@dataclass(frozen=True, slots=True)
class Outbound:
    """What every endpoint's sender shares (one per daemon)."""

    store: EventStore
    bus: EventBus
    outbox: Outbox
    metrics: OutboundMetrics
    rule_of: RuleOf
    streams: Callable[[], list[str]]  # streams a health event about an endpoint is published on (its own filter first)
    offsets: Callable[[str], float]  # a stream's current show offset
    evidence_key: bytes
    evidence_base: str  # the HTTP server's base URL as receivers reach it


@dataclass(frozen=True, slots=True)
class Round:
    """The events of one delivery (id, wire dict) and the id up to which the store was examined."""

    events: list[tuple[int, dict[str, Any]]]
    upto: int


def backoff(failures: int, initial: float, cap: float, jitter: float, rnd: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``failures`` (≥ 1): doubling from ``initial`` up to ``cap``, ±``jitter``."""
    base: float = min(cap, initial * 2.0 ** min(failures - 1, 30))
    return base * (1 + jitter * (2 * rnd() - 1))


class WebhookSender:
    """Delivers one endpoint's events; :meth:`run` until cancelled."""

    def __init__(self, cfg: WebhookConfig, ctx: Outbound, client: httpx.AsyncClient | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.name = cfg.name
        self.selector = Selector.of(cfg)
        self.secret = cfg.secret_bytes()
        self.base = (cfg.evidence_base_url or ctx.evidence_base).rstrip("/")
        self.client = client or httpx.AsyncClient(timeout=cfg.timeout_s, follow_redirects=False)
        self.cursor = 0
        self.failures = 0
        self.failing_since: float | None = None
        self.unhealthy = False
        self._wake = asyncio.Event()
        self._backlog_at = float("-inf")
        self.where = redact_url(cfg.url)
        ctx.bus.add_listener(self._on_stored)

    def _on_stored(self, batch: Sequence[StoredEvent]) -> None:
        if any(self.selector.may_want(e.type, e.stream) for e in batch):
            self._wake.set()

    # --- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.cursor = await loop.run_in_executor(None, self.ctx.outbox.cursor, self.name, self.ctx.bus.last_id)
        logger.info("webhook %s: delivering to %s after event %d", self.name, self.where, self.cursor)
        try:
            while True:
                try:
                    await self._round(loop)
                except Exception:  # a bug must not end deliveries for good (CancelledError passes)
                    logger.exception("webhook %s: delivery round failed unexpectedly", self.name)
                    await asyncio.sleep(self.cfg.backoff_max_s)
        finally:
            await self.client.aclose()

    async def _round(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake.clear()
        upto = self.ctx.bus.last_id
        try:
            rnd = await loop.run_in_executor(None, self._next, upto)
        except (EventsError, OutboundError, ValueError) as e:  # ValueError: a body that is not JSON
            logger.error("webhook %s: cannot read the events to send: %s", self.name, e)
            await asyncio.sleep(self.cfg.backoff_max_s)
            return
        if not rnd.events:
            if rnd.upto > self.cursor:
                await self._advance(loop, rnd.upto)
            await self._refresh_backlog(loop, force=True)
            if self.ctx.bus.last_id == upto:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await self._wake.wait()
            if self.cfg.batch_wait_s:
                await asyncio.sleep(self.cfg.batch_wait_s)
            return
        try:
            await self._post(rnd.events)
        except DeliveryFailed as e:
            await self._failed(loop, rnd, e)
            return
        now = time.time()
        for _, ev in rnd.events:
            with contextlib.suppress(Exception):
                self.ctx.metrics.delay.labels(self.name).observe(max(0.0, now - parse_iso(str(ev.get("at")))))
        self.ctx.metrics.sent.labels(self.name).inc(len(rnd.events))
        await self._advance(loop, rnd.upto)
        await self._recovered()
        await self._refresh_backlog(loop)

    def _next(self, upto: int) -> Round:
        """The next events to send (up to ``batch_max``), read from the store (blocking)."""
        limit = self.cfg.batch_max * 4
        rows = self.ctx.store.read(self.cursor, upto=upto, limit=limit, types=self.selector.types, streams=self.selector.streams)
        out: list[tuple[int, dict[str, Any]]] = []
        for row in rows:
            ev = json.loads(row.text)
            if self.selector.wants(ev):
                out.append((row.id, ev))
                if len(out) == self.cfg.batch_max:
                    return Round(out, row.id)
        return Round(out, upto if len(rows) < limit else rows[-1].id)

    def body(self, events: Sequence[tuple[int, dict[str, Any]]]) -> bytes:
        items = []
        for _, ev in events:
            rule = self.ctx.rule_of(str(ev.get("stream")), str(ev["rule"])) if ev.get("type") == "alert" and ev.get("rule") else None
            items.append(payload(ev, rule, self._evidence_url))
        return json.dumps({"endpoint": self.name, "events": items}, ensure_ascii=False, separators=(",", ":")).encode()

    def _evidence_url(self, path: str) -> str:
        return self.base + evidence_link(self.ctx.evidence_key, path, int(time.time() + self.cfg.evidence_ttl_s))

    async def _post(self, events: Sequence[tuple[int, dict[str, Any]]]) -> None:
        body = self.body(events)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"streamwatch/{__version__}",
            SIGNATURE_HEADER: signature(self.secret, int(time.time()), body),
            "X-Streamwatch-Event-Ids": ",".join(str(i) for i, _ in events),
        }
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                r = await self.client.post(self.cfg.url, content=body, headers=headers)
        except TimeoutError as e:
            raise DeliveryFailed(f"no answer within {self.cfg.timeout_s:g}s") from e
        except httpx.HTTPError as e:
            raise DeliveryFailed(f"{type(e).__name__}: {e}") from e
        if not 200 <= r.status_code < 300:
            raise DeliveryFailed(f"HTTP {r.status_code}")

    # --- bookkeeping ---------------------------------------------------------------------------

    async def _advance(self, loop: asyncio.AbstractEventLoop, upto: int, dead: Sequence[tuple[int, str]] = (), error: str = "") -> None:
        await loop.run_in_executor(None, self.ctx.outbox.advance, self.name, upto, dead, error)
        self.cursor = max(self.cursor, upto)

    async def _refresh_backlog(self, loop: asyncio.AbstractEventLoop, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_at < 1.0:
            return
        self._backlog_at = now
        try:
            n = await loop.run_in_executor(
                None, count_pending, self.ctx.store.path, self.cursor, self.selector.types, self.selector.streams
            )
        except OutboundError as e:
            logger.warning("webhook %s: %s", self.name, e)
            return
        self.ctx.metrics.backlog.labels(self.name).set(n)

    async def _failed(self, loop: asyncio.AbstractEventLoop, rnd: Round, error: DeliveryFailed) -> None:
        self.ctx.metrics.failed.labels(self.name).inc()
        self.failures += 1
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
            logger.warning("webhook %s: delivery to %s failed: %s (retrying)", self.name, self.where, error)
        too_old = now - self.cfg.dead_letter_after_s
        dead = []
        for i, ev in rnd.events:  # a prefix: oldest first
            try:
                if parse_iso(str(ev.get("at"))) >= too_old:
                    break
            except EventsError:
                pass
            dead.append((i, json.dumps(ev, ensure_ascii=False)))
        if dead:
            upto = dead[-1][0] if len(dead) < len(rnd.events) else rnd.upto
            await self._advance(loop, upto, dead, str(error))
            self.ctx.metrics.dead.labels(self.name).inc(len(dead))
            logger.error(
                "webhook %s: %d events older than %gs moved to the dead letters (%s)",
                self.name,
                len(dead),
                self.cfg.dead_letter_after_s,
                error,
            )
        await self._refresh_backlog(loop, force=True)
        if not self.unhealthy and now - self.failing_since >= self.cfg.unhealthy_after_s:
            self.unhealthy = True
            logger.error("webhook %s: deliveries to %s failing for %.1fs: %s", self.name, self.where, now - self.failing_since, error)
            await self._health(True, f"webhook {self.name}: deliveries failing for {now - self.failing_since:.1f}s ({error})")
        if not dead:
            await asyncio.sleep(backoff(self.failures, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.cfg.backoff_jitter))

    async def _recovered(self) -> None:
        if self.failing_since is None:
            return
        took = time.time() - self.failing_since
        self.failures, self.failing_since = 0, None
        logger.info("webhook %s: delivering again after %.1fs of failures", self.name, took)
        if self.unhealthy:
            self.unhealthy = False
            await self._health(False, f"webhook {self.name}: delivering again", duration_s=round(took, 3))

    async def _health(self, active: bool, reason: str, duration_s: float | None = None) -> None:
        streams = list(self.cfg.streams) or self.ctx.streams()
        for sid in streams:
            await self.ctx.bus.publish(
                HealthEvent(
                    stream=sid,
                    at=time.time(),
                    offset=self.ctx.offsets(sid),
                    kind=HealthKind.WEBHOOK,
                    active=active,
                    duration_s=duration_s,
                    reason=reason,
                )
            )
