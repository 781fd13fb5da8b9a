"""Key-value buckets: create or bind, list, stream ids as keys, and what a refused write looks like.

* :func:`kv_bucket` creates a KV bucket or binds to the existing one, once it can take writes.
* :func:`kv_items` reads a bucket's current entries.
* :func:`stream_key` / :func:`stream_of_key` turn a stream id into a KV key / subject token and back.
* :func:`is_wrong_sequence` / :func:`create_refused` tell a lost race from a NATS failure.

Every NATS error that leaves these functions is a :class:`~streamwatch.errors.ClusterError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from streamwatch.errors import ClusterError

logger = logging.getLogger(__name__)

NATS_ERRORS: Final = (nats.errors.Error, OSError, asyncio.TimeoutError)  # what a NATS call may raise
_INSUFFICIENT_RESOURCES: Final = 10074  # JetStream: not enough servers for the replicas asked
_STREAM_NAME_IN_USE: Final = 10058  # JetStream: the stream exists with another config (a racing creator)
_MARKER_GRACE_S: Final = 0.5  # after nats-py's end-of-values marker with nothing received yet, s
_NOT_YET: Final = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)  # JetStream: expected-last-subject-sequence not met


def stream_key(stream_id: str) -> str:
    """A stream id as one KV key / subject token: ``.`` (allowed in ids, a token separator) → ``=2E``.

    Reversible by :func:`stream_of_key` (stream ids never contain ``=``).
    """
    return stream_id.replace(".", "=2E")


def stream_of_key(key: str) -> str:
    """The stream id of a key made by :func:`stream_key`."""
    return key.replace("=2E", ".")


async def kv_bucket(
    js: JetStreamContext, name: str, *, ttl_s: float | None, replicas: int, history: int = 1, timeout_s: float = 20.0
) -> KeyValue:
    """The KV bucket ``name``: created, or bound if it exists (an existing config is left as it is).

    ``ttl_s``: entries not rewritten for this many seconds vanish (None: kept for ever).
    ``replicas`` is lowered one at a time while the cluster answers that it has too few servers, so
    a 1-node test server works with ``replicas=3``. Two processes creating the same bucket at once
    both end up bound to it. A JetStream API call that times out (a stream or meta leader being
    elected) is retried until ``timeout_s`` seconds have passed. Raises :class:`ClusterError` on
    any other NATS failure, or when it kept timing out.
    """
    deadline = time.monotonic() + timeout_s
    r = max(1, replicas)
    kv: KeyValue | None = None
    while True:
        try:
            if kv is None:
                try:
                    kv = await js.create_key_value(bucket=name, ttl=ttl_s, replicas=r, history=history)
                except nats.js.errors.APIError as e:
                    if e.err_code == _INSUFFICIENT_RESOURCES and r > 1:
                        r -= 1
                        continue
                    if e.err_code != _STREAM_NAME_IN_USE:  # in use: it exists with another config, bind to it
                        raise
                    kv = await js.key_value(name)
            # a new replicated bucket takes a moment to elect its leader: writes fail until then
            info = (await kv.status()).stream_info
            if info.cluster is None or info.cluster.leader:
                logger.info("KV bucket %s ready (replicas %s, ttl %s s)", name, info.config.num_replicas, ttl_s)
                return kv
        except _NOT_YET as e:
            if time.monotonic() > deadline:
                raise ClusterError(f"cannot open KV bucket {name}: JetStream did not answer for {timeout_s:g} s") from e
            logger.info("KV bucket %s: JetStream not ready (%r), retrying", name, e)
        except NATS_ERRORS as e:
            raise ClusterError(f"cannot open KV bucket {name} (replicas {r}): {e!r}") from e
        if time.monotonic() > deadline:
            raise ClusterError(f"cannot open KV bucket {name}: no stream leader within {timeout_s:g} s")
        await asyncio.sleep(0.1)


def is_wrong_sequence(e: BaseException) -> bool:
    """Whether ``e`` says a revision-checked write found another revision (someone else wrote).

    Includes nats-py's ``create`` failing with ``KeyNotFoundError`` raised while handling a wrong
    sequence: its read-back went to a replica that had not seen the other writer's entry yet.
    """
    if isinstance(e, nats.js.errors.KeyWrongLastSequenceError):
        return True
    if isinstance(e, nats.js.errors.KeyNotFoundError):
        cause = e.__context__
        for _ in range(4):  # raised while handling a NotFoundError, raised while handling the wrong sequence
            if cause is None or isinstance(cause, nats.js.errors.KeyWrongLastSequenceError):
                break
            cause = cause.__context__
        return isinstance(cause, nats.js.errors.KeyWrongLastSequenceError)
    return isinstance(e, nats.js.errors.APIError) and getattr(e, "err_code", None) in _WRONG_LAST_SEQUENCE


def create_refused(e: BaseException) -> bool:
    """Whether ``kv.create`` failed because the key exists: a wrong sequence, or nats-py's
    read-back after one answered "not found" (``create`` raises ``KeyNotFoundError`` for nothing
    else: the write itself never reads)."""
    return is_wrong_sequence(e) or isinstance(e, nats.js.errors.KeyNotFoundError)


async def kv_items(kv: KeyValue, *, timeout_s: float = 5.0) -> dict[str, KeyValue.Entry]:
    """Every live key of ``kv`` (deleted and purged ones left out) → its latest entry.

    Keys are as stored (see :func:`stream_of_key`). An empty bucket is answered from the stream's
    state, without a consumer. Otherwise a KV watcher reads the last entry of each key until the
    one the server had no more after (``delta == 0``); its "initial values done" marker is not
    trusted: nats-py can put it first, before entries already received (seen here: a listing of
    three fresh keys came back empty). Raises :class:`ClusterError` on a NATS failure or when
    the listing takes longer than ``timeout_s`` seconds.
    """
    out: dict[str, KeyValue.Entry] = {}
    try:
        async with asyncio.timeout(timeout_s):
            if not (await kv.status()).stream_info.state.messages:
                return out
            watcher = await kv.watchall()
            try:
                marker = False  # nats-py said "no more", perhaps too early
                received = 0
                while True:
                    try:
                        entry = await watcher.updates(_MARKER_GRACE_S if marker else timeout_s)  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
                    except nats.errors.TimeoutError:
                        if marker:  # emptied (expired, purged) since the state was read
                            break
                        raise
                    if entry is None:
                        marker = True
                        if received:
                            break
                        continue
                    received += 1
                    if entry.operation in ("DEL", "PURGE"):
                        out.pop(entry.key, None)
                    else:
                        out[entry.key] = entry
                    if not entry.delta:
                        break
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
    except (TimeoutError, *NATS_ERRORS) as e:
        raise ClusterError(f"cannot list KV bucket {kv._name}: {e!r}") from e
    return out
