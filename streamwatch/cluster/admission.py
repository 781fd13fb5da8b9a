"""One in-flight VLM budget per model across every worker of the cluster, held in a JetStream KV bucket.

Model ``m`` with budget ``n`` has slot keys ``<m-safe>.0`` … ``<m-safe>.<n-1>`` in bucket
``<name>_vlm_slots``. A request takes a free slot with ``kv.create`` (refused while another holder's
key exists), renews it with a revision-checked ``update`` every ``ttl_s / 3`` while it runs, and
releases it with a revision-checked ``delete``. The bucket's TTL (``ttl_s``) expires the slots of a
worker that died holding them. Waiting for a slot polls the free keys with short jittered sleeps;
past ``timeout_s`` :class:`AdmissionTimeout` is raised — a busy model, not a failing one
(:class:`streamwatch.vlm.router.ModelRouter` treats it so). NATS errors while waiting are retried
until the same deadline (the cluster then gives no slot: fail closed, the budget holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Mapping

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from streamwatch.cluster.events import reraise_cancel
from streamwatch.config import ClusterConfig, Settings
from streamwatch.errors import ClusterError

logger = logging.getLogger(__name__)


class AdmissionTimeout(ClusterError, TimeoutError):
    """No slot of the model's cluster-wide budget came free within the wait."""


def model_key(model_id: str) -> str:
    """KV-safe, reversible token of a model id: bytes outside ``[A-Za-z0-9-]`` become ``_xx`` (hex)."""
    return "".join(chr(b) if re.match(rb"[A-Za-z0-9-]", bytes([b])) else f"_{b:02x}" for b in model_id.encode())


async def open_admission(
    js: JetStreamContext, cfg: ClusterConfig, owner: str, *, default_budget: int = 1, ttl_s: float = 30.0, servers: int = 1
) -> Admission:
    """The cluster's admission over bucket ``<name>_vlm_slots`` (created with TTL ``ttl_s`` if absent).
    Errors: ClusterError when JetStream refuses."""
    bucket = f"{cfg.name}_vlm_slots"
    try:
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            replicas = max(1, min(cfg.replicas, servers))
            kv = await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=ttl_s, history=1, replicas=replicas, storage=StorageType.FILE))
    except nats.errors.Error as e:
        raise ClusterError(f"cannot open the VLM admission bucket {bucket}: {e}") from e
    return Admission(kv, owner, budgets=cfg.vlm_budget, default_budget=default_budget, ttl_s=ttl_s)


class Admission:
    """Cluster-wide VLM slots (an :class:`~streamwatch.vlm.router.AdmissionGate`).

    ``budgets``: model id → requests in flight cluster-wide (others: ``default_budget``); ``ttl_s`` must
    equal the bucket's TTL; ``poll_s``: mean pause between rounds of tries while every slot is taken.
    """

    def __init__(
        self,
        kv: KeyValue,
        owner: str,
        *,
        budgets: Mapping[str, int] | None = None,
        default_budget: int = 1,
        ttl_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> None:
        self.kv = kv
        self.owner = owner.encode()
        self.budgets = dict(budgets or {})
        self.default_budget = default_budget
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.waits = 0  # rounds that found every slot taken
        self.lost = 0  # slots that expired or were taken while held (renewal refused)

    def budget(self, model_id: str) -> int:
        return max(1, self.budgets.get(model_id, self.default_budget))

    async def _acquire(self, model_id: str, timeout_s: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout_s
        prefix = model_key(model_id)
        last_error: Exception | None = None
        while True:
            order = list(range(self.budget(model_id)))
            random.shuffle(order)  # spread the tries: fewer collisions between workers
            for i in order:
                key = f"{prefix}.{i}"
                try:
                    return key, await self.kv.create(key, self.owner)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                except nats.errors.Error as e:  # NATS unreachable / no quorum: retried until the deadline
                    reraise_cancel()
                    last_error = e
                    break
            self.waits += 1
            left = deadline - time.monotonic()
            if left <= 0:
                why = f" (last NATS error: {type(last_error).__name__})" if last_error else ""
                raise AdmissionTimeout(f"{model_id}: all {self.budget(model_id)} cluster slots busy for {timeout_s:.1f}s{why}")
            await asyncio.sleep(min(left, self.poll_s * random.uniform(0.5, 1.5)))

    async def _renew(self, key: str, rev: list[int]) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            reraise_cancel()
            try:
                rev[0] = await self.kv.update(key, self.owner, last=rev[0])
            except nats.js.errors.KeyWrongLastSequenceError:
                self.lost += 1
                logger.warning("VLM slot %s expired or was taken while held; the request goes on", key)
                return
            except nats.errors.Error as e:
                reraise_cancel()
                logger.warning("cannot renew VLM slot %s: %s", key, type(e).__name__)

    @contextlib.asynccontextmanager
    async def slot(self, model_id: str, timeout_s: float) -> AsyncIterator[None]:
        """Hold one of ``model_id``'s cluster slots for the ``async with`` body.

        Waits up to ``timeout_s`` seconds; errors: :class:`AdmissionTimeout` (also a TimeoutError).
        """
        key, first = await self._acquire(model_id, timeout_s)
        rev = [first]
        renew = asyncio.create_task(self._renew(key, rev), name=f"vlm-slot-{key}")
        try:
            yield
        finally:
            renew.cancel()
            await asyncio.wait([renew])  # our own cancellation still propagates
            try:
                await self.kv.delete(key, last=rev[0])
            except nats.js.errors.BadRequestError:
                logger.debug("VLM slot %s expired and was taken meanwhile: not ours to release", key)
            except nats.errors.Error as e:  # the TTL frees it
                logger.warning("cannot release VLM slot %s (%s); it expires in %.0fs", key, type(e).__name__, self.ttl_s)


async def worker_admission(js: JetStreamContext, settings: Settings, owner: str, servers: int) -> Admission:
    """A worker's cluster-wide VLM admission: per model ``cluster.vlm_budget``, else its registry concurrency."""
    from streamwatch.vlm.registry import load_registry

    registry = await asyncio.get_running_loop().run_in_executor(None, load_registry, settings.vlm.registry, settings.vlm.roles)
    budgets = {mid: spec.concurrency for mid, spec in registry.models.items()} | dict(settings.cluster.vlm_budget)
    cfg = settings.cluster.model_copy(update={"vlm_budget": budgets})
    return await open_admission(js, cfg, owner, default_budget=4, servers=servers)
