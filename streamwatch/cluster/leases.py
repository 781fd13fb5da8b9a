"""Stream leases: which worker runs a stream, in a KV bucket whose TTL is ``cluster.lease_ttl_s``.

A lease is the key ``stream_key(stream id)`` with JSON ``{"worker": …, "claimed_at": …}``.

* :meth:`LeaseTable.claim` writes it only if absent (``kv.create``): of two racing workers exactly
  one wins.
* :meth:`LeaseTable.renew` rewrites it only at the revision this worker last wrote
  (``kv.update(last=…)``). An entry not rewritten for the bucket TTL vanishes and anyone may claim
  it; the old holder's next renew then fails on the revision check (even if someone re-created the
  key), so a worker that was paused past its TTL is fenced: it gets :class:`LeaseLost` and stops.
* :meth:`LeaseTable.release` deletes it, again only at this worker's revision.

Clock: a lease is safe until ``sent + ttl`` where ``sent`` is when its last successful write was
*sent* (the server wrote it later, so it expires later): :attr:`Lease.valid_until` (monotonic s).

TTL and node loss (measured on a 3-node loopback cluster): when the node leading the lease bucket
is killed, the others wait out the Raft election timeout before electing a new leader, and no
lease can be written for 4–8 s. A lease TTL below ~10 s then expires every lease of the bucket at
once (all workers get :class:`LeaseLost`); a clean shutdown (SIGTERM) hands leadership over in
< 0.5 s. Takeover after a worker dies takes TTL + ~0.1–0.3 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

from nats.js.kv import KeyValue

from streamwatch.cluster.kv import NATS_ERRORS, create_refused, is_wrong_sequence, kv_items, stream_key, stream_of_key
from streamwatch.errors import ClusterError, LeaseLost

logger = logging.getLogger(__name__)

RETRY_WAIT_S = 0.2  # between two renew attempts after a transient NATS error


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this worker holds: ``revision`` of its last write, ``claimed_at`` wall time (s since
    the epoch) of the claim, ``valid_until`` the monotonic time (s) before which nobody else can
    have taken it."""

    stream: str
    worker: str
    revision: int
    claimed_at: float
    valid_until: float


class Holder(NamedTuple):
    """Who holds a stream's lease and at which revision (a ``(worker, revision)`` tuple)."""

    worker: str
    revision: int


class LeaseTable:
    """Leases in ``kv`` (a bucket with TTL ``ttl_s`` seconds, see ``connect.kv_bucket``)."""

    def __init__(self, kv: KeyValue, *, ttl_s: float, attempt_s: float | None = None) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        self.attempt_s = attempt_s if attempt_s is not None else max(0.5, ttl_s / 4)  # one NATS call at most, s
        self._unsure: dict[tuple[str, str], tuple[bytes, float]] = {}  # (stream, worker) → value, sent: answer lost

    async def _written(self, stream: str, value: bytes) -> int | None:
        """The revision of ``stream``'s lease if its value is exactly ``value`` (our own write whose
        answer was lost), else None (also when it cannot be read)."""
        try:
            async with asyncio.timeout(self.attempt_s):
                entry = await self.kv.get(stream_key(stream))
        except (TimeoutError, *NATS_ERRORS):
            return None
        return entry.revision if entry.value == value and entry.revision else None

    async def claim(self, stream: str, worker: str) -> Lease | None:
        """Take the lease of ``stream`` for ``worker``; None when someone holds it.

        A claim whose answer was lost (timed out after ``attempt_s``) raises :class:`ClusterError`;
        the next claim of the same stream by the same worker writes the same value, and adopts the
        lease if the lost write had landed. Raises :class:`ClusterError` when NATS fails.
        """
        unsure = self._unsure.pop((stream, worker), None)
        sent = time.monotonic()
        if unsure is not None and sent - unsure[1] > self.ttl_s:
            unsure = None  # landed or not, it has expired by now
        value = unsure[0] if unsure else json.dumps({"worker": worker, "claimed_at": time.time()}).encode()
        claimed_at = float(json.loads(value)["claimed_at"])
        try:
            async with asyncio.timeout(self.attempt_s):
                rev = await self.kv.create(stream_key(stream), value)
        except (TimeoutError, *NATS_ERRORS) as e:
            if create_refused(e):
                mine = await self._written(stream, value) if unsure else None
                if mine is None or unsure is None:
                    return None
                logger.info("stream %s: lease claimed by %s (a lost answer; revision %s)", stream, worker, mine)
                return Lease(stream, worker, mine, claimed_at, unsure[1] + self.ttl_s)
            if isinstance(e, TimeoutError):
                self._unsure[(stream, worker)] = unsure or (value, sent)
            raise ClusterError(f"stream {stream}: cannot claim its lease: {e!r}") from e
        logger.info("stream %s: lease claimed by %s (revision %s)", stream, worker, rev)
        return Lease(stream, worker, rev, claimed_at, sent + self.ttl_s)

    async def renew(self, lease: Lease) -> Lease:
        """Rewrite ``lease`` at its revision; the renewed lease (new revision and ``valid_until``).

        Transient NATS errors (a node failing over, no answer within ``attempt_s``) are retried
        while the lease is still valid; a retry that finds our own lost write adopts it. Raises
        :class:`LeaseLost` when the revision no longer matches (the lease expired, perhaps taken
        by another worker), when the lease is past ``valid_until`` (this worker was paused or cut
        off for the TTL), or when NATS kept failing until then.
        """
        value = json.dumps({"worker": lease.worker, "claimed_at": lease.claimed_at}).encode()
        last: BaseException | None = None
        unsure_sent: float | None = None  # when the first attempt whose answer was lost was sent
        while True:
            sent = time.monotonic()
            left = lease.valid_until - sent - RETRY_WAIT_S
            if left <= 0:
                why = f"NATS failing ({last!r})" if last else "not renewed within its TTL"
                raise LeaseLost(f"stream {lease.stream}: lease of {lease.worker} expired: {why}") from last
            try:
                async with asyncio.timeout(min(left, self.attempt_s)):
                    rev = await self.kv.update(stream_key(lease.stream), value, last=lease.revision)
                return replace(lease, revision=rev, valid_until=sent + self.ttl_s)
            except (TimeoutError, *NATS_ERRORS) as e:
                if is_wrong_sequence(e):
                    mine = await self._written(lease.stream, value) if unsure_sent is not None else None
                    if mine is not None and unsure_sent is not None:
                        return replace(lease, revision=mine, valid_until=unsure_sent + self.ttl_s)
                    raise LeaseLost(f"stream {lease.stream}: lease of {lease.worker} lost (expired or taken over)") from e
                if isinstance(e, TimeoutError) and unsure_sent is None:
                    unsure_sent = sent
                last = e
                logger.warning("stream %s: lease renew failed, retrying: %r", lease.stream, e)
                await asyncio.sleep(RETRY_WAIT_S)

    async def release(self, lease: Lease) -> None:
        """Delete ``lease`` if this worker still holds it at its revision; nothing if it is gone or
        another worker's. Raises :class:`ClusterError` when NATS fails (the lease then expires)."""
        try:
            await self.kv.delete(stream_key(lease.stream), last=lease.revision)
        except NATS_ERRORS as e:
            if is_wrong_sequence(e):
                return
            raise ClusterError(f"stream {lease.stream}: cannot release its lease: {e!r}") from e
        logger.info("stream %s: lease released by %s", lease.stream, lease.worker)

    async def holders(self) -> dict[str, Holder]:
        """Stream id → current holder, for every unexpired lease. Raises :class:`ClusterError`."""
        out: dict[str, Holder] = {}
        for key, entry in (await kv_items(self.kv)).items():
            try:
                worker = json.loads(entry.value or b"")["worker"]
            except (ValueError, KeyError, TypeError):
                logger.warning("lease %s: unreadable value, ignored", key)
                continue
            out[stream_of_key(key)] = Holder(str(worker), int(entry.revision or 0))
        return out
