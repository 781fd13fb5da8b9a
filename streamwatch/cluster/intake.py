"""A gateway's side of fans' images and questions (a :class:`~streamwatch.server.submit.Forwarder`).

The server has already checked what it can alone (base64, type, dimensions, a real decode) and stored
the thumbnail. Here, cluster-wide: the fan's rate (:class:`~streamwatch.cluster.screening.FanLimits`),
then a duplicate image (:class:`~streamwatch.cluster.screening.SeenImages`: answered with a
``duplicate`` rejection at once, no worker involved); then the thumbnail goes to the evidence bucket
and the request to the work queue (:mod:`streamwatch.cluster.requests`). A gateway runs no
detectors: the local cascade and the policy screen the image on the worker that answers it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

import cv2
import numpy as np

from streamwatch.cluster.events import JetStreamPublisher
from streamwatch.cluster.requests import RequestQueue, encode_question, encode_submission, shrink
from streamwatch.cluster.screening import FanLimits, SeenImages
from streamwatch.errors import ClusterError
from streamwatch.events.model import RejectedEvent
from streamwatch.sampling.phash import PHash
from streamwatch.server.submit import Question, Submission, rejection

logger = logging.getLogger(__name__)

DUPLICATE_MESSAGE = "this image was already answered recently"


class ClusterIntake:
    """Screens and queues what fans send to this gateway. ``offsets``: a stream's show time now (s)."""

    def __init__(
        self,
        queue: RequestQueue,
        publisher: JetStreamPublisher,
        limits: FanLimits,
        seen: SeenImages,
        *,
        max_side: int,
        offsets: Callable[[str], float] = lambda _s: 0.0,
    ) -> None:
        self.queue = queue
        self.publisher = publisher
        self.limits = limits
        self.seen = seen
        self.max_side = max_side
        self.offsets = offsets
        self.duplicates = 0
        self.queued = 0

    async def allow(self, submitter: str, user: str) -> bool:
        return await self.limits.allow(submitter, user, time.time())

    async def forward_submission(self, submission: Submission) -> RejectedEvent | None:
        sub = submission
        loop = asyncio.get_running_loop()
        jpeg, h = await loop.run_in_executor(None, functools.partial(_prepare, sub.image, self.max_side))
        try:
            earlier = await self.seen.check(h, sub.id, time.time())
        except ClusterError as e:  # fail open: answering a duplicate costs a VLM call, refusing a new image loses a fan
            logger.warning("stream %s: duplicate check of %s failed (%s); queued anyway", sub.stream, sub.id, e)
            earlier = None
        if earlier is not None:
            self.duplicates += 1
            logger.info("stream %s: submission %s duplicates %s", sub.stream, sub.id, earlier.id)
            return rejection(sub, "duplicate", DUPLICATE_MESSAGE, self.offsets(sub.stream))
        await self.publisher.upload(sub.thumb)
        await self.queue.put("reply", sub.id, encode_submission(sub, jpeg))
        self.queued += 1
        return None

    async def forward_question(self, question: Question) -> None:
        await self.queue.put("qa", question.id, encode_question(question))
        self.queued += 1


def _prepare(data: bytes, max_side: int) -> tuple[bytes, PHash]:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:  # the server decoded it already: cannot happen
        raise ClusterError("the image no longer decodes")
    return shrink(pixels, max_side)
