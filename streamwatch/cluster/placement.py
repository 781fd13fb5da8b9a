"""Placement by measured load (pure: no I/O, no clock): which worker runs which stream, by CPU cost.

Each worker publishes in its membership record its ``budget`` (CPU seconds per second its streams may
use together) and the ``costs`` of the streams it holds (CPU seconds per stream-second, measured by
load.py, or carried from the previous owner). :func:`plan_by_cost` is :func:`assign.plan` with costs in
place of counts; every worker computes the same answer from the same records:

* **Claims.** Unleased streams, heaviest first, each go to the worker whose utilisation (load /
  budget) would be lowest with it, among those under their stream ``capacity`` that did not just
  hand it over; utilisations within :data:`BAND` of the best count as a tie, broken by rendezvous
  rank, so a view that changes a little does not change the answer. A worker over budget after it is
  chosen only when every worker would be (a stream is better watched over budget than not at all).
  A stream not measured anywhere weighs :func:`prior`: the mean of the known costs.
* **Rebalancing** (``receivers`` not None), in a calm view (every desired stream leased, nobody
  draining), one stream per round. Uneven by cost (a worker over budget, or the most utilised above
  the least utilised receiver by more than ``margin``): the most utilised worker hands over the
  stream whose move lowers the pair's peak utilisation most, and only by more than :data:`BAND` (with
  fixed costs the peak strictly falls, so these moves cannot cycle). Even by cost: the worker with
  the most streams hands one to the receiver with the fewest when they differ by 2 or more, only if
  the receiver ends below the donor's utilisation, the peak does not rise and the spread stays within
  ``margin`` (so a count move never starts a cost move, nor puts a light show beside a heavy one on a
  busier worker): a returning worker gets shows back even in a lightly loaded cluster.
* **Hysteresis.** The new owner of a moved stream passes it as ``pinned`` for a cool-down; the
  worker that handed it over lists it in its record's ``handed``, so nobody gives it back; costs are
  published with a dead band (load.py), so noise moves nothing.

A view where some eligible worker publishes no budget (an older worker, or none known) is placed by
count: :func:`cost_ready` tells the caller which planner to use.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from streamwatch.cluster.assign import Member, Plan, rank, weight

BAND = 0.05  # utilisations (load / budget) closer than this are equal
DEFAULT_MARGIN = 0.2  # rebalance when the most utilised worker is this far above the least


def eligible(members: Mapping[str, Member]) -> list[str]:
    """Workers that run streams: not draining, capacity above 0."""
    return [w for w, m in members.items() if not m.draining and m.capacity > 0]


def cost_ready(members: Mapping[str, Member]) -> bool:
    """Whether every eligible worker publishes a budget (placement by cost is possible)."""
    workers = eligible(members)
    return bool(workers) and all(members[w].budget > 0 for w in workers)


def cost_view(members: Mapping[str, Member], leases: Mapping[str, str]) -> dict[str, float]:
    """Stream → cost from every record (the holder's figure wins over a stale one elsewhere)."""
    view: dict[str, float] = {}
    for w, m in members.items():
        for s, c in m.costs:
            if s not in view or leases.get(s) == w:
                view[s] = c
    return view


def prior(costs: Mapping[str, float], members: Mapping[str, Member]) -> float:
    """What an unmeasured stream weighs: the mean known cost; none known: a budget's share per stream."""
    if costs:
        return sum(costs.values()) / len(costs)
    workers = eligible(members)
    budget = sum(members[w].budget for w in workers)
    capacity = sum(members[w].capacity for w in workers)
    return budget / capacity if capacity > 0 and budget > 0 else 1.0


def settled(members: Mapping[str, Member], now: float, after_s: float) -> set[str]:
    """Workers that may be handed running streams: members for ``after_s`` seconds at wall time ``now``."""
    return {w for w, m in members.items() if now - m.since >= after_s}


def utilisation(load: float, budget: float) -> float:
    return load / budget if budget > 0 else (float("inf") if load > 0 else 0.0)


def best_worker(stream: str, cost: float, candidates: Collection[str], load: Mapping[str, float], budget: Mapping[str, float]) -> str:
    """The candidate with the lowest utilisation once it runs ``stream`` (ties within :data:`BAND`: rendezvous rank)."""
    after = {w: utilisation(load[w] + cost, budget[w]) for w in candidates}
    low = min(after.values())
    tied = [w for w in candidates if after[w] <= low + BAND]
    fits = [w for w in tied if after[w] <= 1.0]
    return rank(stream, fits or tied)[0]


def plan_by_cost(
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
    margin: float = DEFAULT_MARGIN,
) -> Plan:
    """This round's claims and releases for worker ``me`` by cost (arguments as :func:`assign.plan`;
    ``margin``: the utilisation spread that starts a move)."""
    done = set(ended)
    mine = sorted(s for s, holder in leases.items() if holder == me)
    member = members.get(me)
    if member is None or member.draining:
        return Plan(release=tuple(mine))
    release = [s for s in mine if s not in desired]
    kept = [s for s in mine if s in desired and s not in done]
    if len(kept) > member.capacity:
        kept.sort(key=lambda s: weight(s, me), reverse=True)
        release += kept[member.capacity :]
        kept = kept[: member.capacity]

    known = cost_view(members, leases)
    default = prior(known, members)

    def cost(s: str) -> float:
        return known.get(s, default)

    workers = eligible(members)
    budget = {w: members[w].budget for w in workers}
    load = dict.fromkeys(workers, 0.0)
    count = dict.fromkeys(workers, 0)
    for s, holder in leases.items():
        if s in desired and s not in done and holder in load and holder != me:
            load[holder] += cost(s)
            count[holder] += 1
    if me in load:
        load[me], count[me] = sum(cost(s) for s in kept), len(kept)

    unleased = sorted(desired - leases.keys(), key=lambda s: (-cost(s), s))
    claim: list[str] = []
    for s in unleased:
        candidates = [w for w in workers if count[w] < members[w].capacity and s not in members[w].handed]
        if not candidates:
            continue
        w = best_worker(s, cost(s), candidates, load, budget)
        load[w] += cost(s)
        count[w] += 1
        if w == me:
            claim.append(s)
    ages = unleased_for or {}
    left = member.capacity - len(kept) - len(claim)
    for s in sorted(unleased):
        if left <= 0:
            break
        if s not in claim and s not in member.handed and ages.get(s, 0.0) >= grace_s:
            claim.append(s)
            left -= 1

    calm = not unleased and not any(m.draining for m in members.values())
    moved: tuple[str, ...] = ()
    if receivers is not None and calm and me in load:
        out = _move(me, [s for s in kept if s not in pinned], cost, workers, receivers, members, load, budget, count, margin)
        if out is not None:
            moved = (out,)
            release.append(out)
    return Plan(claim=tuple(claim), release=tuple(release), rebalance=moved)


def _move(
    me: str,
    movable: list[str],
    cost: Callable[[str], float],
    workers: list[str],
    receivers: Collection[str],
    members: Mapping[str, Member],
    load: Mapping[str, float],
    budget: Mapping[str, float],
    count: Mapping[str, int],
    margin: float,
) -> str | None:
    """The stream ``me`` hands over this round to even the load, if any (see the module docstring)."""
    util = {w: utilisation(load[w], budget[w]) for w in workers}
    takers = [w for w in workers if w != me and w in receivers and count[w] < members[w].capacity]
    if not movable or not takers:
        return None
    low = min(takers, key=lambda w: (util[w], w))
    top = max(workers, key=lambda w: (util[w], w))
    if util[top] > 1.0 or util[top] - util[low] > margin:  # uneven by cost: only the most utilised worker moves
        if top != me:
            return None
        best: tuple[float, int, str] | None = None
        for s in movable:
            c = cost(s)
            peak = max(utilisation(load[me] - c, budget[me]), utilisation(load[low] + c, budget[low]))
            if peak < util[me] - BAND:
                key = (peak, weight(s, me), s)
                best = key if best is None or key < best else best
        return None if best is None else best[2]
    # even by cost: even the counts too (fewer shows hit by one crash), never leaving the margin or a budget
    few = min(takers, key=lambda w: (count[w], util[w], w))
    if max(workers, key=lambda w: (count[w], w)) != me or count[me] - count[few] < 2:
        return None
    even: tuple[float, int, str] | None = None
    for s in movable:
        after = {**util, me: utilisation(load[me] - cost(s), budget[me]), few: utilisation(load[few] + cost(s), budget[few])}
        spread = max(after.values()) - min(after.values())
        if after[few] < util[me] and max(after.values()) <= max(util.values()) and spread <= margin:  # toward less load only
            key = (spread, weight(s, me), s)
            even = key if even is None or key < even else even
    return None if even is None else even[2]
