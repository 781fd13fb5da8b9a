"""The door: failed authentication limited per address, summarised in the log, counted in metrics.

Each failed authentication (a handshake or HTTP request with a missing or wrong token) takes one
token from its address's bucket (``auth_failures_burst`` at once, ``auth_failures_per_min``
sustained). An address with an empty bucket gets 429 before its token is even looked at (a right
guess gets 429 too: guessing stops paying), and nothing is logged per request: one WARNING line per
address per minute gives the count. :class:`QuietRefusals` drops the two INFO lines the websockets
library writes for every refused handshake. Pure bookkeeping; the server calls it with the time.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from streamwatch.server.auth import RateLimiter

MAX_ADDRESSES = 100_000  # bounded memory under a spread-out flood: forget everyone (limits restart)


@dataclass(slots=True)
class _Tally:
    failed: int = 0
    limited: int = 0
    statuses: set[int] = field(default_factory=set)


class Door:
    """Per-address failed-authentication buckets and the per-minute tallies for the log."""

    def __init__(self, per_min: float, burst: int, registry: CollectorRegistry | None = None, summary_s: float = 60.0) -> None:
        self.rate = per_min / 60.0
        self.burst = burst
        self.summary_s = summary_s
        self._buckets: dict[str, RateLimiter] = {}
        self._tallies: dict[str, _Tally] = {}
        self._window: float | None = None
        self.failures = Counter(
            "streamwatch_auth_failures",
            "Failed authentications (handshakes and HTTP requests), by outcome: refused (401/403) or limited (429).",
            ["outcome"],
            registry=registry,
        )

    def limited(self, address: str, now: float) -> bool:
        """True when ``address`` has used up its failures: answer 429 now (counted, not logged)."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return False
        level = min(bucket.burst, bucket.level + (now - (bucket.stamp or now)) * bucket.rate)
        if level >= 1.0:
            return False
        self._tally(address, now).limited += 1
        self.failures.labels("limited").inc()
        return True

    def failed(self, address: str, now: float, status: int) -> None:
        """A refused authentication (401/403) from ``address``."""
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= MAX_ADDRESSES:
                self._buckets.clear()
            bucket = self._buckets[address] = RateLimiter(self.rate, self.burst)
        bucket.allow(now)
        tally = self._tally(address, now)
        tally.failed += 1
        tally.statuses.add(status)
        self.failures.labels("refused").inc()

    def _tally(self, address: str, now: float) -> _Tally:
        if self._window is None:
            self._window = now
        tally = self._tallies.get(address)
        if tally is None:
            if len(self._tallies) >= MAX_ADDRESSES:
                self._tallies.clear()
            tally = self._tallies[address] = _Tally()
        return tally

    def due(self, now: float) -> bool:
        return self._window is not None and now - self._window >= self.summary_s

    def summary(self, now: float) -> list[str]:
        """One line per address with failures since the last summary (then the tallies restart)."""
        if self._window is None:
            return []
        span = now - self._window
        lines = []
        for address, t in sorted(self._tallies.items(), key=lambda kv: -(kv[1].failed + kv[1].limited)):
            codes = "/".join(str(s) for s in sorted(t.statuses)) or "-"
            lines.append(
                f"failed authentication from {address}: {t.failed} refused ({codes}) and {t.limited} rate-limited (429)"
                f" in the last {span:.0f}s"
            )
        self._tallies.clear()
        self._window = None
        return lines


class QuietRefusals(logging.Filter):
    """Drops websockets' per-connection INFO lines for refused handshakes (401/403/429): the door
    summarises those. Other responses and accepted connections are logged as before."""

    QUIET = frozenset({401, 403, 429})

    def __init__(self) -> None:
        super().__init__()
        self._refused: set[uuid.UUID] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        conn = _conn_id(record)
        if msg in ("connection rejected (%d %s)", "HTTP response sent (%d %s)"):
            if isinstance(record.args, tuple) and record.args and record.args[0] in self.QUIET:
                if conn is not None:
                    if len(self._refused) > 10_000:
                        self._refused.clear()
                    self._refused.add(conn)
                return False
        elif msg == "connection closed" and conn is not None and conn in self._refused:
            self._refused.discard(conn)
            return False
        return True


def _conn_id(record: logging.LogRecord) -> uuid.UUID | None:
    try:
        value = getattr(getattr(record, "websocket", None), "id", None)
    except ReferenceError:  # the connection (a weak proxy) is gone
        return None
    return value if isinstance(value, uuid.UUID) else None


_QUIET = QuietRefusals()


def quiet_websockets_logger() -> logging.Logger:
    """websockets' server logger with :class:`QuietRefusals` attached (once per process)."""
    log = logging.getLogger("websockets.server")
    if _QUIET not in log.filters:
        log.addFilter(_QUIET)
    return log
