"""HLS playlists: ended or live, advancing or stuck, and where to resume without repeating content.

FFmpeg's HLS demuxer cannot tell the reader any of this: it ends a read the same way for a
recording (``#EXT-X-ENDLIST``) and for a live playlist that stopped moving, and a reopened live
playlist starts again three segments from its end, i.e. at content already sampled. So the reader
looks at the playlist itself: :func:`fetch_playlist` (I/O, follows a master playlist to its first
variant, the one FFmpeg's ``streams.video[0]`` comes from) and the pure :func:`parse_playlist` /
:meth:`Watermark.new_segments`.

Segment identity is the media sequence number (``#EXT-X-MEDIA-SEQUENCE`` + position) together
with the segment URI: a packager restart that starts numbering again, or renames segments, is new
content; the same number and URI is content already read.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urljoin

from streamwatch.errors import SourceOpenError
from streamwatch.ingest.url import redact_url


@dataclass(frozen=True, slots=True)
class Playlist:
    """One media playlist: ``segments`` are URIs in order, numbered from ``media_sequence``."""

    url: str
    media_sequence: int
    target_duration: float
    segments: tuple[str, ...]
    ended: bool  # #EXT-X-ENDLIST (or a VOD playlist type): a recording, finished when read
    discontinuities: int = 0
    variants: tuple[str, ...] = ()  # a master playlist: its variant URLs (and no segments)

    @property
    def last(self) -> Watermark | None:
        """The last segment listed, or None for an empty playlist."""
        if not self.segments:
            return None
        return Watermark(self.media_sequence + len(self.segments) - 1, self.segments[-1])


@dataclass(frozen=True, slots=True)
class Watermark:
    """The last segment read: its media sequence number and URI."""

    seq: int
    uri: str

    def new_segments(self, pl: Playlist) -> int:
        """How many segments at the end of ``pl`` come after this one (0: nothing new).

        >>> pl = Playlist("u", 10, 2.0, ("a", "b", "c"), ended=False)
        >>> Watermark(11, "b").new_segments(pl), Watermark(12, "c").new_segments(pl)
        (1, 0)
        >>> Watermark(7, "x").new_segments(pl), Watermark(90, "z").new_segments(pl)  # fell behind; renumbered
        (3, 3)
        """
        for i, uri in enumerate(pl.segments):
            if uri == self.uri and pl.media_sequence + i == self.seq:
                return len(pl.segments) - i - 1
        if pl.segments and pl.media_sequence + len(pl.segments) - 1 <= self.seq and self.uri in pl.segments:
            return 0  # renumbered but the same segments (a stale copy)
        return len(pl.segments)


def parse_playlist(text: str, url: str) -> Playlist:
    """Parse an M3U8 text fetched from ``url`` (segment and variant URIs are made absolute).

    Raises :class:`ValueError` when it is not an M3U8 playlist.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#EXTM3U"):
        raise ValueError("not an M3U8 playlist")
    seq, target, ended, disc = 0, 0.0, False, 0
    segments: list[str] = []
    variants: list[str] = []
    want_variant = False
    for ln in lines[1:]:
        if ln.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(ln.split(":", 1)[1])
        elif ln.startswith("#EXT-X-TARGETDURATION:"):
            target = float(ln.split(":", 1)[1])
        elif ln == "#EXT-X-ENDLIST" or ln == "#EXT-X-PLAYLIST-TYPE:VOD":
            ended = True
        elif ln == "#EXT-X-DISCONTINUITY":
            disc += 1
        elif ln.startswith("#EXT-X-STREAM-INF"):
            want_variant = True
        elif not ln.startswith("#"):
            (variants if want_variant else segments).append(urljoin(url, ln))
            want_variant = False
    return Playlist(url, seq, target, tuple(segments), ended, disc, tuple(variants))


def _get(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # http(s) only: parse_source checked
            return str(r.read(4_000_000).decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "code", None) or type(e).__name__
        raise SourceOpenError(f"cannot fetch playlist {redact_url(url)}: {reason}") from None


def fetch_playlist(url: str, timeout: float) -> Playlist:
    """GET the playlist (and, for a master playlist, its first variant). Errors: SourceOpenError."""
    pl = _parse(_get(url, timeout), url)
    if pl.variants:
        pl = _parse(_get(pl.variants[0], timeout), pl.variants[0])
    return pl


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
    """Remembers the last segment read from one HLS source across reconnects (blocking I/O).

    Before each open, :meth:`plan` fetches the playlist: nothing new after the last segment read
    means the outage goes on (a stale or stuck playlist is never read again); new segments are
    opened at the first of them (FFmpeg's ``live_start_index`` counted from the end), so content
    already sampled is not sampled twice. After a read ends, :meth:`read_to_end` records the last
    segment listed then (FFmpeg's demuxer ends a live read only once the playlist stops moving).
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.mark: Watermark | None = None
        self.target_duration = 0.0

    def plan(self, *, started: bool) -> Plan:
        """Raises SourceOpenError when the playlist cannot be fetched or parsed."""
        pl = fetch_playlist(self.url, self.timeout_s)
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
            pl = fetch_playlist(self.url, self.timeout_s)
        except SourceOpenError:
            return None
        self.mark = pl.last or self.mark
        return pl
