"""HLS playlists: ended or live, advancing or stuck, and where to resume without repeating content.

FFmpeg's HLS demuxer cannot tell the reader any of this: it ends a read the same way for a
recording (``#EXT-X-ENDLIST``) and for a live playlist that stopped moving, and a reopened live
playlist starts again three segments from its end, i.e. at content already sampled. So the reader
looks at the playlist itself: :func:`fetch_playlist` (I/O, follows a master playlist to the chosen
variant) and the pure :mod:`streamwatch.ingest.hlsparse`.

Segment identity is the media sequence number (``#EXT-X-MEDIA-SEQUENCE`` + position) together
with the segment URI: a packager restart that starts numbering again, or renames segments, is new
content; the same number and URI is content already read.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

from streamwatch.errors import SourceOpenError
from streamwatch.ingest.hlsparse import Playlist, SegmentGaps, Variant, Watermark, choose_variant, parse_playlist
from streamwatch.ingest.url import SourceKind, SourceSpec, redact_url

logger = logging.getLogger(__name__)


def _get(url: str, timeout: float, what: str = "playlist", limit: int = 4_000_000) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # http(s) only: parse_source checked
            return bytes(r.read(limit))
    except (urllib.error.URLError, OSError, ValueError) as e:
        code = getattr(e, "code", None)
        reason = f"HTTP {code}" if code else getattr(e, "reason", None) or type(e).__name__
        raise SourceOpenError(f"cannot fetch {what} {redact_url(url)}: {reason}") from None


def fetch_playlist(url: str, timeout: float, variant: str = "auto", max_side: int = 960) -> Playlist:
    """GET the playlist (and, for a master playlist, the chosen variant's). Errors: SourceOpenError."""
    pl = _parse(_get(url, timeout).decode("utf-8", "replace"), url)
    if pl.variants:
        v = choose_variant(pl.variants, variant, max_side)
        pl = _parse(_get(v.url, timeout).decode("utf-8", "replace"), v.url)
    return pl


def segment_bitrate(pl: Playlist, timeout: float) -> int | None:
    """Bit/s of a media playlist from its first segment's size (a HEAD request) and duration; None if unknown."""
    if not pl.segments or not pl.durations or pl.durations[0] <= 0:
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(pl.segments[0], method="HEAD"), timeout=timeout) as r:
            size = int(r.headers.get("Content-Length") or 0)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return int(size * 8 / pl.durations[0]) or None


def _parse(text: str, url: str) -> Playlist:
    try:
        return parse_playlist(text, url)
    except ValueError as e:
        raise SourceOpenError(f"{redact_url(url)}: {e}") from None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do before (re)opening an HLS source.

    ``action``: ``"vod"`` (a recording: read it once like a file), ``"ended"`` (a live playlist
    that got its ENDLIST and nothing is left to read), ``"stuck"`` (no segment after the last one
    read: still an outage, do not reopen), ``"open"`` (with ``options`` for FFmpeg's demuxer).
    """

    action: str
    reason: str = ""
    options: tuple[tuple[str, str], ...] = ()


class PlaylistTracker:
    """Remembers the variant watched and the last segment read from one HLS source across reconnects (blocking
    I/O, in the reader's thread: never on the event loop).

    A master playlist is read once per (re)connect: one variant is chosen (``ingest.hls_variant``) and
    FFmpeg is handed that variant's media playlist, so only its segments are fetched; a variant that
    disappears (HTTP error) is replaced by the choice among the variants listed now. AES-128 keys are
    fetched once before the first open: a key that cannot be fetched is said as such (FFmpeg says
    "Invalid data found"). Before each open, :meth:`plan` fetches the playlist: nothing new after
    the last segment read means the outage goes on (a stale or stuck playlist is never read again);
    new segments are opened at the first of them (FFmpeg's ``live_start_index`` counted from the
    end), so content already sampled is not sampled twice. After a read ends, :meth:`read_to_end`
    records the last segment listed then (FFmpeg's demuxer ends a live read only once the playlist
    stops moving).
    """

    def __init__(self, url: str, timeout_s: float, variant: str = "auto", max_side: int = 960) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.variant, self.max_side = variant, max_side
        self.mark: Watermark | None = None
        self.target_duration = 0.0
        self.media_url = url  # the media playlist read: the URL itself, or the chosen variant's
        self.chosen: Variant | None = None
        self._keys_ok: set[str] = set()

    def media_spec(self, spec: SourceSpec) -> SourceSpec:
        """What FFmpeg opens: the chosen variant's media playlist (``spec`` itself without a master playlist)."""
        return spec if self.media_url == self.url else SourceSpec(self.media_url, SourceKind.HLS)

    def gaps(self) -> SegmentGaps:
        """A hole detector for the video timestamps of the next read."""
        return SegmentGaps(self.target_duration or 2.0)

    def fetch(self) -> Playlist:
        """The media playlist watched now (the master playlist read again when there is one). Errors: SourceOpenError."""
        if self.media_url != self.url:
            try:
                return _parse(_get(self.media_url, self.timeout_s).decode("utf-8", "replace"), self.media_url)
            except SourceOpenError as e:  # the variant is gone: choose again among those listed now
                logger.warning("HLS variant %s: %s; choosing again", redact_url(self.media_url), e)
        pl = _parse(_get(self.url, self.timeout_s).decode("utf-8", "replace"), self.url)
        if not pl.variants:
            self.media_url = self.url
            return pl
        v = choose_variant(pl.variants, self.variant, self.max_side)
        if v != self.chosen:
            size = f"{v.width}x{v.height}" if v.width else "size not listed"
            kbps, n = v.bandwidth // 1000, len(pl.variants)
            logger.info("HLS %s: variant %s (%s, %d kb/s) of %d", redact_url(self.url), redact_url(v.url), size, kbps, n)
        self.chosen, self.media_url = v, v.url
        return _parse(_get(v.url, self.timeout_s).decode("utf-8", "replace"), v.url)

    def _check_keys(self, pl: Playlist) -> None:
        for key in pl.keys:
            if key not in self._keys_ok:
                _get(key, self.timeout_s, "the AES-128 key", 1024)
                self._keys_ok.add(key)

    def plan(self, *, started: bool) -> Plan:
        """Raises SourceOpenError when the playlist (or its AES-128 key) cannot be fetched or parsed."""
        pl = self.fetch()
        self._check_keys(pl)
        self.target_duration = pl.target_duration or self.target_duration
        if pl.ended and not started:
            return Plan("vod", "recording (EXT-X-ENDLIST)")
        new = len(pl.segments) if self.mark is None else self.mark.new_segments(pl)
        if pl.ended and new == 0:
            return Plan("ended", "playlist ended (EXT-X-ENDLIST)")
        if self.mark is not None and new == 0:
            return Plan("stuck", f"playlist not advancing (media sequence {pl.media_sequence}, last segment {self.mark.seq})")
        if self.mark is None or new >= len(pl.segments):
            return Plan("open")
        return Plan("open", options=(("live_start_index", str(-new)),))

    def read_to_end(self) -> Playlist | None:
        """Record the playlist's last segment as read; None when it cannot be fetched now."""
        try:
            pl = self.fetch()
        except SourceOpenError:
            return None
        self.mark = pl.last or self.mark
        return pl


__all__ = [
    "Plan",
    "Playlist",
    "PlaylistTracker",
    "SegmentGaps",
    "Variant",
    "Watermark",
    "fetch_playlist",
    "parse_playlist",
    "segment_bitrate",
]
