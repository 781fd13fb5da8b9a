"""Tokens, roles and what each role may see; per-token rate limits. Pure logic, no I/O."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from streamwatch.config import Role, TokenConfig

# Subscribable channels and the event types they carry.
CHANNELS: dict[str, frozenset[str]] = {
    "alerts": frozenset({"alert"}),
    "health": frozenset({"health"}),
    "replies": frozenset({"reply", "rejected"}),
    "answers": frozenset({"answer"}),
    "reviews": frozenset({"review"}),
    "scenes": frozenset({"scene"}),
    "feedback": frozenset({"feedback"}),
    "actions": frozenset({"action"}),
}

# Event types each role may receive.
VISIBLE: dict[Role, frozenset[str]] = {
    Role.OVERLAY: frozenset({"reply"}),
    Role.MODERATOR: frozenset({"alert", "health", "reply", "rejected", "answer", "review", "scene", "feedback", "action"}),
    Role.SUBMITTER: frozenset({"reply", "rejected"}),
    Role.ADMIN: frozenset({"alert", "health", "reply", "rejected", "answer", "review", "scene", "feedback", "action"}),
}

# Client message types each role may send (subscribe and ping are always allowed).
ACTIONS: dict[Role, frozenset[str]] = {
    Role.OVERLAY: frozenset(),
    Role.MODERATOR: frozenset({"ack", "ask", "feedback", "act"}),
    Role.SUBMITTER: frozenset({"submit", "feedback"}),
    Role.ADMIN: frozenset(
        {"ack", "act", "switch_actions", "ask", "submit", "switch_model", "feedback", "add_stream", "remove_stream", "list_streams"}
    ),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client: its token's name and role."""

    name: str
    role: Role
    relay: bool = False  # a danmaku relay (submitter) that may also ask

    def may(self, action: str) -> bool:
        return action in ACTIONS[self.role] or (self.relay and action == "ask")

    @property
    def visible(self) -> frozenset[str]:
        """Event types it may receive."""
        return VISIBLE[self.role] | ({"answer"} if self.relay else frozenset())

    @property
    def private(self) -> bool:
        """Sees only its own replies/rejections."""
        return self.role is Role.SUBMITTER


class TokenTable:
    def __init__(self, tokens: list[TokenConfig]) -> None:
        self._tokens = [(t.secret.encode(), Principal(t.name, t.role, t.relay)) for t in tokens]

    def lookup(self, secret: str | None) -> Principal | None:
        """The principal for ``secret`` (constant-time comparison against every token), or None."""
        if not secret:
            return None
        given = secret.encode()
        found = None
        for known, principal in self._tokens:
            if hmac.compare_digest(known, given):
                found = principal
        return found


def token_from_request(path: str, authorization: str | None) -> str | None:
    """Bearer token from the Authorization header, else the ``token`` query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def resolve_channels(principal: Principal, channels: list[str]) -> tuple[frozenset[str], list[str]]:
    """Event types for the requested channels that the role may see, and the refused channel names."""
    types: set[str] = set()
    refused = []
    for ch in channels:
        allowed = CHANNELS[ch] & principal.visible
        if allowed:
            types |= allowed
        else:
            refused.append(ch)
    return frozenset(types), refused


class RateLimiter:
    """Token bucket: ``rate`` per second sustained, ``burst`` at once. Time is passed in (monotonic)."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.level = float(burst)
        self.stamp: float | None = None

    def allow(self, now: float) -> bool:
        if self.stamp is not None:
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False
