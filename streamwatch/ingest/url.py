"""Source URLs: what kind of source a URL names, and how to print it without its credentials."""

from __future__ import annotations

import difflib
import enum
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from streamwatch.errors import BadSource
from streamwatch.redact import mask_url

_HTTP_FILE_SUFFIXES = {".mp4", ".mkv", ".mov", ".m4v", ".webm"}  # containers no CDN serves live
_FILE_SUFFIXES = {".mp4", ".flv", ".ts", ".mkv", ".mov", ".m4v", ".webm", ".m3u8"}


class SourceKind(enum.Enum):
    FILE = "file"
    RTMP = "rtmp"
    HLS = "hls"
    RTSP = "rtsp"
    LISTEN = "listen"  # streamwatch is the RTMP endpoint a publisher pushes to
    HTTP = "http"  # progressive HTTP (HTTP-FLV, HTTP MPEG-TS): live or a file, told by the response (ingest/httpsrc.py)
    SRT = "srt"  # caller or listener, through the FFmpeg CLI as a relay (ingest/srtrelay.py)
    UDP = "udp"  # MPEG-TS over UDP or RTP (unicast or multicast), read by PyAV directly


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed source: the URL PyAV opens, its kind and a redacted form for logs and errors."""

    url: str
    kind: SourceKind

    @property
    def live(self) -> bool:
        return self.kind is not SourceKind.FILE

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` for logs and errors: every query value, userinfo, fragment and RTMP stream key masked.

    The one rule lives in :func:`streamwatch.redact.mask_url`:

    >>> redact_url("rtmp://bob:hunter2@host/live/abc?key=s3cret&x=1")
    'rtmp://***@host/live/***?key=***&x=***'
    """
    return mask_url(url)


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in 0-65535
        return parts.hostname or ""
    except ValueError:  # a malformed port or IPv6 literal
        return ""


# Schemes PyAV could be pointed at but streamwatch does not ingest (yet): refused by name.
_NOT_YET = {"rist": "RIST", "tcp": "raw TCP", "whip": "WHIP", "mms": "MMS"}
_RTMP = {"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"}
_PORT_ONLY = {"srt", "udp", "rtp"}  # a host may be left out (listen on every address): the port is needed
_KNOWN = sorted(_RTMP | _PORT_ONLY | {"rtsp", "rtsps", "http", "https", "file"})
SUPPORTED = (
    "rtmp(s)://, rtsp(s)://, srt://, udp:// and rtp:// (MPEG-TS), http(s)://….m3u8 (HLS), http(s):// HTTP-FLV or MPEG-TS, "
    "a video file (a path, file:// or http(s)://)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")  # two letters at least: C:/… is a drive
_WINDOWS = re.compile(r"^([A-Za-z]:[\\/]|\\\\)|\\")  # C:\…, C:/…, \\server\share, any backslash


def source_scheme(url: str) -> str:
    """The lower-case scheme of ``url`` ("" for a path). ``rtmpp:/x`` (a slash lost) still has one."""
    m = _SCHEME.match(url.strip())
    return m.group(1).lower() if m else ""


def _refuse_scheme(scheme: str, url: str) -> BadSource:
    shown = redact_url(url)
    if scheme in _NOT_YET:
        name = _NOT_YET[scheme]
        return BadSource(
            f"{name} sources are not supported yet ({shown}): streamwatch reads {SUPPORTED}; "
            "relay it to RTMP first (ffmpeg -i SRC -c copy -f flv rtmp://…)"
        )
    close = difflib.get_close_matches(scheme, _KNOWN, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}://?)" if close else ""
    return BadSource(f"unsupported source scheme {scheme!r} in {shown}{hint}: streamwatch reads {SUPPORTED}")


def _local_path(url: str, scheme: str) -> Path:
    """The path a ``file://`` URL (percent-decoded) or a plain path names; BadSource for a Windows path here."""
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise BadSource(f"{url}: a file on another host ({parts.netloc}) cannot be read: copy it here or serve it over http(s)")
        url = unquote(parts.path)
    if os.name != "nt" and _WINDOWS.search(url) and not Path(url).exists():
        raise BadSource(
            f"'{url}' is a Windows path, and this machine runs {sys.platform}: give the file's path on this machine "
            f"(under WSL C:\\ is /mnt/c/), or copy the file here"
        )
    return Path(url)


def _port_only(url: str, scheme: str, listen: bool) -> SourceSpec:
    """An SRT, UDP or RTP address: the port is needed, the host may be left out (``srt://:9000?mode=listener``)."""
    try:
        port = urlsplit(url).port if "://" in url else None
    except ValueError:
        port = None
    if not port:
        raise BadSource(f"source {redact_url(url)!r} has no port or a bad one: expected {scheme}://[HOST]:PORT")
    if listen:
        raise BadSource(f"listen mode needs an rtmp:// address, got {redact_url(url)} (an SRT listener is srt://:PORT?mode=listener)")
    return SourceSpec(url, SourceKind.SRT if scheme == "srt" else SourceKind.UDP)


def parse_source(url: str, *, listen: bool = False) -> SourceSpec:
    """Classify ``url``. ``listen=True`` makes an ``rtmp://`` URL a listen address.

    BadSource (one line, naming what is supported) for a scheme streamwatch does not read, a URL without
    a host, a Windows path on another system, or a path that is not a video file. A local file's
    existence is checked by :func:`streamwatch.ingest.preflight.check_source`, not here.
    """
    if not url or not url.strip():
        raise BadSource("empty source URL")
    url = url.strip()
    scheme = source_scheme(url)
    try:
        urlsplit(url)
    except ValueError as e:  # e.g. a bad IPv6 host
        raise BadSource(f"malformed source URL {redact_url(url)}: {e}") from e
    if scheme and scheme not in _KNOWN:
        raise _refuse_scheme(scheme, url)
    if scheme in _PORT_ONLY:
        return _port_only(url, scheme, listen)
    if scheme and scheme != "file" and ("://" not in url or not _host(url)):
        raise BadSource(f"source {redact_url(url)!r} has no host or a bad port: expected {scheme}://HOST[:PORT]/…")
    if listen:
        if scheme not in _RTMP:
            raise BadSource(f"listen mode needs an rtmp:// address, got {redact_url(url)}")
        return SourceSpec(url, SourceKind.LISTEN)
    if scheme in _RTMP:
        return SourceSpec(url, SourceKind.RTMP)
    if scheme in {"rtsp", "rtsps"}:
        return SourceSpec(url, SourceKind.RTSP)
    if scheme in {"http", "https"}:
        if ".m3u8" in urlsplit(url).path.lower():
            return SourceSpec(url, SourceKind.HLS)
        if Path(urlsplit(url).path).suffix.lower() in _HTTP_FILE_SUFFIXES:
            return SourceSpec(url, SourceKind.FILE)  # a recording over HTTP is read like a file (it ends when it ends)
        return SourceSpec(url, SourceKind.HTTP)  # HTTP-FLV, HTTP MPEG-TS or unknown: the response says whether it is live
    path = _local_path(url, scheme)
    if path.suffix.lower() not in _FILE_SUFFIXES and not path.exists():
        raise BadSource(f"unknown source {redact_url(url)!r}: expected {SUPPORTED}")
    return SourceSpec(str(path), SourceKind.FILE)
