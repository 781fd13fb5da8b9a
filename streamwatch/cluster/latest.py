"""Each stream's latest analysed frame, shared through a KV bucket so any gateway's console shows it.

The owner writes a small JPEG (long side ≤ 640 px) of the stream's latest analysed frame at most every
``every_s`` seconds; gateways read the bucket on the same cadence and hand the console an
:class:`~streamwatch.analysis.model.AnalyzedFrame` (decoded once per new frame). The bucket's TTL
drops the frame of a stream nobody runs any more. Value: one JSON header line, then the JPEG bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import numpy as np
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from streamwatch.analysis.model import AnalyzedFrame, FrameAnalysis
from streamwatch.cluster.kv import NATS_ERRORS, kv_bucket, kv_items, stream_key, stream_of_key
from streamwatch.errors import ClusterError

logger = logging.getLogger(__name__)

TTL_S = 60.0


async def latest_bucket(js: JetStreamContext, prefix: str, replicas: int) -> KeyValue:
    """The bucket ``<prefix>-latest`` (TTL 60 s). Raises ClusterError."""
    return await kv_bucket(js, f"{prefix}-latest", ttl_s=TTL_S, replicas=replicas)


def encode(frame: AnalyzedFrame) -> bytes:
    """Blocking: header line (offset s, wall time, size) + JPEG of ``frame``."""
    from streamwatch.events.alerts import evidence_jpeg

    jpeg, _ = evidence_jpeg(frame.image)
    fa = frame.analysis
    head = {"offset": fa.offset, "at": fa.at, "w": fa.width, "h": fa.height}
    return json.dumps(head).encode() + b"\n" + jpeg


def decode(stream: str, value: bytes) -> AnalyzedFrame:
    """Blocking: the frame a value holds. Raises ValueError on anything else."""
    import cv2

    head, _, jpeg = value.partition(b"\n")
    meta = json.loads(head)
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG")
    fa = FrameAnalysis(stream, float(meta["offset"]), float(meta["at"]), float(meta["at"]), (), int(meta["w"]), int(meta["h"]))
    return AnalyzedFrame(fa, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


async def publish_latest(kv: KeyValue, streams: Callable[[], list[str]], latest: dict[str, AnalyzedFrame], every_s: float = 2.0) -> None:
    """Forever (a worker): write the latest frame of each stream it runs when it changed."""
    loop = asyncio.get_running_loop()
    sent: dict[str, AnalyzedFrame] = {}
    while True:
        await asyncio.sleep(every_s)
        for sid in streams():
            frame = latest.get(sid)
            if frame is None or sent.get(sid) is frame:
                continue
            try:
                await kv.put(stream_key(sid), await loop.run_in_executor(None, encode, frame))
                sent[sid] = frame
            except NATS_ERRORS as e:
                logger.debug("stream %s: latest frame not shared: %s", sid, e)


async def follow_latest(kv: KeyValue, into: dict[str, AnalyzedFrame], every_s: float = 2.0) -> None:
    """Forever (a gateway): keep ``into`` (stream → latest frame) up to date from the bucket."""
    loop = asyncio.get_running_loop()
    revisions: dict[str, int | None] = {}
    while True:
        try:
            items = await kv_items(kv)
        except ClusterError as e:
            logger.debug("latest frames not read: %s", e)
            items = {}
        for key, entry in items.items():
            sid = stream_of_key(key)
            if revisions.get(sid) == entry.revision or not entry.value:
                continue
            try:
                into[sid] = await loop.run_in_executor(None, decode, sid, entry.value)
                revisions[sid] = entry.revision
            except (ValueError, KeyError) as e:
                logger.warning("stream %s: unreadable latest frame: %s", sid, e)
        await asyncio.sleep(every_s)
