"""The reconnecting frame reader: one source in, frames and health events out (blocking).

:class:`FrameReader` is a synchronous iterator meant to run in its own thread (PyAV releases the
GIL while it decodes); :mod:`streamwatch.ingest.aio` adapts it to asyncio. Files are read once;
live sources are always opened with open/read timeouts and reconnected with backoff until
:meth:`FrameReader.stop` is called (or ``max_retries`` is used up).
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Iterator
from typing import Any

import av.error

from streamwatch.errors import NoVideoStream, SourceEnded, SourceOpenError, SourceTimeout
from streamwatch.events.model import StreamState
from streamwatch.ingest import httpsrc
from streamwatch.ingest.clock import OffsetClock
from streamwatch.ingest.decoding import DecodingReader, Item, ReaderStats
from streamwatch.ingest.frame import Frame
from streamwatch.ingest.hls import Plan, PlaylistTracker, SegmentGaps
from streamwatch.ingest.opening import AudioOnly, open_container, open_video, scrub
from streamwatch.ingest.relay import RtmpRelay, relay_available
from streamwatch.ingest.srtrelay import SrtRelay
from streamwatch.ingest.url import SourceKind, SourceSpec

logger = logging.getLogger(__name__)


class FrameReader(DecodingReader):
    """Iterate over ``Frame`` and ``HealthEvent`` items from one source.

    ``keep(offset) -> bool`` chooses which decoded frames become ``Frame`` records (the interval
    sampler); ``every_s`` tells the decoder how sparse those are so it can skip work.
    """

    _srt: SrtRelay | None = None  # an SRT source's relay (the FFmpeg CLI), while reading

    def __iter__(self) -> Iterator[Item]:
        if not self.spec.live:
            yield from self._read_file()
            return
        yield from self._read_live()

    def _read_live(self) -> Iterator[Item]:
        relay = None
        if self.spec.kind is SourceKind.LISTEN and self.cfg.listen_relay != "ffmpeg":
            if self.cfg.listen_relay == "nginx" or relay_available(self.cfg):
                relay = RtmpRelay(self.spec, self.cfg).start()  # SourceOpenError: nginx cannot listen there
            else:
                logger.warning("[%s] nginx-rtmp not installed: FFmpeg's single-connection listener", self.stream_id)
        if self.spec.kind is SourceKind.SRT:
            self._srt = SrtRelay(self.spec, self.cfg)  # BadSource: no FFmpeg CLI with SRT
        try:
            yield from self._read_connections(relay)
        finally:
            if relay is not None:
                relay.close()
            if self._srt is not None:
                self._srt.close()

    def _read_connections(self, relay: RtmpRelay | None) -> Iterator[Item]:
        outage_since: float | None = None  # monotonic time the last outage began
        attempt = 0
        hls = None
        if self.spec.kind is SourceKind.HLS:
            hls = PlaylistTracker(self.spec.url, self.cfg.open_timeout_s, self.cfg.hls_variant, self.max_side)
        source = relay.pull if relay is not None else self.spec
        listener = self.spec.kind is SourceKind.LISTEN or (self._srt is not None and self._srt.listener)
        if listener:
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
                    if listener and isinstance(e, SourceTimeout):
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
            except (OSError, http.client.HTTPException) as e:  # a socket read after its timeout says "timed out object"
                timed_out = "timed out" in str(e)
                reason = f"no data for {self.cfg.read_timeout_s:g}s" if timed_out else f"connection lost: {scrub(e, self.spec)}"
            except AudioOnly as e:  # the video stopped, the audio goes on
                no_video = e
            except NoVideoStream as e:
                reason = str(e)
            finally:
                self._close(container)
                if self._srt is not None:
                    self._srt.close()  # the relay is the connection: a listener frees its port for the next one
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
            if listener and got_frame:
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

    def _as_file(self, end_reason: str, spec: SourceSpec, gaps: SegmentGaps | None = None) -> Iterator[Item]:
        """A source that turned out to be a recording (HLS ENDLIST, HTTP with a length): read once, like a file."""
        self.live = False
        self._clock = OffsetClock(live=False)
        yield from self._read_file(end_reason, spec, gaps)

    def _open(self, source: SourceSpec, options: dict[str, str], relay: RtmpRelay | None) -> Any:
        """Open one connection with its video stream (see :func:`~streamwatch.ingest.opening.open_video`)."""
        if relay is not None:  # a waiting player gets the publish's first packets: no need to probe long
            options = {"analyzeduration": "500000"}
        if self._srt is not None:
            pipe = self._srt.connect()  # SourceTimeout: nobody yet; SourceOpenError: the relay's message
            return open_video(source, self.cfg, options, reopen=lambda: pipe)
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


class _NotLive(Exception):
    """An HTTP source answered with a length: a recording."""


__all__ = ["FrameReader", "Item", "ReaderStats", "open_container"]  # open_container: from .opening
