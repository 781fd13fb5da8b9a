"""Cluster control plane (streamwatch/cluster/): assignment (pure), and leases, desired streams,
membership and carried state against a real NATS JetStream cluster on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from streamwatch.cluster.assign import Member, UnleasedClock, plan, rank
from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError, LeaseLost

T = TypeVar("T")
_bucket_ids = itertools.count()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def cfg_for(urls: list[str], **kw: Any) -> ClusterConfig:
    return ClusterConfig(nats=urls, connect_timeout_s=kw.pop("connect_timeout_s", 10.0), **kw)


def fresh(prefix: str) -> str:
    """A bucket name no other test uses (the nats3 cluster is shared by the session)."""
    return f"t{next(_bucket_ids)}-{prefix}-{int(time.time() * 1000) % 10**8}"


# --- assignment (pure) -------------------------------------------------------------------------


def assign_all(streams: set[str], members: dict[str, Member], leases: dict[str, str] | None = None) -> dict[str, str]:
    """Rounds of every worker planning on the same view until nothing changes (first claim wins)."""
    leases = dict(leases or {})
    for _ in range(10):
        changed = False
        for w in sorted(members):
            p = plan(streams, leases, members, w)
            for s in p.release:
                leases.pop(s, None)
                changed = True
            for s in p.claim:
                if s not in leases:
                    leases[s] = w
                    changed = True
        if not changed:
            break
    return leases


def test_rank_is_stable_and_spreads_evenly() -> None:
    workers = ["w-a", "w-b", "w-c"]
    assert rank("cam1", workers) == rank("cam1", list(reversed(workers)))
    streams = {f"s{i}" for i in range(60)}
    members = {w: Member(capacity=100) for w in workers}
    leases = assign_all(streams, members)
    assert set(leases) == streams
    counts = Counter(leases.values())
    print("60 streams over 3 workers:", dict(counts))
    assert all(14 <= counts[w] <= 26 for w in workers), counts


def test_a_leaving_worker_moves_only_its_streams() -> None:
    workers = ["w-a", "w-b", "w-c", "w-d"]
    streams = {f"s{i}" for i in range(80)}
    members = {w: Member(capacity=100) for w in workers}
    before = assign_all(streams, members)
    gone = "w-c"
    left = {s: w for s, w in before.items() if w != gone}
    del members[gone]
    after = assign_all(streams, members, left)
    moved = {s for s in streams if before[s] != after[s]}
    assert moved == {s for s, w in before.items() if w == gone}
    assert set(after) == streams
    # and the moved streams go where a fresh assignment of the remaining workers would put them
    assert after == assign_all(streams, members)


def test_capacity_is_respected_and_overflow_goes_to_the_next_ranked() -> None:
    streams = {f"s{i}" for i in range(30)}
    members = {"w-a": Member(capacity=4), "w-b": Member(capacity=10), "w-c": Member(capacity=10)}
    leases = assign_all(streams, members)
    counts = Counter(leases.values())
    assert counts["w-a"] == 4 and counts["w-b"] == 10 and counts["w-c"] == 10
    # 6 streams stay unleased: nobody has room
    assert len(leases) == 24
    # a worker whose capacity was lowered releases the surplus
    members["w-b"] = Member(capacity=7)
    p = plan(streams, leases, members, "w-b")
    assert len(p.release) == 3 and not p.claim


def test_draining_releases_all_and_gets_nothing() -> None:
    streams = {f"s{i}" for i in range(12)}
    members = {"w-a": Member(capacity=12), "w-b": Member(capacity=12)}
    leases = assign_all(streams, members)
    members["w-a"] = Member(capacity=12, draining=True)
    p = plan(streams, leases, members, "w-a")
    assert set(p.release) == {s for s, w in leases.items() if w == "w-a"} and not p.claim
    after = assign_all(streams, members, leases)
    assert set(after.values()) == {"w-b"} and set(after) == streams


def test_not_desired_is_released_and_unregistered_claims_nothing() -> None:
    members = {"w-a": Member(capacity=5)}
    p = plan({"s1"}, {"s1": "w-a", "old": "w-a"}, members, "w-a")
    assert p.release == ("old",) and not p.claim
    assert plan({"s1", "s2"}, {}, members, "w-z") == plan(set(), {}, {}, "w-z")


def test_grace_lets_any_worker_with_room_take_a_stream_its_preferred_worker_leaves_unleased() -> None:
    members = {"w-a": Member(capacity=5), "w-b": Member(capacity=5)}
    stream = next(s for s in (f"s{i}" for i in range(100)) if rank(s, members)[0] == "w-a")
    assert plan({stream}, {}, members, "w-b").claim == ()
    clock = UnleasedClock()
    clock.observe({stream}, 100.0)
    ages = clock.observe({stream}, 112.0)
    assert ages == {stream: 12.0}
    assert plan({stream}, {}, members, "w-b", unleased_for=ages, grace_s=10.0).claim == (stream,)
    # but not beyond its capacity
    full = {"w-a": Member(capacity=5), "w-b": Member(capacity=1)}
    assert plan({stream, "x"}, {"x": "w-b"}, full, "w-b", unleased_for=ages, grace_s=10.0).claim == ()
    assert clock.observe(set(), 113.0) == {}
