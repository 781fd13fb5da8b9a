"""Actions on the stream: a rule's ``action`` (cut, warn, a named HTTP action), run at once or after a
moderator confirms it, recorded as ``action`` events.

Pure planning (which backend, what target, the template fields) sits in functions at the top; the
:class:`ActionDesk` below wires it to the event bus and to the HTTP calls of
:mod:`streamwatch.outbound.actions_http`. Every step is an event: ``pending`` (waits for a moderator),
then ``done`` / ``failed`` / ``dry_run``, or ``off`` when the show's switch is off. A cut that worked
marks its stream: the outage that follows carries ``caused_by`` (the action event's id) and is not
reported as a fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import quote, urlsplit

from streamwatch.analysis.policy import RuleSpec
from streamwatch.config import StreamConfig
from streamwatch.errors import ActionError, ActionRefused, StreamwatchError
from streamwatch.events.codec import iso
from streamwatch.events.model import ActionEvent, ActionStatus, AlertEvent, Event, HealthEvent, HealthKind, StreamState
from streamwatch.events.store import StoredEvent
from streamwatch.outbound.actions_config import ActionsConfig

logger = logging.getLogger(__name__)

AUTO = "policy"  # ``by`` of an action the policy ran without a moderator


@dataclass(frozen=True, slots=True)
class Target:
    """The publisher on the origin server: nginx-rtmp / SRS ``app`` and stream ``name``."""

    app: str
    name: str

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"


def target_of(cfg: StreamConfig) -> Target | None:
    """The publisher to act on: ``publisher = "app/name"``, else from an ``rtmp://host/app/name`` source
    (the last path part is the name, query dropped). None when it cannot be told (a file, HLS, listen mode)."""
    if cfg.publisher:
        app, name = cfg.publisher.split("/", 1)
        return Target(app, name)
    if cfg.listen:
        return None
    try:
        url = urlsplit(cfg.source)
    except ValueError:
        return None
    parts = [p for p in url.path.split("/") if p]
    if url.scheme not in ("rtmp", "rtmps", "rtmpt") or len(parts) < 2:
        return None
    return Target(parts[0], parts[-1])


def backend_of(action: str, cfg: ActionsConfig) -> str:
    """What performs ``action``: ``nginx``, ``srs``, ``http:<name>``, ``""`` (warn with nothing configured:
    the event is the warning) or ``unknown:<name>``."""
    if action == "cut":
        return cfg.cut if cfg.cut in ("nginx", "srs") else f"http:{cfg.cut}"
    if action == "warn":
        return f"http:{cfg.warn}" if cfg.warn else ""
    return f"http:{action}" if cfg.named(action) else f"unknown:{action}"


def fields_of(alert: AlertEvent, action: str, by: str, target: Target | None) -> dict[str, object]:
    """The event's fields an HTTP action template may name (``{stream}``, ``{message}``, …)."""
    return {
        "stream": alert.stream,
        "alert_id": alert.id,
        "rule": alert.rule,
        "severity": alert.severity.value,
        "message": alert.message,
        "confidence": alert.confidence,
        "offset": round(alert.offset, 3),
        "at": iso(alert.at),
        "text": alert.evidence.text or "",
        "labels": list(alert.evidence.labels),
        "action": action,
        "by": by,
        "app": target.app if target else "",
        "name": target.name if target else "",
    }


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, fields: dict[str, object], encode: Callable[[object], str]) -> str:
    """``template`` with each ``{field}`` it names replaced by ``encode(value)``; other braces (JSON) stay."""
    return _PLACEHOLDER.sub(lambda m: encode(fields[m.group(1)]) if m.group(1) in fields else m.group(0), template)


def json_value(v: object) -> str:
    return json.dumps(v, ensure_ascii=False)


def url_value(v: object) -> str:
    return quote(v if isinstance(v, str) else json.dumps(v), safe="")


def first_status(rule: RuleSpec, switch: str) -> ActionStatus | None:
    """What an alert's action becomes when it is raised: OFF (the show's switch), PENDING (waits for a
    moderator) or None (runs now)."""
    if switch == "off":
        return ActionStatus.OFF
    return None if rule.auto else ActionStatus.PENDING


def attribute(ev: HealthEvent, cut: int | None) -> tuple[HealthEvent, bool]:
    """(``ev`` marked as caused by the cut ``cut``, whether the outage is over). Only state changes that
    are part of the outage a cut made: stalled / reconnecting / stopped / ended, and the ``live`` that ends it."""
    if cut is None or ev.kind is not HealthKind.STATE or ev.state in (None, StreamState.CONNECTING, StreamState.UNWATCHED):
        return ev, False
    over = ev.state is not StreamState.STALLED and ev.state is not StreamState.RECONNECTING
    return replace(ev, caused_by=cut), over


# --- the desk --------------------------------------------------------------------------------------


class Bus(Protocol):
    async def publish(self, event: Event) -> StoredEvent: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a backend call came to."""

    ok: bool
    target: str
    detail: str


Caller = Callable[[str, str, ActionsConfig, Target | None, dict[str, object]], Awaitable[Outcome]]
RuleOf = Callable[[str, str], RuleSpec | None]  # (stream, rule id) → the rule in the stream's current policy
RanBefore = Callable[[AlertEvent], Awaitable[bool]]  # did an earlier process run this alert's action (the event log)?
RAN = frozenset({ActionStatus.DONE, ActionStatus.FAILED, ActionStatus.DRY_RUN})  # an action that was carried out


def ran_in(events: Iterable[object], alert_id: int) -> bool:
    """Whether ``events`` (a stream's stored events) hold an action carried out for ``alert_id``."""
    return any(isinstance(e, ActionEvent) and e.alert_id == alert_id and e.status in RAN for e in events)


class ActionDesk:
    """Runs the actions alerts ask for; keeps which streams are in a cut's outage."""

    def __init__(
        self, cfg: ActionsConfig, bus: Bus, rule_of: RuleOf, caller: Caller | None = None, ran_before: RanBefore | None = None
    ) -> None:
        from streamwatch.outbound.actions_http import call

        self.cfg = cfg
        self.bus = bus
        self.rule_of = rule_of
        self.caller = caller or call
        self.ran_before = ran_before  # the event log, so a restarted daemon never runs an action twice
        self.streams: dict[str, StreamConfig] = {}
        self.switches: dict[str, str] = {}  # per-show switches set at run time (``switch_actions``)
        self.cuts: dict[str, int] = {}  # stream → id of the cut whose outage is under way
        self._acted: set[int] = set()  # alert ids whose action ran or runs (at most once each)
        self._tasks: set[asyncio.Task[ActionEvent]] = set()

    def register(self, cfg: StreamConfig) -> None:
        """A stream that starts (its switch and publisher)."""
        self.streams[cfg.id] = cfg

    def switch(self, stream: str) -> str:
        if (value := self.switches.get(stream)) is not None:
            return value
        cfg = self.streams.get(stream)
        return cfg.actions if cfg is not None else "on"

    def set_switch(self, stream: str, value: str) -> str:
        """A show's switch set at run time (``on``/``dry_run``/``off``, until a restart); the value it had."""
        old = self.switch(stream)
        self.switches[stream] = value
        return old

    async def on_alert(self, alert: AlertEvent) -> None:
        """A stored alert: its rule's action is recorded pending, off, or started (in its own task)."""
        rule = self.rule_of(alert.stream, alert.rule)
        if rule is None or rule.action is None:
            return
        status = first_status(rule, self.switch(alert.stream))
        if status is None:
            self._acted.add(alert.id)
            task = asyncio.get_running_loop().create_task(self._run(alert, rule.action, AUTO, auto=True))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._record(alert, rule.action, status, AUTO, auto=rule.auto, detail="")

    async def confirm(self, alert: AlertEvent, by: str) -> ActionEvent:
        """A moderator confirms the action of ``alert``: it runs now. ActionRefused when it cannot."""
        rule = self.rule_of(alert.stream, alert.rule)
        if rule is None or rule.action is None:
            raise ActionRefused(f"alert {alert.id}: rule {alert.rule!r} has no action")
        if self.switch(alert.stream) == "off":
            raise ActionRefused(f"actions are off for stream {alert.stream}")
        if alert.id in self._acted:
            raise ActionRefused(f"alert {alert.id}: its action ran already")
        self._acted.add(alert.id)
        try:
            before = self.ran_before is not None and await self.ran_before(alert)  # ran before this process started
        except StreamwatchError as e:  # at most once: not run while the log cannot tell
            self._acted.discard(alert.id)
            raise ActionRefused(f"alert {alert.id}: cannot tell whether its action ran already ({e})") from e
        if before:
            raise ActionRefused(f"alert {alert.id}: its action ran already")
        return await self._run(alert, rule.action, by, auto=False)

    def attribute(self, ev: HealthEvent) -> HealthEvent:
        """``ev`` marked ``caused_by`` when it belongs to the outage a cut made on its stream."""
        out, over = attribute(ev, self.cuts.get(ev.stream))
        if over:
            self.cuts.pop(ev.stream, None)
        return out

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, alert: AlertEvent, action: str, by: str, *, auto: bool) -> ActionEvent:
        cfg = self.streams.get(alert.stream)
        target = target_of(cfg) if cfg is not None else None
        backend = backend_of(action, self.cfg)
        dry = self.cfg.dry_run or self.switch(alert.stream) == "dry_run"
        status, where, detail = ActionStatus.DONE, str(target or ""), ""
        if backend.startswith("unknown:"):
            status, detail = ActionStatus.FAILED, f"no [[actions.http]] entry named {action!r}"
        elif backend == "":
            detail = "recorded (no warn action configured)"
        elif dry:
            status, detail = ActionStatus.DRY_RUN, f"would call {backend}"
        else:
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    outcome = await self.caller(action, backend, self.cfg, target, fields_of(alert, action, by, target))
                status = ActionStatus.DONE if outcome.ok else ActionStatus.FAILED
                where, detail = outcome.target, outcome.detail
            except TimeoutError:
                status, detail = ActionStatus.FAILED, f"no answer within {self.cfg.timeout_s:g}s"
            except ActionError as e:
                status, detail = ActionStatus.FAILED, str(e)
        ev = await self._record(alert, action, status, by, auto=auto, backend=backend, target=where, detail=detail)
        if action == "cut" and status is ActionStatus.DONE:
            self.cuts[alert.stream] = ev.id
        log = logger.warning if status is ActionStatus.FAILED else logger.info
        log("stream %s: action %s (%s) for alert %d by %s: %s %s", alert.stream, action, backend, alert.id, by, status.value, detail)
        return ev

    async def _record(
        self, alert: AlertEvent, action: str, status: ActionStatus, by: str, *, auto: bool, backend: str = "", target: str = "", detail: str
    ) -> ActionEvent:
        ev = ActionEvent(
            stream=alert.stream,
            at=time.time(),
            offset=alert.offset,
            alert_id=alert.id,
            rule=alert.rule,
            action=action,
            status=status,
            by=by,
            backend=backend,
            target=target,
            detail=detail,
            auto=auto,
        )
        stored = await self.bus.publish(ev)
        return replace(ev, id=stored.id)
