"""Fans' images and live questions on a JetStream work queue, from any gateway to the answering workers.

Stream ``SW_REQUESTS`` (cluster ``sw``), WorkQueue retention, subjects ``sw.rq.reply`` (images) and
``sw.rq.qa`` (questions); each request published with ``Nats-Msg-Id`` = its id, so a retried publish
is queued once. Workers pull through one durable consumer per role (``reply``, ``qa``) with explicit
acks: a request a worker took and stopped reporting progress on (``in_progress`` every third of
``cluster.request_ack_wait_s``; it died) is handed to another worker after ``request_ack_wait_s``,
at most ``request_max_deliver`` times. Workers publish the reply / rejection / answer on the event
log with ``Nats-Msg-Id`` = :func:`answer_key`, so a request answered twice (the first worker died
after publishing, before its ack) is stored, and reaches the fan, once.

Wire format (pure): an image request is one JSON header line, then the JPEG the gateway re-encoded
(long side at most ``analysis.max_side``, as the responder would shrink it); a question is JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Final, Literal

import cv2
import nats.errors
import nats.js.errors
import numpy as np
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError
from streamwatch.sampling.phash import PHash, phash_luma
from streamwatch.server.submit import Question, Submission

Role = Literal["reply", "qa"]
ROLES: Final[tuple[Role, ...]] = ("reply", "qa")
MAX_AGE_S: Final = 3600.0  # a request nobody took for an hour is dropped (the fan has gone)
JPEG_QUALITY: Final = 90
_NAME_IN_USE: Final = 10058


class RequestError(ClusterError):
    """A request could not be queued, or a queued one cannot be read."""


def stream_name(cfg: ClusterConfig) -> str:
    return f"{cfg.name.upper()}_REQUESTS"


def subject(cfg: ClusterConfig, role: Role) -> str:
    return f"{cfg.name}.rq.{role}"


def answer_key(role: Role, request_id: str) -> str:
    """The event log's Nats-Msg-Id of the one reply (or rejection) / answer to a request."""
    return f"{role}:{request_id}"


# --- wire format (pure) ----------------------------------------------------------------------------


def shrink(pixels: np.ndarray, max_side: int) -> tuple[bytes, PHash]:
    """Blocking: a BGR image as the JPEG a worker gets (long side ≤ ``max_side``; a picture with an
    aspect ratio over 3 within ``max_side``² pixels, like the responder) and its pHash."""
    h, w = pixels.shape[:2]
    long, short = max(h, w), min(h, w)
    scale = min(1.0, max_side / long if long <= 3 * short else max_side / (h * w) ** 0.5)
    if scale < 1.0:
        pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RequestError("the image could not be re-encoded")
    return bytes(buf), phash_luma(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY))


def encode_submission(sub: Submission, jpeg: bytes) -> bytes:
    head = {k: v for k, v in asdict(sub).items() if k != "image"} | {"mime": "image/jpeg"}
    return json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" + jpeg


def decode_submission(data: bytes) -> Submission:
    """Raises RequestError for anything :func:`encode_submission` did not make."""
    head, _, jpeg = data.partition(b"\n")
    try:
        d = json.loads(head)
        return Submission(
            str(d["id"]), str(d["stream"]), str(d["submitter"]), str(d["user"]), str(d["text"]), jpeg, str(d["mime"]),
            int(d["width"]), int(d["height"]), str(d["thumb"]), float(d["received_at"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise RequestError(f"unreadable image request: {e!r}") from e


def encode_question(q: Question) -> bytes:
    return json.dumps(asdict(q), ensure_ascii=False, separators=(",", ":")).encode()


def decode_question(data: bytes) -> Question:
    try:
        d = json.loads(data)
        ref = d.get("ref")
        return Question(str(d["id"]), str(d["stream"]), str(d["asker"]), str(d["question"]), None if ref is None else str(ref),
                        float(d["received_at"]))  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RequestError(f"unreadable question: {e!r}") from e


# --- JetStream -------------------------------------------------------------------------------------


def consumer_config(cfg: ClusterConfig, role: Role) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=role,
        filter_subject=subject(cfg, role),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=cfg.request_ack_wait_s,
        max_deliver=cfg.request_max_deliver,
        max_ack_pending=1000,
    )


async def ensure_request_stream(
    js: JetStreamContext, cfg: ClusterConfig, servers: int, *, roles: Sequence[Role] = (), timeout_s: float = 30.0
) -> None:
    """Create the work-queue stream if absent (racing creators are fine), and the consumers of
    ``roles`` (an answering worker: its ack wait and redeliveries; every answering worker should
    have the same, the last one started sets them). Raises RequestError."""
    name = stream_name(cfg)
    sc = StreamConfig(
        name=name,
        subjects=[f"{cfg.name}.rq.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        num_replicas=max(1, min(cfg.replicas, servers)),
        max_age=MAX_AGE_S,
        duplicate_window=min(cfg.dedupe_window_s, MAX_AGE_S),
        storage=StorageType.FILE,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            try:
                await js.add_stream(sc)
            except nats.js.errors.APIError as e:
                if getattr(e, "err_code", None) != _NAME_IN_USE:
                    raise
            for role in roles:
                await js.add_consumer(name, consumer_config(cfg, role))
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as e:
            if time.monotonic() > deadline:
                raise RequestError(f"cannot set up the request queue {name}: JetStream did not answer for {timeout_s:g}s") from e
            await asyncio.sleep(random.uniform(0.1, 0.5))
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise RequestError(f"cannot set up the request queue {name}: {e}") from e


class RequestQueue:
    """Puts requests on the work queue (a gateway). Publishing retries until ``deadline_s``."""

    def __init__(self, js: JetStreamContext, cfg: ClusterConfig, *, deadline_s: float = 20.0) -> None:
        self.js = js
        self.cfg = cfg
        self.deadline_s = deadline_s
        self.stream = stream_name(cfg)

    async def put(self, role: Role, request_id: str, payload: bytes) -> int:
        """Queue one request; its stream sequence. Raises RequestError."""
        deadline = time.monotonic() + self.deadline_s
        while True:
            try:
                ack = await self.js.publish(
                    subject(self.cfg, role), payload, timeout=2.0, stream=self.stream, headers={"Nats-Msg-Id": request_id}
                )
                return int(ack.seq)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as e:
                if time.monotonic() > deadline:
                    raise RequestError(f"request {request_id} not queued: JetStream did not answer ({type(e).__name__})") from e
                await asyncio.sleep(random.uniform(0.1, 0.4))
            except (nats.errors.Error, nats.js.errors.Error) as e:
                raise RequestError(f"request {request_id} not queued: {e}") from e
