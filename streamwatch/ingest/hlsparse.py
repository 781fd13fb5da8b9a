"""HLS playlists as values (pure): media and master playlists, the variant to watch, holes in the segments.

Written here rather than with the ``m3u8`` package (PyPI): streamwatch needs a handful of tags
(``EXT-X-STREAM-INF`` with its attribute list, ``EXTINF``, ``EXT-X-KEY``, ``EXT-X-MEDIA-SEQUENCE``,
``EXT-X-TARGETDURATION``, ``EXT-X-ENDLIST``/``PLAYLIST-TYPE``, ``EXT-X-DISCONTINUITY``), the
segments themselves are fetched by FFmpeg, and ``m3u8``'s loader is blocking ``urllib`` too: one
parser of ~80 lines, tested on the shapes CDNs serve, instead of a dependency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def attributes(text: str) -> dict[str, str]:
    """An HLS attribute list (``BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2"``) as a dict, quotes removed.

    >>> attributes('BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2",RESOLUTION=640x360')["CODECS"]
    'avc1.4d401f,mp4a.40.2'
    """
    return {k: v.strip('"') for k, v in _ATTR.findall(text)}


@dataclass(frozen=True, slots=True)
class Variant:
    """One rendition of a master playlist."""

    url: str
    bandwidth: int
    width: int | None = None
    height: int | None = None

    @property
    def long_side(self) -> int | None:
        return None if self.width is None or self.height is None else max(self.width, self.height)


@dataclass(frozen=True, slots=True)
class Playlist:
    """One media playlist: ``segments`` are URIs in order, numbered from ``media_sequence``."""

    url: str
    media_sequence: int
    target_duration: float
    segments: tuple[str, ...]
    ended: bool  # #EXT-X-ENDLIST (or a VOD playlist type): a recording, finished when read
    discontinuities: int = 0
    variants: tuple[Variant, ...] = ()  # a master playlist: its variants (and no segments)
    durations: tuple[float, ...] = ()  # EXTINF of each segment
    keys: tuple[str, ...] = ()  # URIs of AES-128 keys (absolute)

    @property
    def last(self) -> Watermark | None:
        """The last segment listed, or None for an empty playlist."""
        if not self.segments:
            return None
        return Watermark(self.media_sequence + len(self.segments) - 1, self.segments[-1])

    @property
    def duration_s(self) -> float:
        """Sum of the segments' durations."""
        return float(sum(self.durations))


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
    """Parse an M3U8 text fetched from ``url`` (segment, variant and key URIs are made absolute).

    Raises :class:`ValueError` when it is not an M3U8 playlist.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#EXTM3U"):
        raise ValueError("not an M3U8 playlist")
    seq, target, ended, disc = 0, 0.0, False, 0
    segments: list[str] = []
    durations: list[float] = []
    variants: list[Variant] = []
    keys: list[str] = []
    stream_inf: dict[str, str] | None = None
    extinf = 0.0
    for ln in lines[1:]:
        tag, _, value = ln.partition(":")
        if tag == "#EXT-X-MEDIA-SEQUENCE":
            seq = int(value)
        elif tag == "#EXT-X-TARGETDURATION":
            target = float(value)
        elif ln == "#EXT-X-ENDLIST" or ln == "#EXT-X-PLAYLIST-TYPE:VOD":
            ended = True
        elif ln == "#EXT-X-DISCONTINUITY":
            disc += 1
        elif tag == "#EXTINF":
            extinf = float(value.split(",", 1)[0] or 0.0)
        elif tag == "#EXT-X-KEY":
            attrs = attributes(value)
            if attrs.get("METHOD", "NONE") != "NONE" and "URI" in attrs and urljoin(url, attrs["URI"]) not in keys:
                keys.append(urljoin(url, attrs["URI"]))
        elif tag == "#EXT-X-STREAM-INF":
            stream_inf = attributes(value)
        elif not ln.startswith("#"):
            if stream_inf is not None:
                variants.append(_variant(urljoin(url, ln), stream_inf))
            else:
                segments.append(urljoin(url, ln))
                durations.append(extinf)
            stream_inf, extinf = None, 0.0
    return Playlist(url, seq, target, tuple(segments), ended, disc, tuple(variants), tuple(durations), tuple(keys))


def _variant(url: str, attrs: dict[str, str]) -> Variant:
    w = h = None
    if m := re.fullmatch(r"(\d+)x(\d+)", attrs.get("RESOLUTION", "")):
        w, h = int(m[1]), int(m[2])
    try:
        bw = int(attrs.get("BANDWIDTH") or attrs.get("AVERAGE-BANDWIDTH") or 0)
    except ValueError:
        bw = 0
    return Variant(url, bw, w, h)


def choose_variant(variants: tuple[Variant, ...], choice: str, max_side: int) -> Variant:
    """The variant to watch: ``auto`` (the smallest whose long side is at least ``max_side``, else the
    largest), ``highest`` / ``lowest`` (bandwidth), or a bandwidth in bit/s (the nearest).

    >>> vs = (Variant("a", 800_000, 640, 360), Variant("b", 2_500_000, 1280, 720), Variant("c", 6_000_000, 1920, 1080))
    >>> [choose_variant(vs, c, 960).url for c in ("auto", "highest", "lowest", "3000000")]
    ['b', 'c', 'a', 'b']
    >>> choose_variant(vs, "auto", 2000).url  # none is big enough: the largest
    'c'
    """
    if not variants:
        raise ValueError("a master playlist without variants")
    by_size = sorted(variants, key=lambda v: (v.long_side or 0, v.bandwidth))
    if choice == "highest":
        return max(variants, key=lambda v: (v.bandwidth, v.long_side or 0))
    if choice == "lowest":
        return min(variants, key=lambda v: (v.bandwidth, v.long_side or 0))
    if choice.isdigit():
        return min(variants, key=lambda v: (abs(v.bandwidth - int(choice)), -v.bandwidth))
    if all(v.long_side is None for v in variants):  # no RESOLUTION given: the middle bandwidth is the best guess
        return sorted(variants, key=lambda v: v.bandwidth)[(len(variants) - 1) // 2]
    return next((v for v in by_size if (v.long_side or 0) >= max_side), by_size[-1])


@dataclass(slots=True)
class SegmentGaps:
    """Holes in a stream of HLS video timestamps: a segment that was not served (FFmpeg skips it silently).

    A forward jump longer than half a target duration (at least ``min_s``) and at most ``max_s`` is a
    hole; longer jumps and steps back are discontinuities (a packager restart, an offset timeline).
    """

    target_duration: float = 2.0
    min_s: float = 0.75
    max_s: float = 60.0
    _last: float | None = None
    _step: float = 0.0

    def observe(self, t: float) -> float | None:
        """The next video timestamp (s): the length of the hole before it, or None."""
        last, self._last = self._last, t
        if last is None:
            return None
        d = t - last
        if 0 < d <= 1.0:
            self._step = d if self._step == 0 else min(self._step, d)
        threshold = max(self.min_s, self.target_duration / 2)
        return round(d - self._step, 3) if threshold < d <= self.max_s else None
