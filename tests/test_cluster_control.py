"""Cluster control plane (streamwatch/cluster/): assignment (pure), and leases, desired streams,
membership and carried state against a real NATS JetStream cluster on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter
from collections.abc import Awaitable
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
    assert all(counts[w] == 20 for w in workers), counts  # bounded loads: an even share each


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
    # bounded loads: nobody holds more than an even share (80 streams / 3 workers, rounded up)
    counts = Counter(after.values())
    assert max(counts.values()) <= 27, counts


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


def settle(
    streams: set[str], members: dict[str, Member], leases: dict[str, str], receivers: set[str] | None, seed: int = 0
) -> tuple[dict[str, str], Counter[str], int]:
    """Rounds in which every worker plans on the same snapshot at once (claims applied in a random
    order, first wins) until 5 rounds change nothing; the leases, moves per stream, rounds taken."""
    import random

    rnd = random.Random(seed)
    leases = dict(leases)
    moves: Counter[str] = Counter()
    quiet = 0
    for n in range(200):
        snapshot = dict(leases)
        plans = {w: plan(streams, snapshot, members, w, receivers=receivers) for w in members}
        for p in plans.values():
            for sid in p.release:
                leases.pop(sid, None)
                moves[sid] += sid in p.rebalance
        order = list(plans)
        rnd.shuffle(order)
        for w in order:
            for sid in plans[w].claim:
                leases.setdefault(sid, w)
        quiet = quiet + 1 if leases == snapshot else 0
        if quiet >= 5:
            return leases, moves, n
    raise AssertionError(f"never settled: {Counter(leases.values())}")


@pytest.mark.parametrize("seed", range(3))
def test_a_worker_that_joins_gets_its_even_share_each_stream_moving_once(seed: int) -> None:
    streams = {f"s{i}" for i in range(60)}
    members = {w: Member(capacity=100) for w in ("w-a", "w-b", "w-c")}
    before = assign_all(streams, members)
    members["w-d"] = Member(capacity=100)
    after, moves, rounds = settle(streams, members, before, receivers=set(members), seed=seed)
    counts = Counter(after.values())
    print(f"seed {seed}: 60 streams, a 4th worker joins: {dict(counts)} after {rounds} rounds, {sum(moves.values())} moves")
    assert set(after) == streams
    assert counts == Counter({w: 15 for w in members}), counts
    assert max(moves.values()) == 1, "a stream moved more than once"
    assert sum(moves.values()) == 15, "only what the new worker needs moves"
    assert {s for s in streams if before[s] != after[s]} == {s for s, w in after.items() if w == "w-d"}


def test_no_rebalancing_when_off_too_soon_not_calm_or_already_within_a_share() -> None:
    streams = {f"s{i}" for i in range(6)}
    two = {"w-a": Member(capacity=8), "w-b": Member(capacity=8)}
    held = assign_all(streams, two)  # 3 + 3
    members = {**two, "w-c": Member(capacity=8)}
    heavy = Counter(held.values()).most_common(1)[0][0]
    assert plan(streams, held, members, heavy, receivers=set(members)).rebalance  # above the share of 2, w-c has room
    assert not plan(streams, held, members, heavy, receivers=None).release, "rebalancing off: leases are sticky"
    assert not plan(streams, held, members, heavy, receivers={"w-a", "w-b"}).release, "w-c not settled yet"
    unleased = dict(held)
    unleased.pop(next(s for s, w in held.items() if w != heavy))
    assert not plan(streams, unleased, members, heavy, receivers=set(members)).rebalance, "a stream is unleased: not calm"
    draining = {**members, "w-b" if heavy == "w-a" else "w-a": Member(capacity=8, draining=True)}
    assert not plan(streams, held, draining, heavy, receivers=set(members)).rebalance, "someone drains: not calm"
    full = {**two, "w-c": Member(capacity=0)}
    assert not plan(streams, held, full, heavy, receivers=set(members)).release, "nobody with room"
    assert not plan(streams, held, members, heavy, receivers=set(members), pinned=set(held)).release, "files and ended streams stay"
    mine = sorted(s for s, w in held.items() if w == heavy)
    assert plan(streams, held, members, heavy, receivers=set(members), pinned=set(mine[1:])).rebalance == (mine[0],)
    seven = {f"s{i}" for i in range(7)}
    uneven = {**{f"s{i}": "w-a" for i in range(3)}, **{f"s{i}": "w-b" for i in range(3, 6)}, "s6": "w-c"}
    for w in members:  # 3 + 3 + 1 with an even share of 3: nobody is above it, nothing moves
        assert not plan(seven, uneven, members, w, receivers=set(members)).release


def test_ended_streams_count_in_no_load_share_or_capacity() -> None:
    members = {"w-a": Member(capacity=1, since=0.0), "w-b": Member(capacity=8)}
    leases = {"file1": "w-a", "file2": "w-a", "live": "w-a"}  # two files read to their end, one live stream
    desired = set(leases)
    done = {"file1", "file2"}
    for w in members:
        assert not plan(desired, leases, members, w, receivers=set(members), ended=done).release, "nothing to even out, room left"
    # without knowing they ended, w-a would look over capacity and above its share
    assert plan(desired, leases, members, "w-a", receivers=set(members)).release
    # a new stream goes to the worker that runs less, not to the one holding the ended files
    more = desired | {"new"}
    assert plan(more, leases, members, "w-b", ended=done).claim == ("new",)
    assert plan(more, leases, members, "w-a", ended=done).claim == ()


# --- cooldowns carried to a new owner (pure) ---------------------------------------------------


def test_a_new_owner_retries_reading_the_carried_state_then_starts_afresh() -> None:
    """During a NATS leader election the carried state cannot be read for seconds: the new owner
    retries, and if it still cannot, starts a new session instead of leaving the stream dead."""
    from streamwatch.analysis.policy import load_policy
    from streamwatch.analysis.rules import RuleEngine
    from streamwatch.cluster.carry import CarryTable, StreamCarry
    from streamwatch.cluster.session import CarriedSession

    class Flaky(CarryTable):
        def __init__(self, failures: int) -> None:
            self.failures = failures
            self.reads = 0

        async def load(self, stream: str) -> StreamCarry | None:
            self.reads += 1
            if self.reads <= self.failures:
                raise ClusterError(f"stream {stream}: cannot load its carried state: TimeoutError()")
            return StreamCarry(time.time() - 60, time.time() - 2, 58.0)

    engine = RuleEngine(load_policy(Path(__file__).resolve().parent.parent / "models" / "policy.toml"))
    table = Flaky(failures=2)
    started, gap = run(CarriedSession(table, "s1", lambda: engine, "w1").restore(patience_s=10))
    assert table.reads == 3 and started is not None and gap is not None and gap.offset == 58.0
    down = Flaky(failures=10**6)
    assert run(CarriedSession(down, "s1", lambda: engine, "w1").restore(patience_s=1.0)) == (None, None)
    assert down.reads >= 2


def test_a_takeover_engine_keeps_the_cooldown_of_an_alert_already_raised() -> None:
    from streamwatch.analysis.model import Detection, FrameAnalysis
    from streamwatch.analysis.policy import load_policy
    from streamwatch.analysis.rules import RuleEngine
    from streamwatch.cluster.carry import StreamCarry

    policy = load_policy(Path(__file__).resolve().parent.parent / "models" / "policy.toml")

    def frame(offset: float, text: str, stream: str = "s1") -> FrameAnalysis:
        return FrameAnalysis(stream, offset, 1000.0 + offset, 1000.0 + offset, (Detection("ocr", "text", 0.9, None, text),), 640, 360)

    first = RuleEngine(policy)
    assert [a.rule for a in first.evaluate(frame(10, "加微信 abc123"))] == ["contact_spam"]
    assert first.evaluate(frame(12, "加微信 abc123", stream="other"))  # another stream's state: not exported
    exported = first.export_cooldowns("s1")
    assert len(exported) == 1
    # through the carried record's JSON, as a new owner gets it
    carry = StreamCarry.from_json(StreamCarry(1000.0, 1040.0, 40.0, exported).to_json())
    second = RuleEngine(policy)
    second.import_cooldowns("s1", carry.cooldowns)
    assert second.evaluate(frame(40, "加微信 abc123")) == []  # still in cooldown: not raised again
    assert [a.rule for a in RuleEngine(policy).evaluate(frame(40, "加微信 abc123"))] == ["contact_spam"]  # without the import: repeated
    assert [a.rule for a in second.evaluate(frame(120, "加微信 abc123"))] == ["contact_spam"]  # after the cooldown: a new alert
    # keys with any characters round-trip; junk keys are skipped
    odd = RuleEngine(policy)
    odd.import_cooldowns("s1", {'["r\\u0000", "a\\"b|c"]': 5.0, "not json": 1.0, "[1, 2]": 1.0})
    assert odd.export_cooldowns("s1") == {'["r\\u0000", "a\\"b|c"]': 5.0}


# --- NATS: connect ------------------------------------------------------------------------------


def test_connect_gives_up_with_a_clear_error_when_nothing_listens() -> None:
    from conftest import free_port

    from streamwatch.cluster.connect import connect

    url = f"nats://bob:hunter2@127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        run(connect(cfg_for([url], connect_timeout_s=1.5), name="t"))
    took = time.monotonic() - t0
    print(f"connect gave up after {took:.2f} s")
    assert 1.4 <= took < 6
    msg = str(err.value)
    assert "127.0.0.1" in msg and "hunter2" not in msg and "1.5 s" in msg


def test_connect_reaches_a_server_that_comes_up_during_the_retry_window(tmp_path: Path) -> None:
    from nats_cluster import make_cluster

    from streamwatch.cluster.connect import connect

    cluster = make_cluster(tmp_path, 1)

    async def go() -> float:
        loop = asyncio.get_running_loop()
        starter = loop.call_later(1.0, lambda: loop.run_in_executor(None, cluster.start))
        t0 = time.monotonic()
        try:
            nc = await connect(cfg_for(cluster.urls, connect_timeout_s=10.0), name="late")
        finally:
            starter.cancel()
        took = time.monotonic() - t0
        assert nc.is_connected
        # a 1-node server takes buckets configured for 3 replicas (capped to 1)
        from streamwatch.cluster.kv import kv_bucket

        kv = await kv_bucket(nc.jetstream(), "sw-leases", ttl_s=4.0, replicas=3)
        assert (await kv.status()).stream_info.config.num_replicas == 1
        assert (await (await kv_bucket(nc.jetstream(), "sw-leases", ttl_s=9.0, replicas=3)).status()).ttl == 4.0  # bound as it is
        await nc.close()
        return took

    try:
        took = run(go())
        print(f"connected {took:.2f} s after the first try (server started at ~1 s)")
        assert 1.0 <= took < 8
    finally:
        cluster.stop()


def test_a_create_refused_whose_read_back_hit_a_lagging_replica_counts_as_held() -> None:
    """nats-py's ``create`` reads the key back after a wrong sequence; a replica that has not seen
    the other writer yet answers "not found", raised while handling the wrong sequence."""
    import nats.js.errors

    from streamwatch.cluster.kv import is_wrong_sequence

    def chained() -> BaseException:
        try:
            try:
                try:
                    raise nats.js.errors.KeyWrongLastSequenceError(description="wrong last sequence")
                except nats.js.errors.KeyWrongLastSequenceError:
                    raise nats.js.errors.NotFoundError(code=404, err_code=10037) from None
            except nats.js.errors.NotFoundError:
                raise nats.js.errors.KeyNotFoundError() from None
        except nats.js.errors.KeyNotFoundError as e:
            return e

    assert is_wrong_sequence(chained())
    assert not is_wrong_sequence(nats.js.errors.KeyNotFoundError())
    assert is_wrong_sequence(nats.js.errors.BadRequestError(code=400, err_code=10071))
    assert not is_wrong_sequence(nats.js.errors.BadRequestError(code=400, err_code=10058))


# --- NATS: leases -------------------------------------------------------------------------------


async def open_client(urls: list[str], name: str = "test") -> Any:
    from streamwatch.cluster.connect import connect

    return await connect(cfg_for(urls), name=name)


async def open_leases(nc: Any, bucket: str, ttl_s: float) -> Any:
    from streamwatch.cluster.kv import kv_bucket
    from streamwatch.cluster.leases import LeaseTable

    return LeaseTable(await kv_bucket(nc.jetstream(), bucket, ttl_s=ttl_s, replicas=3), ttl_s=ttl_s)


def test_racing_claims_give_exactly_one_lease(nats3: Any) -> None:
    bucket = fresh("race")

    async def go() -> None:
        a = await open_client([nats3.urls[0]], "a")
        b = await open_client([nats3.urls[1]], "b")
        try:
            ta, tb = await asyncio.gather(open_leases(a, bucket, 10.0), open_leases(b, bucket, 10.0))
            for i in range(10):
                s = f"cam.{i}"  # a dotted id, as stream ids allow
                got = await asyncio.gather(ta.claim(s, "w-a"), tb.claim(s, "w-b"))
                winners = [x for x in got if x is not None]
                assert len(winners) == 1, got
                holders = await ta.holders()
                assert holders[s] == (winners[0].worker, winners[0].revision)
            assert await ta.claim("cam.0", "w-a") is None  # held: refused
        finally:
            await a.close()
            await b.close()

    run(go())


def test_an_unrenewed_lease_expires_and_is_taken_over_and_the_old_holder_is_fenced(nats3: Any) -> None:
    import dataclasses

    bucket = fresh("ttl")
    ttl = 2.0

    async def go() -> float:
        a = await open_client([nats3.urls[0]], "a")
        b = await open_client([nats3.urls[2]], "b")
        try:
            ta, tb = await open_leases(a, bucket, ttl), await open_leases(b, bucket, ttl)
            lease = await ta.claim("s1", "w-a")
            idle = await ta.claim("s2", "w-a")
            assert lease is not None and idle is not None
            for _ in range(3):  # renewing keeps it (3 s > the TTL)
                await asyncio.sleep(1.0)
                lease = await ta.renew(lease)
                assert await tb.claim("s1", "w-b") is None
            last_renew = time.monotonic()
            # w-a is "paused" now; w-b keeps trying
            taken = None
            while taken is None:  # polling NATS: no event to wait on
                await asyncio.sleep(0.05)
                taken = await tb.claim("s1", "w-b")
            takeover = time.monotonic() - last_renew
            assert (await tb.holders())["s1"].worker == "w-b"
            # the paused holder wakes up: its renew fails, on its own clock ...
            with pytest.raises(LeaseLost):
                await ta.renew(lease)
            # ... and on the revision check even if its clock says it is still valid
            with pytest.raises(LeaseLost):
                await ta.renew(dataclasses.replace(lease, valid_until=time.monotonic() + 60))
            with pytest.raises(LeaseLost):  # expired, not re-created
                await ta.renew(dataclasses.replace(idle, valid_until=time.monotonic() + 60))
            await ta.release(lease)  # a stale release leaves the new holder's lease alone
            assert (await tb.holders())["s1"] == (taken.worker, taken.revision)
            await tb.release(taken)
            assert "s1" not in await tb.holders()
            assert await ta.claim("s1", "w-a") is not None  # released: free at once
            return takeover
        finally:
            await a.close()
            await b.close()

    takeover = run(go())
    print(f"lease TTL {ttl} s: taken over {takeover:.2f} s after the last renew")
    assert ttl <= takeover < ttl + 3.0


def test_a_claim_whose_answer_was_lost_is_adopted_by_the_next_claim(nats3: Any) -> None:
    bucket = fresh("lost")

    async def go() -> int:
        nc = await open_client(nats3.urls)
        landed = 0
        try:
            table = await open_leases(nc, bucket, 10.0)
            for i in range(5):
                table.attempt_s = 0.0003  # gives up before the answer comes; the write still goes out
                with pytest.raises(ClusterError):
                    await table.claim(f"s{i}", "w-a")
                await asyncio.sleep(0.2)
                holders = await table.holders()
                landed += holders.get(f"s{i}", ("", 0))[0] == "w-a"
                table.attempt_s = 2.5
                lease = await table.claim(f"s{i}", "w-a")  # without adoption: None (the key exists)
                assert lease is not None
                assert (await table.holders())[f"s{i}"] == (lease.worker, lease.revision)
                await table.renew(lease)
                assert await table.claim(f"s{i}", "w-b") is None
        finally:
            await nc.close()
        return landed

    landed = run(go())
    print(f"lost-answer claims that had landed: {landed} of 5")
    assert landed >= 1


# --- NATS: desired streams, members, carried state ----------------------------------------------


def test_desired_streams_add_remove_and_refusals(nats3: Any) -> None:
    from streamwatch.cluster.desired import DesiredStreams
    from streamwatch.cluster.kv import kv_bucket
    from streamwatch.config import StreamConfig
    from streamwatch.errors import ConfigError

    bucket = fresh("desired")

    async def go() -> None:
        a = await open_client(nats3.urls, "gw-a")
        b = await open_client(nats3.urls, "gw-b")
        try:
            da = DesiredStreams(await kv_bucket(a.jetstream(), bucket, ttl_s=None, replicas=3))
            db = DesiredStreams(await kv_bucket(b.jetstream(), bucket, ttl_s=None, replicas=3))
            seen: list[tuple[str, object]] = []
            got_two = asyncio.Event()

            async def follow() -> None:
                async for sid, cfg in da.watch():
                    seen.append((sid, cfg))
                    if len(seen) >= 3:
                        got_two.set()

            watcher = asyncio.create_task(follow())
            cam = StreamConfig(id="cam.1", source="rtmp://u:pw@127.0.0.1/live/key", every_s=2.0)
            # two gateways add the same id at once: exactly one succeeds
            got = await asyncio.gather(da.add(cam), db.add(cam), return_exceptions=True)
            assert sum(isinstance(x, int) for x in got) == 1
            assert sum(isinstance(x, ConfigError) and "already exists" in str(x) for x in got) == 1
            with pytest.raises(ConfigError, match="already exists"):
                await db.add(StreamConfig(id="cam.1", source="rtsp://127.0.0.1/x"))
            with pytest.raises(ConfigError, match="unsupported source scheme"):
                await da.add(StreamConfig(id="bad", source="ftp://127.0.0.1/x.mp4"))
            with pytest.raises(ConfigError, match="listen mode"):
                await da.add(StreamConfig(id="bad2", source="rtsp://127.0.0.1/x", listen=True))
            await db.add(StreamConfig(id="hls_2", source="http://127.0.0.1/live/index.m3u8"))
            assert await da.get("cam.1") == cam
            assert await da.get("nope") is None
            assert set(await db.all()) == {"cam.1", "hls_2"}
            await db.remove("cam.1")
            with pytest.raises(ConfigError, match="unknown stream"):
                await da.remove("cam.1")
            with pytest.raises(ConfigError, match="unknown stream"):
                await da.remove("never")
            assert set(await da.all()) == {"hls_2"}
            await da.add(cam)  # re-adding a removed id works
            await asyncio.wait_for(got_two.wait(), 10)
            watcher.cancel()
            assert seen[:3] == [("cam.1", cam), ("hls_2", await da.get("hls_2")), ("cam.1", None)]
        finally:
            await a.close()
            await b.close()

    run(go())


def test_members_drop_out_after_the_ttl(nats3: Any) -> None:
    from streamwatch.cluster.kv import kv_bucket
    from streamwatch.cluster.members import Members

    bucket = fresh("members")

    async def go() -> None:
        nc = await open_client(nats3.urls)
        try:
            m = Members(await kv_bucket(nc.jetstream(), bucket, ttl_s=1.5, replicas=3))
            await m.put("w-a", capacity=4, streams=("s2", "s1"))
            await m.put("w-b", capacity=2, draining=True)
            await m.put("w-c", capacity=1)
            live = await m.live()
            assert set(live) == {"w-a", "w-b", "w-c"}
            assert live["w-a"].capacity == 4 and live["w-a"].streams == ("s1", "s2") and live["w-a"].rss_mb > 10
            assert live["w-b"].draining and abs(live["w-b"].at - time.time()) < 5
            await m.leave("w-c")
            assert set(await m.live()) == {"w-a", "w-b"}
            t0 = time.monotonic()
            while "w-b" in await m.live():  # w-a keeps writing, w-b stopped
                await m.put("w-a", capacity=4)
                await asyncio.sleep(0.25)
                assert time.monotonic() - t0 < 6
            assert set(await m.live()) == {"w-a"}
        finally:
            await nc.close()

    run(go())


def test_carried_state_round_trips_and_ends(nats3: Any) -> None:
    from streamwatch.cluster.carry import CarryTable, StreamCarry
    from streamwatch.cluster.kv import kv_bucket

    bucket = fresh("state")

    async def go() -> None:
        nc = await open_client(nats3.urls)
        try:
            carry = CarryTable(await kv_bucket(nc.jetstream(), bucket, ttl_s=None, replicas=3), min_interval_s=1.0)
            assert await carry.load("s.1") is None
            c1 = StreamCarry(1000.5, 1060.0, 59.5, {'["contact_spam", "abc"]': 42.0}, "frames/s.1/latest.jpg")
            assert await carry.save("s.1", c1)
            c2 = StreamCarry(1000.5, 1061.0, 60.5, {}, None)
            assert not await carry.save("s.1", c2)  # within a second: skipped
            assert await carry.load("s.1") == c1
            assert await carry.save("s.1", c2, force=True)
            assert await carry.load("s.1") == c2
            assert await carry.save("other", StreamCarry(None, 5.0, 0.0))
            await carry.end("s.1")
            assert await carry.load("s.1") is None
            assert await carry.load("other") == StreamCarry(None, 5.0, 0.0)
        finally:
            await nc.close()

    run(go())


# --- NATS: a node goes away ----------------------------------------------------------------------


def test_claims_and_renewals_go_on_when_the_connected_node_stops(nats3: Any) -> None:
    """The client is given only the URL of the node leading the lease bucket, which is then killed:
    it reconnects to a node it discovered, the bucket elects another leader, and its watch of the
    desired streams goes on."""
    from streamwatch.cluster.desired import DesiredStreams
    from streamwatch.cluster.kv import kv_bucket
    from streamwatch.config import StreamConfig

    bucket = fresh("nodeloss")
    desired_bucket = fresh("nodeloss-desired")
    # a killed leader's followers wait 4-9 s (Raft election timeout) before electing another; no
    # lease can be written meanwhile, so a TTL shorter than that loses every lease of the bucket
    ttl = 12.0
    stopped: list[Any] = []

    async def go() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        setup = await open_client(nats3.urls, "setup")
        try:
            info = await (await open_leases(setup, bucket, ttl)).kv.status()
            leader = info.stream_info.cluster.leader
        finally:
            await setup.close()
        node = next(n for n in nats3.nodes if n.name == leader)
        nc = await open_client([node.url], "w-a")
        gateway = await open_client([n.url for n in nats3.nodes if n is not node], "gw")
        seen: list[str] = []
        try:
            table = await open_leases(nc, bucket, ttl)
            followed = DesiredStreams(await kv_bucket(nc.jetstream(), desired_bucket, ttl_s=None, replicas=3))
            adder = DesiredStreams(await kv_bucket(gateway.jetstream(), desired_bucket, ttl_s=None, replicas=3))

            running = asyncio.Event()

            async def follow() -> None:
                async for sid, _cfg in followed.watch(resync_s=2.0):
                    seen.append(sid)
                    running.set()

            watch = asyncio.create_task(follow())
            await adder.add(StreamConfig(id="before", source="rtsp://127.0.0.1/a"))
            await asyncio.wait_for(running.wait(), 10)  # the watch runs
            lease = await table.claim("s1", "w-a")
            assert lease is not None
            port = nc.connected_url.port
            assert port == node.client_port
            stopped.append(node)
            await loop.run_in_executor(None, functools.partial(node.stop, kill=True))  # a crash, not a clean shutdown
            t0 = time.monotonic()
            lease = await table.renew(lease)  # retried through the reconnect / leader election
            renewed = time.monotonic() - t0
            assert nc.connected_url.port != port
            t1 = time.monotonic()
            while True:  # a claim may time out while the stream elects a new leader
                try:
                    assert await table.claim("s2", "w-a") is not None
                    break
                except ClusterError:
                    assert time.monotonic() - t1 < 15
            claimed = time.monotonic() - t1
            while True:  # listing makes a consumer: that waits for a meta leader, if the killed node was it
                try:
                    assert set(await table.holders()) == {"s1", "s2"}
                    break
                except ClusterError:
                    assert time.monotonic() - t1 < 20
            lease = await table.renew(lease)
            while True:  # the desired bucket may be electing a leader too
                try:
                    await adder.add(StreamConfig(id="after", source="rtsp://127.0.0.1/b"))
                    break
                except ClusterError:
                    assert time.monotonic() - t1 < 20
            t2 = time.monotonic()
            while seen != ["before", "after"]:  # pushed, or found by the resync if the watcher stalled
                assert time.monotonic() - t2 < 10, seen
                lease = await table.renew(lease)
                await asyncio.sleep(0.5)
            watched = time.monotonic() - t2
            watch.cancel()
            await loop.run_in_executor(None, node.start)
            await loop.run_in_executor(None, nats3.wait_ready, 60.0)
            stopped.clear()
            await table.renew(lease)
            print(f"the watch saw a stream added after the crash {watched:.2f} s later")
            return renewed, claimed
        finally:
            await nc.close()
            await gateway.close()

    try:
        renewed, claimed = run(go())
    finally:
        for node in stopped:
            node.start()
        nats3.wait_ready(60.0)
    print(f"connected node (the bucket leader) killed: renew took {renewed:.2f} s, next claim {claimed:.2f} s")
