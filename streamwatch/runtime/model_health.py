"""Failures of the VLM tier made visible: ``model`` health events when a role falls back, a breaker
opens or closes, or a model's output is unusable N times in a row (issue 21).

A role falls back when its chain's first model cannot serve it: its breaker is open, or the role's
last answer came from further down the chain (one failed request is enough, before any breaker
opens: :meth:`ModelRouter.status`'s served-by and fallback reason). One notice per episode, not per
request; the recovery is said when the first model answers the role again.

:class:`ModelHealth` is pure: it is fed the router's observations (model, outcome) and snapshots of
its chains, breaker states and who served each role last (:class:`RouterView`), and returns
:class:`ModelNotice` values for what *changed*. Failing notices have ``active=True``, recoveries
``active=False`` (a switch, published by the daemon, has ``active=None``). :class:`ModelWatch` is
the thin asyncio adapter: it takes the router's observer calls, checks the router right after each
one and once a second, and hands each notice to a publish callback (the daemon puts them on every
stream it watches, the console's Models tab lists the recent ones).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamwatch.vlm.routestate import RouterStatus

logger = logging.getLogger(__name__)

LOCAL = "local"
UNUSABLE = frozenset({"bad_output"})  # outcomes that mean "the model answered, but nothing usable"
FAILED = frozenset({"bad_output", "error", "timeout"})


@dataclass(frozen=True, slots=True)
class ModelNotice:
    """One change in the VLM tier's health. ``role`` is None for a model-wide notice."""

    at: float
    active: bool  # True: something started failing; False: it works again
    model: str
    role: str | None
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"at": self.at, "active": self.active, "model": self.model, "role": self.role, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Served:
    """Who gave a role's last answer, and why not the chain's first model ("" when it did)."""

    model: str
    reason: str
    answers: int  # the role's answers so far: a new count is a new answer


@dataclass(frozen=True, slots=True)
class RouterView:
    """What the health checks read of the router: chains and served-by per role, breaker state per model."""

    chains: Mapping[str, Sequence[str]]
    breakers: Mapping[str, str]  # model → its most open breaker over its roles (closed | half_open | open)
    served: Mapping[str, Served] = field(default_factory=dict)
    role_breakers: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (model, role) → its breaker for the role


@dataclass
class ModelHealth:
    """What changed, from observations and snapshots (no clock of its own, no I/O)."""

    unusable_after: int = 3  # unusable answers in a row that make a notice
    _streak: dict[str, int] = field(default_factory=dict)
    _unusable: set[str] = field(default_factory=set)  # models with a notified streak
    _last: dict[str, str] = field(default_factory=dict)  # model → last failed outcome
    _breakers: dict[str, str] = field(default_factory=dict)
    _serving: dict[str, tuple[str, str]] = field(default_factory=dict)  # role → (primary, model serving it) at the last check
    _stale: dict[str, int] = field(default_factory=dict)  # role → answers count when its primary changed (older answers say nothing)

    def observe(self, model: str, outcome: str, now: float) -> list[ModelNotice]:
        """One attempt's outcome (the router's observer): streaks of unusable output."""
        if outcome in FAILED:
            self._last[model] = outcome
        if outcome in UNUSABLE:
            n = self._streak[model] = self._streak.get(model, 0) + 1
            if n == self.unusable_after and model not in self._unusable:
                self._unusable.add(model)
                return [ModelNotice(now, True, model, None, f"{model}: {n} unusable answers in a row (output that is no answer)")]
        elif outcome == "ok":
            self._streak[model] = 0
            if model in self._unusable:
                self._unusable.discard(model)
                return [ModelNotice(now, False, model, None, f"{model}: usable answers again")]
        elif outcome in FAILED:  # an error breaks no unusable streak but does not end it either
            pass
        return []

    def update(
        self,
        chains: Mapping[str, Sequence[str]],
        breakers: Mapping[str, str],
        now: float,
        served: Mapping[str, Served] | None = None,
        role_breakers: Mapping[tuple[str, str], str] | None = None,
    ) -> list[ModelNotice]:
        """A snapshot of the router: breakers that opened or closed, roles that fell back or came back.

        Without ``served`` a role falls back only while its first model's breaker is open; with
        ``role_breakers`` that is the model's breaker for the role (else its most open one)."""
        out: list[ModelNotice] = []
        for model, state in breakers.items():
            before = self._breakers.get(model, "closed")
            self._breakers[model] = state
            if state == "open" and before != "open":
                why = self._last.get(model, "failures")
                out.append(ModelNotice(now, True, model, None, f"{model}: circuit open after failed requests (last: {why})"))
            elif state == "closed" and before != "closed":
                out.append(ModelNotice(now, False, model, None, f"{model}: circuit closed, the model answers again"))
        for role, chain in chains.items():
            if chain:
                rb = role_breakers or {}
                states = {m: rb.get((m, role), breakers.get(m, "closed")) for m in chain}
                out.extend(self._role(role, chain, states, (served or {}).get(role), now))
        return out

    def _role(self, role: str, chain: Sequence[str], breakers: Mapping[str, str], last: Served | None, now: float) -> list[ModelNotice]:
        """``breakers``: the state of each model of the chain for this role."""
        primary = chain[0]
        serving = next((m for m in chain if m == LOCAL or breakers.get(m, "closed") != "open"), LOCAL)
        reason = f"{primary} is failing"
        was_primary, before = self._serving.get(role, (primary, primary))
        if was_primary != primary and last is not None:  # answers given before the switch say nothing of the new chain
            self._stale[role] = last.answers
        if serving == primary and last is not None and last.answers != self._stale.get(role) and last.model in chain:
            serving = last.model  # the breakers let the first model serve: the role's last answer says whether it did
            reason = last.reason or reason
        self._serving[role] = (primary, serving)
        if was_primary != primary:  # switched: the new primary is only news if it cannot serve
            before = primary
        if serving == before:
            return []
        if serving != primary:
            what = "local templates and analyzers" if serving == LOCAL else serving
            return [ModelNotice(now, True, before, role, f"{role}: falls back from {before} to {what} ({reason[:300]})")]
        return [ModelNotice(now, False, primary, role, f"{role}: back on {primary}")]


Publish = Callable[[ModelNotice, Sequence[str]], Awaitable[None]]  # (notice, the streams watched when it happened)


class ModelWatch:
    """The adapter: router observer in, notices out to ``publish`` (in order, from one task)."""

    def __init__(
        self,
        health: ModelHealth,
        *,
        targets: Callable[[], Sequence[str]] = lambda: (),
        keep: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.health = health
        self.targets = targets
        self.clock = clock
        self.recent: deque[ModelNotice] = deque(maxlen=keep)
        self._snapshot: Callable[[], RouterView] | None = None
        self._queue: asyncio.Queue[tuple[ModelNotice, Sequence[str]]] = asyncio.Queue()
        self._check_pending = False

    def attach(self, snapshot: Callable[[], RouterView]) -> None:
        """Where chains, breaker states and served-by come from (the router, once it exists: :func:`router_snapshot`)."""
        self._snapshot = snapshot

    def observe(self, model: str, outcome: str, _seconds: float) -> None:
        """The router's observer: notices now, and a check of the router once the current request step is done
        (the breaker records a request's failure right after its last attempt is observed)."""
        self._emit(self.health.observe(model, outcome, self.clock()))
        if not self._check_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._check_pending = True
            loop.call_soon(self.check)

    def check(self) -> None:
        self._check_pending = False
        if self._snapshot is not None:
            view = self._snapshot()
            self._emit(self.health.update(view.chains, view.breakers, self.clock(), view.served, view.role_breakers))

    def _emit(self, notices: list[ModelNotice]) -> None:
        for n in notices:
            (logger.warning if n.active else logger.info)("model health: %s", n.reason)
            self.recent.append(n)
            self._queue.put_nowait((n, tuple(self.targets())))

    async def run(self, publish: Publish, every_s: float = 1.0) -> None:
        """Publish notices as they come, and check the router every ``every_s`` (cooldowns end without requests)."""

        async def poll() -> None:
            while True:
                await asyncio.sleep(every_s)
                self.check()

        poller = asyncio.create_task(poll())
        try:
            while True:
                await self._publish(publish, *await self._queue.get())
        finally:
            poller.cancel()

    async def flush(self, publish: Publish) -> None:
        """Check the router once more and publish what is still queued (at shutdown, after :meth:`run` ended)."""
        self.check()
        while not self._queue.empty():
            await self._publish(publish, *self._queue.get_nowait())

    @staticmethod
    async def _publish(publish: Publish, notice: ModelNotice, streams: Sequence[str]) -> None:
        try:
            await publish(notice, streams)
        except Exception:  # a notice that cannot be published is logged; the watch goes on
            logger.exception("model health notice not published: %s", notice.reason)

    def as_json(self) -> list[dict[str, object]]:
        """The recent notices, newest first (the console's Models tab)."""
        return [n.as_json() for n in reversed(self.recent)]


class _Router(Protocol):
    def status(self) -> RouterStatus: ...

    def state(self) -> Mapping[str, str]: ...


def router_snapshot(router: _Router) -> RouterView:
    """Chains and served-by per role (by role name) and breaker states (by model id) of a
    :class:`~streamwatch.vlm.router.ModelRouter`, from its typed :meth:`status`."""
    status = router.status()
    chains = {r.role.value: list(r.chain) for r in status.roles}
    served = {r.role.value: Served(r.served_by, r.fallback_reason, r.answers) for r in status.roles if r.served_by is not None}
    per_role = {(m.model, m.role.value): m.breaker.value for m in status.models}
    return RouterView(chains, dict(router.state()), served, per_role)
