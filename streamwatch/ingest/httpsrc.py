"""Progressive HTTP sources (HTTP-FLV, HTTP MPEG-TS, a file over HTTP): live or not, told by the response.

Chinese CDNs deliver live shows as ``http://…/room.flv`` (HTTP-FLV): a body with no end. A recording
over HTTP has a ``Content-Length``; a live body has none (``Transfer-Encoding: chunked``, or a body
that ends when the connection closes). streamwatch makes the request itself (``http.client``, in
the reader's thread), reads the headers (:func:`classify`, pure), and hands the body to PyAV as a
file-like object: one connection, which matters for servers that take one client at a time
(``ffmpeg -listen 1``). A live body is then a live source (outage, reconnect with backoff, live
again); anything else is read once like a file.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from streamwatch.errors import SourceOpenError, SourceTimeout
from streamwatch.ingest.url import SourceSpec, redact_url

LIVE_TYPES = {"video/x-flv": "flv", "video/flv": "flv", "video/mp2t": "mpegts", "video/mpeg": "mpegts"}
_SUFFIX_FORMATS = {".flv": "flv", ".ts": "mpegts"}
_MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class HttpShape:
    """What an HTTP response says about its body."""

    status: int
    content_type: str
    length: int | None  # Content-Length, None when absent
    chunked: bool
    format: str | None  # the demuxer to use (from the content type, else the path), None: let FFmpeg guess

    @property
    def live(self) -> bool:
        """A body without a length: it goes on as long as the show (a file has its length)."""
        return self.length is None or self.chunked


def classify(status: int, headers: dict[str, str], path: str) -> HttpShape:
    """The shape of a response from its status, headers (names lower-case) and the URL's path.

    >>> classify(200, {"transfer-encoding": "chunked", "content-type": "application/octet-stream"}, "/live.flv").live
    True
    >>> s = classify(200, {"content-length": "1000", "content-type": "video/x-flv"}, "/rec")
    >>> s.live, s.format
    (False, 'flv')
    >>> classify(200, {"content-type": "video/MP2T; charset=x"}, "/a").format
    'mpegts'
    """
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        length: int | None = int(headers["content-length"])
    except (KeyError, ValueError):
        length = None
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    fmt = LIVE_TYPES.get(ctype)
    if fmt is None:
        suffix = path.lower().rsplit("/", 1)[-1]
        fmt = next((f for s, f in _SUFFIX_FORMATS.items() if suffix.endswith(s)), None)
    return HttpShape(status, ctype, length, chunked, fmt)


class HttpBody:
    """The response body as the read-only file-like object PyAV reads (no seek: a stream)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn, self._resp = conn, resp

    def read(self, n: int = -1) -> bytes:
        return self._resp.read1(n) if n > 0 else b""

    def close(self) -> None:
        self._resp.close()
        self._conn.close()


def get(spec: SourceSpec, open_timeout: float, read_timeout: float) -> tuple[HttpShape, HttpBody]:
    """GET the source (following redirects); the body waits at most ``read_timeout`` for data.

    Errors: :class:`SourceTimeout` (no answer in ``open_timeout``), :class:`SourceOpenError`
    (refused, HTTP error status, too many redirects).
    """
    url = spec.url
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname or "", parts.port, timeout=open_timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"User-Agent": "streamwatch", "Accept": "*/*", "Icy-MetaData": "0"})
            resp = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise SourceTimeout(f"timed out opening {spec.redacted}") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise SourceOpenError(f"cannot open {spec.redacted}: {getattr(e, 'strerror', None) or type(e).__name__}") from None
        headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status in (301, 302, 303, 307, 308) and "location" in headers:
            conn.close()
            url = urljoin(url, headers["location"])
            continue
        if resp.status >= 400:
            conn.close()
            raise SourceOpenError(f"cannot open {spec.redacted}: HTTP {resp.status} {resp.reason}")
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        return classify(resp.status, headers, parts.path), HttpBody(conn, resp)
    raise SourceOpenError(f"cannot open {spec.redacted}: more than {_MAX_REDIRECTS} redirects (last {redact_url(url)})")
