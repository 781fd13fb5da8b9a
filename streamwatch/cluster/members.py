"""Worker membership: each worker writes its record every renew into a KV bucket with a TTL, so a
worker that stops writing (crashed, cut off) drops out of :meth:`Members.live` after the TTL.

Key: the worker id; value JSON ``{"capacity", "draining", "streams", "rss_mb", "at", "since", "ended",
"budget", "costs", "handed"}`` (``at``: wall time of the record in seconds since the epoch; ``since``:
when the worker joined; ``rss_mb``: resident memory in MiB; ``budget``: CPU s per s for its streams;
``costs``: ``[[stream, CPU s per stream-second], …]``; ``handed``: streams just handed over to even the
load, see placement.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict

import nats.js.errors
from nats.js.kv import KeyValue

from streamwatch.cluster.assign import Member
from streamwatch.cluster.kv import NATS_ERRORS, kv_items
from streamwatch.errors import ClusterError

logger = logging.getLogger(__name__)


def rss_mb() -> float:
    """This process's resident memory in MiB (0 when /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import resource

    return round(pages * resource.getpagesize() / 2**20, 1)


class Members:
    """Membership records in ``kv`` (a bucket whose TTL is the lease TTL, see ``connect.kv_bucket``)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def put(
        self,
        worker: str,
        *,
        capacity: int,
        draining: bool = False,
        streams: tuple[str, ...] = (),
        since: float | None = None,
        ended: tuple[str, ...] = (),
        budget: float = 0.0,
        costs: Mapping[str, float] | None = None,
        handed: tuple[str, ...] = (),
    ) -> Member:
        """Write ``worker``'s record now (call every renew; ``since``: when it joined, default now);
        the record written. Raises :class:`ClusterError` when NATS fails.
        """
        now = time.time()
        joined = now if since is None else since
        held, over = tuple(sorted(streams)), tuple(sorted(ended))
        member = Member(
            capacity=capacity,
            draining=draining,
            streams=held,
            rss_mb=rss_mb(),
            at=now,
            since=joined,
            ended=over,
            budget=budget,
            costs=tuple(sorted((costs or {}).items())),
            handed=tuple(sorted(handed)),
        )
        try:
            await self.kv.put(worker, json.dumps(asdict(member)).encode())  # tuples become JSON lists
        except NATS_ERRORS as e:
            raise ClusterError(f"worker {worker}: cannot write its membership: {e!r}") from e
        return member

    async def leave(self, worker: str) -> None:
        """Remove ``worker``'s record at once (a clean shutdown). Raises :class:`ClusterError`."""
        try:
            await self.kv.delete(worker)
        except nats.js.errors.KeyNotFoundError:
            return
        except NATS_ERRORS as e:
            raise ClusterError(f"worker {worker}: cannot remove its membership: {e!r}") from e

    async def live(self) -> dict[str, Member]:
        """Worker id → record of every worker that wrote within the TTL (unreadable records are
        logged and left out). Raises :class:`ClusterError` when NATS fails."""
        out: dict[str, Member] = {}
        for key, entry in (await kv_items(self.kv)).items():
            try:
                d = json.loads(entry.value or b"")
                out[key] = Member(
                    capacity=int(d["capacity"]),
                    draining=bool(d.get("draining", False)),
                    streams=tuple(str(s) for s in d.get("streams", ())),
                    rss_mb=float(d.get("rss_mb", 0.0)),
                    at=float(d.get("at", 0.0)),
                    since=float(d.get("since", d.get("at", 0.0))),
                    ended=tuple(str(s) for s in d.get("ended", ())),
                    budget=float(d.get("budget", 0.0)),
                    costs=tuple((str(s), float(c)) for s, c in d.get("costs", ())),
                    handed=tuple(str(s) for s in d.get("handed", ())),
                )
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("member %s: unreadable record, ignored: %s", key, e)
        return out
