"""Decoding one opened container into frames and health events (blocking): the part of the reader
that files and live sources share. :class:`~streamwatch.ingest.reader.FrameReader` adds opening,
reconnecting and the source kinds on top.
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
from streamwatch.errors import NoVideoStream, SourceCorrupt
from streamwatch.events.model import HealthEvent, HealthKind, StreamState, can_transition
from streamwatch.ingest.backoff import Backoff
from streamwatch.ingest.clock import OffsetClock
from streamwatch.ingest.decode import DecodePlan
from streamwatch.ingest.frame import Frame, display_rotation, upright
from streamwatch.ingest.hlsparse import SegmentGaps
from streamwatch.ingest.opening import AudioOnly, open_container, scrub
from streamwatch.ingest.url import SourceSpec
from streamwatch.runtime.cpu_account import CpuAccount, Stage
from streamwatch.runtime.thread_cpu import ThreadGroup

logger = logging.getLogger("streamwatch.ingest.reader")  # one logger for the reader's lifecycle lines

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
    decoder_threads: int = 0  # the decoder's thread count as the codec context took it


class DecodingReader:
    """A source's state, session clock and decoder (see :class:`~streamwatch.ingest.reader.FrameReader`)."""

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
        decoder_threads: int = 0,
        cpu: CpuAccount | None = None,
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
        self.decoder_threads = decoder_threads  # frame threads per decoder (0 = FFmpeg sizes them to the machine)
        self.cpu = cpu  # decode CPU time of this thread, per stream (None: not counted)
        self._bodies: list[Any] = []  # HTTP bodies PyAV reads from (ingest.httpsrc; closed with the container)

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

    def _segment_missing(self, hole: float) -> HealthEvent:
        at = self.offset_now()
        reason = f"{hole:.1f}s of the show missing after {at:.1f}s: a segment was not served (HTTP error), FFmpeg skipped it"
        logger.warning("[%s] %s %s", self.stream_id, self.spec.redacted, reason)
        return HealthEvent(self.stream_id, time.time(), at, kind=HealthKind.SEGMENT_MISSING, duration_s=hole, reason=reason)

    def _decode(self, container: Any, gaps: SegmentGaps | None = None) -> Iterator[Item]:
        """Frames of ``container``; with ``gaps`` (HLS) a ``segment_missing`` notice for each hole in the video."""
        if not container.streams.video:
            raise NoVideoStream(f"{self.spec.redacted} has no video stream")
        vs = container.streams.video[0]
        plan = DecodePlan(self.cfg.decode, self.every_s)
        threads = decoder_thread_count(self.live, self.decoder_threads)
        if threads != 1:
            vs.thread_type = "AUTO"  # frame threading: +35-45% on single-slice streams; set before decoding
        vs.codec_context.thread_count = threads
        if self.every_s is not None and self.cfg.skip_deblock:  # sampling, not every frame exactly: see IngestConfig
            vs.codec_context.options = {**vs.codec_context.options, "skip_loop_filter": "nokey"}
        helpers = ThreadGroup("av:") if threads != 1 and self.cpu is not None else None  # frame threads: counted to decode
        self.stats.decoder_threads = vs.codec_context.thread_count
        ctx = vs.codec_context
        skip = "DEFAULT"
        tb = vs.time_base
        pace = self.cfg.realtime and not self.live
        start = time.monotonic()
        rotation = 0  # display rotation of this connection (a display-orientation SEI holds until the next)
        cpu, sid = self.cpu, self.stream_id
        opened = False
        t_cpu = time.thread_time()  # demux + decode + upright since the last frame handed on
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
                    if helpers is not None and not opened:  # the decoder opens (and starts its threads) here
                        opened = True
                        with helpers.adopt_new():
                            frames = packet.decode()
                    else:
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
                if cpu is not None:
                    now = time.thread_time()
                    cpu.add(sid, Stage.DECODE, now - t_cpu + (helpers.take() if helpers is not None else 0.0))
                    t_cpu = now
                yield Frame(self.stream_id, self._seq, offset, time.time(), time.monotonic(), f.time, bool(f.key_frame), pic, rotation)
                t_cpu = time.thread_time()  # what the consumer did with the frame on this thread is not decode


def decoder_thread_count(live: bool, budget: int) -> int:
    """Decoder threads for one source: a live source decodes on its reader thread (1), a file with
    ``budget`` frame threads (0 = FFmpeg sizes them to the machine).

    A live stream is paced by its publisher: one thread decodes 1080p30 (non-reference frames
    skipped) in a fraction of real time, so frame threads only add hand-offs (7% more CPU per stream
    with 12 paced decoders, tools/bench/decoders.py) and 2 threads per stream that the reader
    thread's clock does not see. Parallelism with many streams comes from the streams. A file is
    read as fast as it decodes: there frame threads shorten the wall time.
    """
    return 1 if live else budget


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


__all__ = ["DecodingReader", "Item", "ReaderStats", "decoder_thread_count"]
