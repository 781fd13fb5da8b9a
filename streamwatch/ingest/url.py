"""Source URLs: what kind of source a URL names, and how to print it without its credentials."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from streamwatch.errors import ConfigError

# Query parameters that carry secrets (stream keys, tokens, signatures).
_SECRET_PARAMS = re.compile(
    r"^(key|token|secret|sig|signature|auth|password|pass|pwd|passwd|streamkey|stream_key|access_token|api_key|apikey)$", re.I
)
_HTTP_FILE_SUFFIXES = {".mp4", ".mkv", ".mov", ".m4v", ".webm"}  # containers no CDN serves live
_FILE_SUFFIXES = {".mp4", ".flv", ".ts", ".mkv", ".mov", ".m4v", ".webm", ".m3u8"}


class SourceKind(enum.Enum):
    FILE = "file"
    RTMP = "rtmp"
    HLS = "hls"
    RTSP = "rtsp"
    LISTEN = "listen"  # streamwatch is the RTMP endpoint a publisher pushes to
    HTTP = "http"  # progressive HTTP (HTTP-FLV, HTTP MPEG-TS): live or a file, told by the response (ingest/httpsrc.py)


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
    """Hide user:password, secret query values and RTMP stream keys in ``url``.

    >>> redact_url("rtmp://bob:hunter2@host/live/abc?key=s3cret&x=1")
    'rtmp://***@host/live/***?key=***&x=1'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive letter)
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    path = parts.path
    if parts.scheme.lower() in {"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"}:
        # rtmp://host/app/STREAM_KEY: the last path element is the publish key.
        segs = path.split("/")
        if len(segs) >= 3 and segs[-1]:
            segs[-1] = "***"
            path = "/".join(segs)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAMS.match(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in 0-65535
        return parts.hostname or ""
    except ValueError:  # a malformed port or IPv6 literal
        return ""


def parse_source(url: str, *, listen: bool = False) -> SourceSpec:
    """Classify ``url``. ``listen=True`` makes an ``rtmp://`` URL a listen address."""
    if not url or not url.strip():
        raise ConfigError("empty source URL")
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme and scheme not in {"file"} and not _host(url):
        raise ConfigError(f"source {redact_url(url)!r} has no host or a bad port: expected {scheme}://HOST[:PORT]/…")
    if listen:
        if not scheme.startswith("rtmp"):
            raise ConfigError(f"listen mode needs an rtmp:// address, got {redact_url(url)}")
        return SourceSpec(url, SourceKind.LISTEN)
    if scheme in {"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"}:
        return SourceSpec(url, SourceKind.RTMP)
    if scheme in {"rtsp", "rtsps"}:
        return SourceSpec(url, SourceKind.RTSP)
    if scheme in {"http", "https"}:
        if ".m3u8" in urlsplit(url).path.lower():
            return SourceSpec(url, SourceKind.HLS)
        if Path(urlsplit(url).path).suffix.lower() in _HTTP_FILE_SUFFIXES:
            return SourceSpec(url, SourceKind.FILE)  # a recording over HTTP is read like a file (it ends when it ends)
        return SourceSpec(url, SourceKind.HTTP)  # HTTP-FLV, HTTP MPEG-TS or unknown: the response says whether it is live
    if scheme in {"", "file"}:
        path = Path(urlsplit(url).path if scheme == "file" else url)
        if path.suffix.lower() == ".m3u8":
            return SourceSpec(str(path), SourceKind.FILE)
        if path.suffix.lower() not in _FILE_SUFFIXES and not path.exists():
            raise ConfigError(f"unknown source {redact_url(url)!r}: expected rtmp://, rtsp://, http(s)://….m3u8 or a video file")
        return SourceSpec(str(path), SourceKind.FILE)
    raise ConfigError(f"unsupported source scheme {scheme!r} in {redact_url(url)}")
