"""``streamwatch worker --serve``: a worker that is also a gateway, for small clusters.

One process runs a :class:`~streamwatch.cluster.worker.ClusterWorker` (leases, analysis, publishing)
and a :class:`~streamwatch.cluster.gateway.Gateway` (``/ws``, overlay, console, reports for every
stream of the cluster) side by side, each with its own NATS connection. The gateway's materialised
view lives in ``data_dir/gateway`` so it never shares a SQLite file with the worker's own store.
SIGTERM drains the worker first (its streams are handed over while the gateway still serves their
events), then stops the gateway. If either part fails, the other is cancelled and the error is raised.
"""

from __future__ import annotations

import asyncio
import logging

from streamwatch.cluster.gateway import Gateway
from streamwatch.cluster.worker import ClusterWorker
from streamwatch.config import Settings
from streamwatch.server.server import EventServer

logger = logging.getLogger(__name__)

GATEWAY_SUBDIR = "gateway"


class ServingWorker:
    """A worker and a gateway in one process. :meth:`run` until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.worker = ClusterWorker(settings)
        self.gateway = Gateway(settings.model_copy(update={"data_dir": settings.data_dir / GATEWAY_SUBDIR}))
        self.id = self.worker.id
        self.ready = asyncio.Event()

    @property
    def server(self) -> EventServer | None:
        """The gateway's server (None until it listens)."""
        return self.gateway.server

    def stop(self) -> None:
        """Drain the worker; the gateway stops once the worker has handed its streams over."""
        self.worker.stop()

    async def run(self) -> None:
        """Both parts until :meth:`stop`; raises the first part's error (the other part is cancelled)."""
        try:
            async with asyncio.TaskGroup() as tg:
                gateway = tg.create_task(self.gateway.run(), name=f"serving-{self.id}-gateway")
                readiness = tg.create_task(self._ready(), name=f"serving-{self.id}-ready")
                await self.worker.run()
                readiness.cancel()
                self.gateway.stop()
                await gateway
        except ExceptionGroup as eg:
            raise eg.exceptions[0] from None
        logger.info("worker %s: stopped (worker and gateway)", self.id)

    async def _ready(self) -> None:
        await self.worker.ready.wait()
        await self.gateway.ready.wait()
        self.ready.set()
