"""The reconnecting frame reader: one source in, frames and health events out (blocking).

:class:`FrameReader` is a synchronous iterator meant to run in its own thread (PyAV releases the
GIL while it decodes); :mod:`streamwatch.ingest.aio` adapts it to asyncio. Files are read once;
live sources are always opened with open/read timeouts and reconnected with backoff until
:meth:`FrameReader.stop` is called (or ``max_retries`` is used up).
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av.error

from streamwatch.config import IngestConfig
from streamwatch.errors import NoVideoStream, SourceCorrupt, SourceEnded, SourceOpenError, SourceTimeout
from streamwatch.events.model import HealthEvent, HealthKind, StreamState, can_transition
from streamwatch.ingest import httpsrc
from streamwatch.ingest.backoff import Backoff
from streamwatch.ingest.clock import OffsetClock
from streamwatch.ingest.decode import DecodePlan
from streamwatch.ingest.frame import Frame, display_rotation, upright
from streamwatch.ingest.hls import Plan, PlaylistTracker, SegmentGaps
from streamwatch.ingest.opening import AudioOnly, open_container, open_video, scrub
from streamwatch.ingest.relay import RtmpRelay, relay_available
from streamwatch.ingest.url import SourceKind, SourceSpec

logger = logging.getLogger(__name__)

Item = Frame | HealthEvent


@dataclass(slots=True)
class ReaderStats:
    packets: int = 0
    decoded: int = 0
    emitted: int = 0
    corrupt_packets: int = 0
    connections: int = 0
    reconnects: int = 0
    dropped: int = 0  # frames the consumer side threw away (see ingest.aio)


class FrameReader:
    """Iterate over ``Frame`` and ``HealthEvent`` items from one source.

    ``keep(offset) -> bool`` chooses which decoded frames become ``Frame`` records (the interval
    sampler); ``every_s`` tells the decoder how sparse those are so it can skip work.
    """

    def __init__(
        self,
        spec: SourceSpec,
        stream_id: str,
        cfg: IngestConfig,
        *,
        every_s: float | None = None,
        keep: Callable[[float], bool] | None = None,
        rng: random.Random | None = None,
        session_start: float | None = None,
        max_side: int = 960,
    ) -> None:
        self.spec, self.stream_id, self.cfg = spec, stream_id, cfg
        self.every_s, self.keep = every_s, keep
        self.stats = ReaderStats()
        self.state = StreamState.CONNECTING
        self._stop = threading.Event()
        self.live = spec.live  # False for a recording served as HLS (ENDLIST): read and paced like a file
        self._clock = OffsetClock(live=spec.live)
        self._backoff = Backoff(
            cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_multiplier, cfg.backoff_jitter, rng or random.Random()
        )
        self.session_start: float | None = None  # live: wall time (epoch s) of the session's first frame
        self._t0 = time.monotonic()
        if session_start is not None:
            self.resume_session(session_start)
        self._last_offset = 0.0
        self._seq = 0
        self.keyframe_interval: float | None = None
        self.max_side = max_side  # what analysis looks at: an HLS master playlist's variant is chosen for it
        self._bodies: list[httpsrc.HttpBody] = []  # HTTP responses PyAV reads from (closed with the container)

    # ---- control -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the reader to finish; it returns after the current packet or timeout."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def resume_session(self, started_at: float, at_least: float = 0.0) -> None:
        """Continue a stream session that began at wall time ``started_at`` (e.g. before a restart).

        Offsets of live sources then go on from ``now - started_at``, the time nobody watched included,
        or from ``at_least`` (s: the last offset watched plus the gap) when that is later: a source
        whose timestamps ran ahead of the wall clock (HLS hands out segments in bursts) never steps back.
        """
        self.session_start = started_at
        self._t0 = time.monotonic() - max(0.0, time.time() - started_at, at_least)

    def _elapsed(self) -> float:
        """Seconds since the session's first frame (0 until there is one): offset 0 is the show's start."""
        return 0.0 if self.session_start is None else time.monotonic() - self._t0

    def offset_now(self) -> float:
        """The current offset (live: the session clock; files: the last frame's offset)."""
        return max(self._last_offset, self._elapsed()) if self.live else self._last_offset

    def _health(self, state: StreamState, **kw: Any) -> HealthEvent:
        if not can_transition(self.state, state):
            logger.debug("[%s] unusual transition %s -> %s", self.stream_id, self.state.value, state.value)
        self.state = state
        offset = self.offset_now()
        ev = HealthEvent(stream=self.stream_id, kind=HealthKind.STATE, at=time.time(), offset=offset, state=state, **kw)
        log = logger.info if state in (StreamState.LIVE, StreamState.STOPPED, StreamState.ENDED, StreamState.CONNECTING) else logger.warning
        log("[%s] %s %s", self.stream_id, self.spec.redacted, ev.describe())
        return ev

    # ---- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Item]:
        if not self.spec.live:
            yield from self._read_file()
            return
        yield from self._read_live()

    def _read_file(
        self, end_reason: str = "end of file", spec: SourceSpec | None = None, gaps: SegmentGaps | None = None
    ) -> Iterator[Item]:
        container = open_container(spec or self.spec, self.cfg)
        self.stats.connections += 1
        try:
            yield self._health(StreamState.LIVE)
            try:
                yield from self._decode(container, gaps)
            except av.error.FFmpegError as e:
                raise SourceCorrupt(
                    f"{self.spec.redacted}: unreadable data after {self._last_offset:.2f}s ({scrub(e, self.spec)}); "
                    f"{self.stats.emitted} frames before it were delivered"
                ) from None
        finally:
            container.close()
        if self.stats.corrupt_packets:  # said in the end event too, so the report shows the file was damaged
            logger.warning("[%s] %d undecodable packets skipped", self.stream_id, self.stats.corrupt_packets)
            end_reason = f"{end_reason}; {self.stats.corrupt_packets} undecodable packets skipped"
        if not self.stopped:
            yield self._health(StreamState.STOPPED, reason=end_reason)

    def _read_live(self) -> Iterator[Item]:
        relay = None
        if self.spec.kind is SourceKind.LISTEN and self.cfg.listen_relay != "ffmpeg":
            if self.cfg.listen_relay == "nginx" or relay_available(self.cfg):
                relay = RtmpRelay(self.spec, self.cfg).start()  # SourceOpenError: nginx cannot listen there
            else:
                logger.warning("[%s] nginx-rtmp not installed: FFmpeg's single-connection listener", self.stream_id)
        try:
            yield from self._read_connections(relay)
        finally:
            if relay is not None:
                relay.close()

    def _read_connections(self, relay: RtmpRelay | None) -> Iterator[Item]:
        outage_since: float | None = None  # monotonic time the last outage began
        attempt = 0
        hls = None
        if self.spec.kind is SourceKind.HLS:
            hls = PlaylistTracker(self.spec.url, self.cfg.open_timeout_s, self.cfg.hls_variant, self.max_side)
        source = relay.pull if relay is not None else self.spec
        if self.spec.kind is SourceKind.LISTEN:
            logger.info("[%s] listening for a publisher on %s", self.stream_id, self.spec.redacted)
        while not self.stopped:
            failure: str | None = None
            options: dict[str, str] = {}
            if hls is not None:  # an HLS playlist says whether there is anything (new) to read
                try:
                    plan = hls.plan(started=self.stats.emitted > 0)
                except SourceOpenError as e:
                    plan, failure = Plan("error"), str(e)
                if plan.action == "vod":  # a recording: read once, like a file (paced only with realtime)
                    logger.info("[%s] %s: %s", self.stream_id, self.spec.redacted, plan.reason)
                    yield from self._as_file(f"end of {plan.reason}", hls.media_spec(self.spec), hls.gaps())
                    return
                if plan.action == "ended":
                    yield self._health(StreamState.STOPPED, reason=plan.reason)
                    return
                if plan.action == "stuck":
                    failure = plan.reason
                options = dict(plan.options)
                source = hls.media_spec(self.spec)  # the chosen variant's media playlist: only its segments are fetched
            container = None
            if failure is None:
                try:
                    container = self._open(source, options, relay)
                except _NotLive:  # HTTP with a Content-Length: a recording, read once like a file
                    yield from self._as_file("end of file", self.spec)
                    return
                except AudioOnly as e:
                    if not (e.announced and self.session_start is None):
                        if self.state is not StreamState.NO_VIDEO:  # its own state, not an outage (said once)
                            yield self._health(StreamState.NO_VIDEO, reason=str(e))
                        outage_since, attempt = None, 0
                        self._stop.wait(self._backoff.next())
                        continue
                    failure = str(e)  # the metadata says video is coming: still connecting
                except NoVideoStream as e:
                    failure = str(e)
                except (SourceOpenError, SourceTimeout) as e:
                    if self.spec.kind is SourceKind.LISTEN and isinstance(e, SourceTimeout):
                        continue  # nobody published yet: re-arm the listener
                    if relay is not None and not relay.publishing():
                        self._stop.wait(0.05)
                        continue  # the relay has no publisher yet: wait on
                    failure = str(e)
            if container is None:
                attempt += 1
                if outage_since is None:
                    outage_since = time.monotonic()
                if self.cfg.max_retries is not None and attempt > self.cfg.max_retries:
                    yield self._health(StreamState.STOPPED, reason=str(failure), attempt=attempt)
                    raise SourceOpenError(f"{failure} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})") from None
                delay = self._backoff.next()
                # before the show's first frame this is waiting for it to start, not an outage
                waiting = StreamState.RECONNECTING if self.session_start is not None else StreamState.CONNECTING
                yield self._health(waiting, reason=f"{failure}; retry in {delay:.1f}s", attempt=attempt)
                self._stop.wait(delay)
                continue
            self.stats.connections += 1
            self._clock.new_connection()
            reason = "source ended" if hls is None else "playlist stopped advancing"
            got_frame = False
            had_session = self.session_start is not None  # else this is the show's start, not a return
            no_video: AudioOnly | None = None
            try:
                for item in self._decode(container, hls.gaps() if hls is not None else None):
                    if not got_frame and isinstance(item, Frame):
                        got_frame = True
                        gap = None if outage_since is None or not had_session else round(time.monotonic() - outage_since, 3)
                        if gap is not None:
                            self.stats.reconnects += 1
                        yield self._health(StreamState.LIVE, gap_s=gap, attempt=attempt)
                        outage_since, attempt = None, 0
                        self._backoff.reset()
                    yield item
            except av.error.FFmpegError as e:
                if isinstance(e, av.error.TimeoutError | av.error.ExitError):
                    reason = f"no data for {self.cfg.read_timeout_s:g}s"
                else:
                    reason = f"connection lost: {scrub(e, self.spec)}"
            except TimeoutError:  # an HTTP body (read by streamwatch)
                reason = f"no data for {self.cfg.read_timeout_s:g}s"
            except (OSError, http.client.HTTPException) as e:
                reason = f"connection lost: {scrub(e, self.spec)}"
            except AudioOnly as e:  # the video stopped, the audio goes on
                no_video = e
            except NoVideoStream as e:
                reason = str(e)
            finally:
                self._close(container)
            if self.stopped:
                break
            if no_video is not None:
                yield self._health(StreamState.NO_VIDEO, reason=str(no_video))
                continue
            if hls is not None and (pl := hls.read_to_end()) is not None and pl.ended:
                yield self._health(StreamState.STOPPED, reason="playlist ended (EXT-X-ENDLIST)")
                return
            if relay is not None and got_frame and relay.publishing() is False:
                yield self._health(StreamState.ENDED, reason="the publisher unpublished; waiting for the next")
                outage_since, attempt = None, 0
                continue  # not an outage: the next publisher starts where the show goes on
            if outage_since is None:
                outage_since = time.monotonic() - (self.cfg.read_timeout_s if reason.startswith("no data") else 0.0)
            if got_frame:
                yield self._health(StreamState.STALLED, reason=reason)
            if self.spec.kind is SourceKind.LISTEN and got_frame:
                yield self._health(StreamState.RECONNECTING, reason="waiting for the publisher")
                continue  # re-arm at once
            attempt += 1
            if self.cfg.max_retries is not None and attempt > self.cfg.max_retries:
                yield self._health(StreamState.STOPPED, reason=reason, attempt=attempt)
                err = SourceTimeout if reason.startswith("no data") else SourceEnded
                raise err(f"{self.spec.redacted}: {reason} (no retries left)")
            delay = self._backoff.next()
            yield self._health(StreamState.RECONNECTING, reason=f"{reason}; retry in {delay:.1f}s", attempt=attempt)
            self._stop.wait(delay)
        yield self._health(StreamState.ENDED, reason="stopped")

    def _segment_missing(self, hole: float) -> HealthEvent:
        at = self.offset_now()
        reason = f"{hole:.1f}s of the show missing after {at:.1f}s: a segment was not served (HTTP error), FFmpeg skipped it"
        logger.warning("[%s] %s %s", self.stream_id, self.spec.redacted, reason)
        return HealthEvent(self.stream_id, time.time(), at, kind=HealthKind.SEGMENT_MISSING, duration_s=hole, reason=reason)

    def _as_file(self, end_reason: str, spec: SourceSpec, gaps: SegmentGaps | None = None) -> Iterator[Item]:
        """A source that turned out to be a recording (HLS ENDLIST, HTTP with a length): read once, like a file."""
        self.live = False
        self._clock = OffsetClock(live=False)
        yield from self._read_file(end_reason, spec, gaps)

    def _open(self, source: SourceSpec, options: dict[str, str], relay: RtmpRelay | None) -> Any:
        """Open one connection with its video stream (see :func:`~streamwatch.ingest.opening.open_video`)."""
        if relay is not None:  # a waiting player gets the publish's first packets: no need to probe long
            options = {"analyzeduration": "500000"}
        if source.kind is not SourceKind.HTTP:
            return open_video(source, self.cfg, options)
        first = [httpsrc.get(source, self.cfg.open_timeout_s, self.cfg.read_timeout_s)]
        shape = first[0][0]
        if not shape.live and self.stats.emitted == 0:
            first[0][1].close()
            raise _NotLive(shape)

        def body() -> httpsrc.HttpBody:  # the first response, then a new request for a second probe
            _, b = first.pop() if first else httpsrc.get(source, self.cfg.open_timeout_s, self.cfg.read_timeout_s)
            self._bodies.append(b)
            return b

        try:
            return open_video(source, self.cfg, options | ({"format": shape.format} if shape.format else {}), reopen=body)
        except BaseException:
            self._close(None)
            raise

    def _close(self, container: Any) -> None:
        if container is not None:
            container.close()
        while self._bodies:
            self._bodies.pop().close()

    def _decode(self, container: Any, gaps: SegmentGaps | None = None) -> Iterator[Item]:
        """Frames of ``container``; with ``gaps`` (HLS) a ``segment_missing`` notice for each hole in the video."""
        if not container.streams.video:
            raise NoVideoStream(f"{self.spec.redacted} has no video stream")
        vs = container.streams.video[0]
        plan = DecodePlan(self.cfg.decode, self.every_s)
        vs.thread_type = "AUTO"  # frame threading: +35-45% on single-slice streams; set before decoding
        ctx = vs.codec_context
        skip = "DEFAULT"
        tb = vs.time_base
        pace = self.cfg.realtime and not self.live
        start = time.monotonic()
        rotation = 0  # display rotation of this connection (a display-orientation SEI holds until the next)
        for packet in _demux(container, vs, self.live, self.cfg.read_timeout_s):
            if self._stop.is_set():
                return
            if packet is None:  # the connection failed: the decoder still holds its delayed frames
                try:
                    frames = ctx.decode(None)
                except av.error.FFmpegError:
                    frames = []
            else:
                self.stats.packets += 1
                if gaps is not None and packet.dts is not None and tb is not None and (hole := gaps.observe(float(packet.dts * tb))):
                    yield self._segment_missing(hole)
                if packet.pts is not None and tb is not None:
                    plan.observe_packet(float(packet.pts * tb), bool(packet.is_keyframe))
                want = plan.skip_frame()
                if want != skip:
                    ctx.skip_frame = skip = want
                    logger.debug("[%s] decoder skip_frame=%s", self.stream_id, want)
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.stats.corrupt_packets += 1
                    if self.live and self.stats.corrupt_packets % 100 == 1:  # the 1st, 101st…: damaged data is not silent
                        logger.warning("[%s] undecodable packets skipped: %d so far", self.stream_id, self.stats.corrupt_packets)
                    continue
            for f in frames:
                if f.time_base is None and tb is not None:
                    f.time_base = tb  # frames drained from the decoder come without one
                self.stats.decoded += 1
                self._seq += 1
                if (turn := display_rotation(f)) is not None:
                    rotation = turn
                if self.session_start is None and self.live:  # the show starts with its first frame
                    self.session_start, self._t0 = time.time(), time.monotonic()
                offset = self._clock.offset(f.time, self._elapsed())
                self._last_offset = offset
                if self.keep is not None and not self.keep(offset):
                    continue
                if pace:
                    wait = start + offset - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                self.stats.emitted += 1
                self.keyframe_interval = plan.keyframe_interval
                pic = upright(f, rotation)
                yield Frame(self.stream_id, self._seq, offset, time.time(), time.monotonic(), f.time, bool(f.key_frame), pic, rotation)


class _NotLive(Exception):
    """An HTTP source answered with a length: a recording."""


def _demux(container: Any, vs: Any, live: bool, video_timeout_s: float) -> Iterator[Any]:
    """The video packets of ``container``; when reading fails, ``None`` (flush the decoder) before the error.

    Live with audio: every stream is read, and :class:`AudioOnly` is raised when the audio has gone on
    for ``video_timeout_s`` without a video packet (the read timeout never fires while audio flows).
    """
    streams = [vs, *container.streams.audio[:1]] if live else [vs]
    last_video = time.monotonic()
    try:
        for packet in container.demux(*streams):
            if packet.stream is vs:
                last_video = time.monotonic()
                yield packet
            elif packet.size and time.monotonic() - last_video > video_timeout_s:
                raise AudioOnly(f"audio only: no video for {video_timeout_s:g}s, the audio goes on", announced=None)
    except (av.error.FFmpegError, OSError, http.client.HTTPException):
        yield None
        raise


__all__ = ["FrameReader", "Item", "ReaderStats", "open_container"]  # open_container: from .opening
