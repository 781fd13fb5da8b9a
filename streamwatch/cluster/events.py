"""The cluster's event log on JetStream: workers publish, gateways follow (:mod:`streamwatch.cluster.follow`).

Layout for a cluster named ``sw`` (``ClusterConfig.name``):

- stream ``SW_EVENTS``, subjects ``sw.ev.<stream-token>.<type>``: one message per event, payload the
  event's JSON body without id (:func:`~streamwatch.events.codec.encode_body`). The JetStream sequence
  *is* the event id clients see.
- stream ``SW_FRAMES``, subjects ``sw.fr.<stream-token>``: indexed thumbnails for search (JSON, the
  embedding as base64 float16); the sequence is the frame id.
- object store bucket ``sw_evidence``: evidence files under their path relative to the frames folder.

A stream id (``^[A-Za-z0-9_.-]+$``) becomes a subject token reversibly: ``_`` → ``__``, ``.`` → ``_-``.
Every publish carries ``Nats-Msg-Id`` = :func:`event_key`, so within ``dedupe_window_s`` a retried publish,
or the same alert raised again by a worker that took the stream over and re-analysed the same frame, is
stored once. Publishing retries timeouts / no responders / JetStream unavailable until a deadline, then
raises :class:`EventLogError`: an alert is never dropped silently.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType, StreamConfig
from nats.js.object_store import ObjectStore

from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError, EventsError
from streamwatch.events.codec import encode_body, to_dict, with_id
from streamwatch.events.model import Event
from streamwatch.events.store import EventStore, StoredEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")
_STREAM_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
REPLAYABLE = frozenset({"alert", "scene"})
"""Event types derived from a frame's analysis: their dedupe key leaves out wall times and evidence paths,
so the same finding re-raised after a takeover (same stream, offset and content) is stored once."""
_VOLATILE = ("at", "received_at")
_FILE_FIELDS = ("frame", "crop", "image")


class EventLogError(ClusterError, EventsError):
    """Publishing to (or reading) the JetStream event log failed, after retries where they make sense."""


def jetstream(nc: Client, timeout_s: float = 5.0) -> JetStreamContext:
    """JetStream context of a connection (API calls time out after ``timeout_s``)."""
    return nc.jetstream(timeout=timeout_s)


def reraise_cancel() -> None:
    """Raise CancelledError when this task was asked to stop: nats-py can turn a cancellation into a
    TimeoutError, which retry loops would otherwise swallow (and the task would never stop)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def stream_token(stream_id: str) -> str:
    """A subject-safe, reversible token for a stream id. Errors: ClusterError for an id outside the charset."""
    if not _STREAM_ID.match(stream_id):
        raise ClusterError(f"stream id {stream_id!r} is not ^[A-Za-z0-9_.-]+$")
    return stream_id.replace("_", "__").replace(".", "_-")


def stream_from_token(token: str) -> str:
    """Inverse of :func:`stream_token`."""
    return re.sub(r"_(.)", lambda m: "_" if m.group(1) == "_" else ".", token)


def names(cfg: ClusterConfig) -> tuple[str, str, str]:
    """(events stream, frames stream, evidence bucket) of the cluster."""
    return f"{cfg.name.upper()}_EVENTS", f"{cfg.name.upper()}_FRAMES", f"{cfg.name}_evidence"


def event_key(event: Event) -> str:
    """Deterministic dedupe key (hex blake2b-128) of an event: type + stream + body (see :data:`REPLAYABLE`)."""
    body = to_dict(replace(event, id=0))
    if event.TYPE in REPLAYABLE:
        for k in _VOLATILE:
            body.pop(k, None)
        for k in _FILE_FIELDS:
            body.pop(k, None)
        if isinstance(body.get("evidence"), dict):
            body["evidence"] = {k: v for k, v in body["evidence"].items() if k not in _FILE_FIELDS}
    text = json.dumps([event.TYPE, event.stream, body], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


async def ensure_event_stream(js: JetStreamContext, cfg: ClusterConfig, servers: int, *, timeout_s: float = 30.0) -> None:
    """Create or update the events and frames streams and the evidence bucket.

    Replicas: ``cfg.replicas`` capped at ``servers`` (the servers the connection knows). Safe when
    several workers and gateways start at once: creation is tried first (idempotent for the same
    config), a stream that exists with another config is updated, and JetStream API timeouts (a
    leader being elected, a racing creator) are retried until ``timeout_s``. Errors: EventLogError.
    """
    replicas = max(1, min(cfg.replicas, servers))
    max_age = cfg.max_age_days * 86400.0
    ev, fr, bucket = names(cfg)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for name, subject in ((ev, f"{cfg.name}.ev.>"), (fr, f"{cfg.name}.fr.>")):
                sc = StreamConfig(
                    name=name,
                    subjects=[subject],
                    num_replicas=replicas,
                    max_age=max_age,
                    duplicate_window=cfg.dedupe_window_s,
                    storage=StorageType.FILE,
                )
                try:
                    await js.add_stream(sc)
                except nats.js.errors.APIError as e:
                    if getattr(e, "err_code", None) != _NAME_IN_USE:
                        raise
                    info = await js.stream_info(name)
                    have = info.config
                    if (have.max_age, have.duplicate_window, have.num_replicas) != (sc.max_age, sc.duplicate_window, sc.num_replicas):
                        await js.update_stream(sc)
            try:
                await js.object_store(bucket)
            except nats.js.errors.BucketNotFoundError:
                try:
                    await js.create_object_store(bucket, ObjectStoreConfig(ttl=max_age, replicas=replicas, storage=StorageType.FILE))
                except nats.js.errors.APIError as e:
                    if getattr(e, "err_code", None) != _NAME_IN_USE:
                        raise
            return
        except nats.errors.TimeoutError as e:
            if time.monotonic() > deadline:
                raise EventLogError(f"cannot set up the JetStream event log {ev}: JetStream did not answer for {timeout_s:g}s") from e
            logger.info("event log %s: JetStream did not answer, retrying", ev)
            await asyncio.sleep(random.uniform(0.1, 0.5))
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise EventLogError(f"cannot set up the JetStream event log {ev}: {e}") from e


_NAME_IN_USE = 10058  # JetStream: a stream with that name exists with another config


_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    asyncio.TimeoutError,
)


class JetStreamPublisher:
    """Publisher of a worker's events to the cluster log (``async publish(event) -> StoredEvent``).

    ``local_store`` is where evidence files were written (its ``frames_dir``); nothing is stored in it.
    ``deadline_s`` bounds the retries of one publish (evidence upload included); ``attempt_s`` one attempt.
    """

    def __init__(
        self, js: JetStreamContext, local_store: EventStore, cfg: ClusterConfig, *, deadline_s: float = 30.0, attempt_s: float = 2.0
    ) -> None:
        self.js = js
        self.store = local_store
        self.cfg = cfg
        self.deadline_s = deadline_s
        self.attempt_s = attempt_s
        self.events_stream, self.frames_stream, self.bucket = names(cfg)
        self._obs: ObjectStore | None = None
        self.duplicates = 0  # publishes JetStream recognised as repeats
        self.retries = 0

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.deadline_s
        pause = 0.05
        while True:
            try:
                return await call()
            except _RETRYABLE as e:
                reraise_cancel()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EventLogError(f"{what}: JetStream did not answer within {self.deadline_s:.0f}s ({type(e).__name__})") from e
                self.retries += 1
                logger.warning("%s: %s; retrying in %.2fs", what, type(e).__name__, pause)
                await asyncio.sleep(min(left, pause * random.uniform(0.8, 1.2)))  # the last try is at the deadline
                pause = min(pause * 2, 1.0)
            except (nats.errors.Error, nats.js.errors.Error) as e:
                raise EventLogError(f"{what}: {e}") from e

    async def _objects(self) -> ObjectStore:
        if self._obs is None:
            self._obs = await self._retry("evidence bucket", lambda: self.js.object_store(self.bucket))
        return self._obs

    async def upload(self, rel: str) -> bool:
        """Copy one evidence file (path relative to the frames folder) into the bucket unless it is there.
        False when the local file is missing (logged)."""
        path = self.store.frame_path(rel)
        if path is None:
            logger.warning("evidence %s is missing locally; the event goes out without it", rel)
            return False
        obs = await self._objects()

        async def put() -> None:
            try:
                await obs.get_info(rel)
                return
            except nats.js.errors.ObjectNotFoundError:
                pass
            data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
            await obs.put(rel, data)

        await self._retry(f"upload {rel}", put)
        return True

    async def publish(self, event: Event, *, msg_id: str | None = None, upload: bool = True) -> StoredEvent:
        """Upload the event's files, then append it to the log; returns it with its JetStream sequence as id.

        A repeat (same :func:`event_key`, or the same ``msg_id`` when given, within the dedupe window)
        returns the first copy, same id and text. ``upload=False``: the files are in the bucket already
        (a fan's thumbnail, put there by the gateway). Errors: EventLogError after ``deadline_s`` of
        failed retries, or at once for a refusal.
        """
        for rel in event.files() if upload else ():
            await self.upload(rel)
        body = encode_body(event)
        subject = f"{self.cfg.name}.ev.{stream_token(event.stream)}.{event.TYPE}"
        headers = {"Nats-Msg-Id": msg_id or event_key(event)}
        ack = await self._retry(
            f"publish {event.TYPE} of {event.stream}",
            lambda: self.js.publish(subject, body.encode(), timeout=self.attempt_s, stream=self.events_stream, headers=dict(headers)),
        )
        if ack.duplicate:
            self.duplicates += 1
            msg = await self._retry("read the first copy", lambda: self.js.get_msg(self.events_stream, seq=ack.seq))
            body = (msg.data or b"").decode()
        return StoredEvent(ack.seq, event.TYPE, event.stream, event.owner, with_id(ack.seq, body))

    async def publish_frame(
        self, stream: str, offset: float, at: float, thumb: str | None, model: str, tags: tuple[str, ...], embedding: np.ndarray
    ) -> int:
        """Index a kept frame cluster-wide (thumbnail uploaded first); returns its sequence (the frame id).
        ``embedding``: float32 vector, sent as base64 float16. Dedupe key: stream + offset + model."""
        if thumb:
            await self.upload(thumb)
        payload = {
            "stream": stream,
            "offset": offset,
            "at": at,
            "thumb": thumb,
            "model": model,
            "tags": list(tags),
            "embedding": base64.b64encode(np.asarray(embedding, np.float16).tobytes()).decode(),
        }
        key = hashlib.blake2b(f"{stream}\0{offset:.3f}\0{model}".encode(), digest_size=16).hexdigest()
        subject = f"{self.cfg.name}.fr.{stream_token(stream)}"
        data = json.dumps(payload, separators=(",", ":")).encode()
        ack = await self._retry(
            f"publish frame of {stream}",
            lambda: self.js.publish(subject, data, timeout=self.attempt_s, stream=self.frames_stream, headers={"Nats-Msg-Id": key}),
        )
        return int(ack.seq)
