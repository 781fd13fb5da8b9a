"""Cluster-wide screening of fans' images on any gateway: per-fan rate limits and duplicate images.

Both live in JetStream KV buckets, written with revision-checked updates, so two gateways taking
the same fan's images at once both count against one budget, and the same picture sent through two
gateways is answered once.

* :class:`FanLimits` (bucket ``<name>-fans``): a token bucket per fan (submitter token + user name),
  ``{"tokens", "t"}`` under a hashed key; the bucket's TTL is the time to refill completely, so an
  expired key *is* a full bucket. The arithmetic is the pure :func:`take`.
* :class:`SeenImages` (bucket ``<name>-seen``, TTL ``vlm.duplicate_ttl_s``): images within
  :data:`RADIUS` bits of pHash of one seen before are duplicates. The 64-bit hash is cut into
  :data:`BANDS` bands; two hashes within ``RADIUS`` bits share at least one band exactly
  (pigeonhole), so each band value is a key holding the recent hashes with that band, appended in
  order by revision-checked updates. Of two near-identical images, the later one is the duplicate:
  "later" is decided in the *lowest* band they share, whose list both see in the same order (pure:
  :func:`earlier_match`), so exactly one of two racing gateways answers ``duplicate``. (Three or
  more near copies racing at once: at most one is answered; pairs ordered in different bands can
  form a cycle, and then all are duplicates. The same picture sent again is ordered in one band.)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from streamwatch.cluster.kv import NATS_ERRORS, create_refused, is_wrong_sequence
from streamwatch.errors import ClusterError
from streamwatch.sampling.phash import PHash

logger = logging.getLogger(__name__)

RADIUS = 4  # bits: the single box's duplicate radius (vlm/responder.py)
BANDS = (13, 13, 13, 13, 12)  # bits per band, most significant first: RADIUS + 1 bands
MAX_PER_BAND = 64  # hashes kept per band key (the oldest go first)
CAS_TRIES = 20  # revision-checked writes retried this often when other gateways write the same key


# --- pure ----------------------------------------------------------------------------------------


def take(tokens: float | None, last_t: float, now: float, rate_per_s: float, burst: int) -> tuple[bool, float]:
    """A token bucket: (allowed, tokens left) for one more image at ``now`` (``tokens`` None: full)."""
    have = float(burst) if tokens is None else min(float(burst), tokens + max(0.0, now - last_t) * rate_per_s)
    if have >= 1.0:
        return True, have - 1.0
    return False, have


def bands(h: PHash) -> tuple[int, ...]:
    """The band values of ``h`` (:data:`BANDS`)."""
    out, shift = [], 64
    for width in BANDS:
        shift -= width
        out.append((h.value >> shift) & ((1 << width) - 1))
    return tuple(out)


def band_key(i: int, value: int) -> str:
    return f"b{i}.{value:04x}"


@dataclass(frozen=True, slots=True)
class Seen:
    """One image in a band list: its hash, the request id, when it was seen (wall time)."""

    hash: PHash
    id: str
    t: float


def earlier_match(me: PHash, before: Sequence[Sequence[Seen]], now: float, ttl_s: float) -> Seen | None:
    """The image ``me`` duplicates, or None. ``before[i]``: the entries of ``me``'s band ``i`` list
    that came before ``me`` (in the key's revision order). An entry within :data:`RADIUS` counts only
    in the lowest band it shares with ``me``, so of two near-identical images exactly one is later."""
    mine = bands(me)
    for i, entries in enumerate(before):
        for e in entries:
            if now - e.t > ttl_s or me - e.hash > RADIUS:
                continue
            theirs = bands(e.hash)
            if next(j for j in range(len(BANDS)) if mine[j] == theirs[j]) == i:
                return e
    return None


def _encode(entries: Sequence[Seen]) -> bytes:
    return json.dumps([[str(e.hash), e.id, round(e.t, 3)] for e in entries], separators=(",", ":")).encode()


def _decode(value: bytes | None) -> list[Seen]:
    try:
        return [Seen(PHash.from_hex(h), str(i), float(t)) for h, i, t in json.loads(value or b"[]")]
    except (ValueError, TypeError) as e:
        logger.warning("unreadable duplicate-image record ignored: %s", e)
        return []


# --- KV ------------------------------------------------------------------------------------------


async def _cas(kv: KeyValue, key: str, change: Callable[[bytes | None], bytes]) -> tuple[bytes | None, bytes]:
    """Read ``key``, write ``change(old value) -> new value`` revision-checked, retry on a lost race.
    Returns (the value it replaced, the value written). Raises ClusterError."""
    for _ in range(CAS_TRIES):
        rev: int | None = None
        try:
            try:
                entry = await kv.get(key)
                old, rev = entry.value, entry.revision
            except nats.js.errors.KeyNotFoundError:
                old, rev = None, None
            new = change(old)
            if rev is None:
                await kv.create(key, new)
            else:
                await kv.update(key, new, last=rev)
            return old, new
        except NATS_ERRORS as e:
            if is_wrong_sequence(e) or (rev is None and create_refused(e)):
                continue
            raise ClusterError(f"KV {key}: {e!r}") from e
    raise ClusterError(f"KV {key}: {CAS_TRIES} writes in a row lost to other gateways")


class FanLimits:
    """Per-fan token buckets shared by every gateway (see the module doc)."""

    def __init__(self, kv: KeyValue, per_min: float, burst: int) -> None:
        self.kv = kv
        self.rate = per_min / 60.0
        self.burst = burst

    @staticmethod
    def key(token: str, user: str) -> str:
        return "f." + hashlib.blake2b(f"{token}\0{user}".encode(), digest_size=12).hexdigest()

    async def allow(self, token: str, user: str, now: float) -> bool:
        """Whether the fan may send one more image at ``now`` (wall time); counts it if so. Raises ClusterError."""
        verdict: list[bool] = []

        def change(old: bytes | None) -> bytes:
            state = json.loads(old) if old else {}
            ok, left = take(state.get("tokens"), float(state.get("t", now)), now, self.rate, self.burst)
            verdict[:] = [ok]
            return json.dumps({"tokens": round(left, 4), "t": now}).encode()

        await _cas(self.kv, self.key(token, user), change)
        return verdict[0]


class SeenImages:
    """Duplicate images across the cluster (see the module doc)."""

    def __init__(self, kv: KeyValue, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    async def check(self, h: PHash, request_id: str, now: float) -> Seen | None:
        """Record the image and return the earlier one it duplicates (None: it is new). Raises ClusterError."""
        me = Seen(h, request_id, now)
        before: list[list[Seen]] = []
        for i, value in enumerate(bands(h)):
            prior: list[Seen] = []

            def change(old: bytes | None, prior: list[Seen] = prior) -> bytes:
                live = [e for e in _decode(old) if now - e.t <= self.ttl_s and e.id != request_id]
                prior[:] = live
                return _encode([*live[-(MAX_PER_BAND - 1) :], me])

            await _cas(self.kv, band_key(i, value), change)
            before.append(prior)
        return earlier_match(h, before, now, self.ttl_s)
