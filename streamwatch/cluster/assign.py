"""Which worker runs which stream: rendezvous hashing with capacities (pure: no I/O, no clock).

Every worker computes the same answer from the same view (desired streams, leases, members), so
they rarely race for a stream; when they do, the lease's ``create`` decides (see leases.py).

* :func:`rank` orders workers for a stream by highest random weight (a stable BLAKE2b hash of
  stream and worker, not Python's salted ``hash``): when a worker leaves, only its streams move;
  when one joins, it becomes preferred for about 1/n of the streams.
* :func:`plan` tells one worker what to claim and release this round. Leases are sticky, with one
  exception: when rebalancing is on, a worker above an even share hands one stream per round to a
  settled worker below it (a joined or returned worker gets its share; each move is a short gap).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Member:
    """A live worker as its membership record describes it.

    ``capacity``: streams it runs at most (0: a gateway); ``draining``: it is shutting down and hands
    its streams over; ``streams``: the ones it runs; ``rss_mb``: its resident memory (MiB); ``at``:
    wall time (s since the epoch) of the record; ``since``: wall time it joined (its first record);
    ``ended``: held streams whose run is over. Load (see placement.py): ``budget``: CPU seconds per
    second its streams may use together (0: not published, placement counts streams); ``costs``:
    (stream, CPU s per stream-second) measured here or carried; ``handed``: streams it just handed
    over to even the load (nobody hands them back to it).
    """

    capacity: int
    draining: bool = False
    streams: tuple[str, ...] = ()
    rss_mb: float = 0.0
    at: float = 0.0
    since: float = 0.0
    ended: tuple[str, ...] = ()  # held streams whose run is over (a file read to its end)
    budget: float = 0.0
    costs: tuple[tuple[str, float], ...] = ()
    handed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """What one worker does this round: streams to claim (best first) and to release."""

    claim: tuple[str, ...] = ()
    release: tuple[str, ...] = ()
    rebalance: tuple[str, ...] = ()  # the part of ``release`` handed over to even the load


def weight(stream_id: str, worker: str) -> int:
    """Stable 64-bit weight of ``worker`` for ``stream_id`` (the same in every process and run)."""
    digest = hashlib.blake2b(f"{stream_id}\x00{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(stream_id: str, workers: Iterable[str]) -> list[str]:
    """``workers`` ordered best first for ``stream_id`` (ties, practically never, broken by name)."""
    return sorted(workers, key=lambda w: (weight(stream_id, w), w), reverse=True)


def plan(
    desired: set[str],
    leases: Mapping[str, str],
    members: Mapping[str, Member],
    me: str,
    *,
    unleased_for: Mapping[str, float] | None = None,
    grace_s: float = 10.0,
    receivers: Collection[str] | None = None,
    pinned: Collection[str] = (),
    ended: Collection[str] = (),
) -> Plan:
    """This round's claims and releases for worker ``me``.

    ``desired``: stream ids that should run; ``leases``: stream id → holder; ``members``: live
    workers (``me`` included once it has registered; absent, it claims nothing); ``unleased_for``:
    stream id → seconds it has been seen without a lease (see :class:`UnleasedClock`); ``ended``:
    leased streams whose run is over (a file read to its end): they keep their lease and cost
    nothing, so they count in no load, share or capacity.

    * A draining (or unregistered) worker releases everything it holds.
    * Streams no longer desired are released.
    * Unleased desired streams are handed out in stream-id order, each to the best-ranked
      non-draining member with room, as every worker would compute it; ``me`` claims those that
      fall to it. Room = min(capacity, an even share: active desired streams / eligible members,
      rounded up) minus the active desired leases it holds (consistent hashing with bounded loads).
    * A stream unleased for ``grace_s`` seconds or more is claimed by ``me`` whenever it has
      capacity left, whoever is preferred (that worker may be stuck, or see another view).
    * ``me`` never runs more than its capacity: claims stop at it, and when its capacity was
      lowered the surplus is released (the streams where it ranks lowest).
    * Rebalancing (``receivers``: workers settled long enough to be handed running streams; None:
      off). Only in a calm view (every desired stream leased, nobody draining): when ``me`` runs
      more than its even share and a receiver has room below its own, ``me`` releases one stream
      (where it ranks lowest) that is not ``pinned`` (a file: a new owner would read it from the
      start). Its own room is then none, so the stream goes to a worker below its share; a worker
      at or under its share never releases, so streams do not swing back and forth.
    """
    done = set(ended)
    mine = sorted(s for s, holder in leases.items() if holder == me)
    member = members.get(me)
    if member is None or member.draining:
        return Plan(release=tuple(mine))
    release = [s for s in mine if s not in desired]
    kept = [s for s in mine if s in desired and s not in done]  # the ones running here
    if len(kept) > member.capacity:
        kept.sort(key=lambda s: weight(s, me), reverse=True)
        release += kept[member.capacity :]
        kept = kept[: member.capacity]

    eligible = [w for w, m in members.items() if not m.draining and m.capacity > 0]
    # bounded load: nobody is handed more than an even share (rounded up) while others have room,
    # so 6 streams on 3 workers are 2 + 2 + 2, not whatever the hash happens to give
    share = -(-len(desired - done) // max(1, len(eligible)))
    free = {w: min(members[w].capacity, share) for w in eligible}
    for s, holder in leases.items():
        if s in desired and s not in done and holder in free:
            free[holder] -= 1
    if me in free:
        free[me] = min(member.capacity, share) - len(kept)

    unleased = sorted(desired - leases.keys())
    claim: list[str] = []
    for s in unleased:
        for w in rank(s, eligible):
            if free[w] > 0:
                free[w] -= 1
                if w == me:
                    claim.append(s)
                break
    ages = unleased_for or {}
    left = member.capacity - len(kept) - len(claim)
    for s in unleased:
        if left <= 0:
            break
        if s not in claim and ages.get(s, 0.0) >= grace_s:
            claim.append(s)
            left -= 1
    moved: tuple[str, ...] = ()
    calm = not unleased and not any(m.draining for m in members.values())
    movable = [s for s in kept if s not in pinned]
    above = bool(movable) and len(kept) > min(member.capacity, share)
    if receivers is not None and calm and above and any(free[w] > 0 for w in eligible if w != me and w in receivers):
        moved = (min(movable, key=lambda s: (weight(s, me), s)),)
        release += moved
    return Plan(claim=tuple(claim), release=tuple(release), rebalance=moved)


@dataclass
class UnleasedClock:
    """How long each stream has been seen without a lease (pure: the caller passes the time).

    ``observe(unleased, now)`` with the set of unleased desired stream ids and a monotonic time
    (seconds) returns stream id → seconds since it was first seen unleased in an unbroken run.
    """

    _since: dict[str, float] = field(default_factory=dict)

    def observe(self, unleased: Iterable[str], now: float) -> dict[str, float]:
        current = set(unleased)
        self._since = {s: t for s, t in self._since.items() if s in current}
        for s in current:
            self._since.setdefault(s, now)
        return {s: now - t for s, t in self._since.items()}
