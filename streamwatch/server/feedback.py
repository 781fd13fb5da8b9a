"""Votes on persona replies (``feedback`` messages): one per voter and reply, a report becomes an alert.

Who may vote: moderators and admins on any reply; a danmaku relay (submitter token with ``relay``) on
any reply, for the viewer it names in ``user``; other submitters on their own replies only. The book
of votes is seeded from the store on first use, so "one vote per voter and reply" holds across
restarts.
"""

from __future__ import annotations

import asyncio
import functools
import time

from streamwatch.config import Role
from streamwatch.events.bus import EventBus
from streamwatch.events.model import AlertEvent, Evidence, FeedbackEvent, ReplyEvent, Severity, Vote
from streamwatch.events.store import StoredEvent
from streamwatch.i18n import Lang, t
from streamwatch.server.auth import Principal
from streamwatch.server.protocol import FeedbackMsg, ProtocolError

REPORT_RULE = "reply_reported"
Voter = tuple[int, str, str]  # reply id, token name, user


class VoteBook:
    """The votes already cast (seeded from the store on first use)."""

    def __init__(self, lang: Lang = "zh") -> None:
        self.lang = lang  # of the alert a reported reply raises
        self._seen: set[Voter] | None = None
        self._lock = asyncio.Lock()

    async def _load(self, bus: EventBus) -> set[Voter]:
        if self._seen is None:
            loop = asyncio.get_running_loop()
            seen: set[Voter] = set()
            after = 0
            while batch := await loop.run_in_executor(None, functools.partial(bus.store.read, after, types=("feedback",), limit=5000)):
                for stored in batch:
                    ev = _decode(stored)
                    if ev is not None:
                        seen.add((ev.reply_id, ev.by, ev.user))
                after = batch[-1].id
            self._seen = seen
        return self._seen

    async def cast(self, bus: EventBus, who: Principal, msg: FeedbackMsg) -> tuple[FeedbackEvent, AlertEvent | None]:
        """Check and record one vote; the stored feedback event, and the alert a report raises."""
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(None, bus.store.get, msg.reply)
        if not isinstance(target, ReplyEvent):
            raise ProtocolError("unknown_reply", f"no persona reply with id {msg.reply}", msg.ref)
        if who.role is Role.SUBMITTER and not who.relay and target.submitter != who.name:
            raise ProtocolError("forbidden", "a submitter may vote on the replies to its own images only", msg.ref)
        key: Voter = (msg.reply, who.name, msg.user)
        async with self._lock:
            seen = await self._load(bus)
            if key in seen:
                voter = f"user {msg.user!r}" if msg.user else "this client"
                raise ProtocolError("duplicate_vote", f"{voter} has already voted on reply {msg.reply}", msg.ref)
            seen.add(key)
        now = time.time()
        vote = FeedbackEvent(
            stream=target.stream, at=now, offset=target.offset, reply_id=msg.reply, vote=msg.vote, by=who.name, user=msg.user,
            model=target.model, persona=target.persona, note=msg.note,
        )  # fmt: skip
        alert = None
        if msg.vote is Vote.REPORT:
            who_text = t("alert.via", self.lang, user=msg.user, token=who.name) if msg.user else who.name
            alert = AlertEvent(
                stream=target.stream, at=now, offset=target.offset, rule=REPORT_RULE, severity=Severity.MEDIUM,
                message=t("alert.reply_reported", self.lang, who=who_text, text=target.text[:80]) + (f" — {msg.note}" if msg.note else ""),
                confidence=1.0, evidence=Evidence(kind="feedback", text=target.text, frame=target.image, labels=(target.model,)),
            )  # fmt: skip
        return vote, alert


def _decode(stored: StoredEvent) -> FeedbackEvent | None:
    ev = stored.event()
    return ev if isinstance(ev, FeedbackEvent) else None
