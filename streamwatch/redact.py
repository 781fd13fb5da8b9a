"""Masking secrets in URLs for display: one rule for every place a URL leaves the process.

CDNs put secrets in many places with many names (Tencent ``txSecret``/``txTime``, Aliyun
``auth_key``, Wangsu ``wsSecret``/``wsTime``, ``sign``, ``Expires``, ``token``…), so no list of
parameter names is kept. The rule, applied by :func:`mask_url`:

- every query value becomes ``***``; the names stay (``?txSecret=***&txTime=***``), a bare item
  without ``=`` is masked whole, an empty value stays empty;
- userinfo becomes ``***@`` (``rtsp://***@host/…``): everything before the last ``@`` of the part
  before the query, so a password holding an unencoded ``/`` does not leak either;
- a fragment becomes ``#***``;
- in ``rtmp*://host/app/KEY`` the last path element (the stream key) becomes ``***``;
- a path element that is a signature token becomes ``***``: 32+ hex digits (an MD5/SHA hash: Aliyun
  type B/C and Tencent type B/C put ``/<hash>/<time>/`` or ``/<time>/<hash>/`` in the path), a JWT, or
  a base64url run of 24+ characters mixing upper case, lower case and digits; a time stamp beside such
  a token (8 hex digits, 10 digits, or ``YYYYMMDDHHMM``) goes with it. Ordinary names, dates, numbers
  and file names (``seg-00042.ts``) stay.

:func:`mask_text` applies it to every ``scheme://…`` URL inside free text (FFmpeg and PyAV errors
quote the URL they opened; HLS segment URLs carry their own ``auth_key`` that the stream URL never
had), and masks query-like ``?name=value&…`` runs outside URLs too. Both are pure and idempotent:
masking masked text changes nothing. The real URL is kept for connecting; this is for display
only. :class:`MaskingFilter` applies :func:`mask_text` to every formatted log record.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from types import TracebackType

MASK = "***"

_RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# A URL inside text: a scheme, "://", then anything up to white space or a quote/bracket that ends it.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_TRAILING = ".,;:!?)]}"  # punctuation that ends a sentence rather than the URL
# A query without a URL around it ("fname = key?txSecret=…&txTime=…"): values up to a separator.
_QUERY_IN_TEXT = re.compile(r"(?<=[?&])([A-Za-z0-9_.~%+-]+)=([^\s'\"<>`&#]*[^\s'\"<>`&#.,;:!?)\]}])")


_HASH = re.compile(r"[0-9a-fA-F]{32,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_B64 = re.compile(r"(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{24,}")
_STAMP = re.compile(r"[0-9a-fA-F]{8}|[0-9]{10}|[0-9]{12,14}")


def _is_token(segment: str) -> bool:
    return any(rx.fullmatch(segment) for rx in (_HASH, _JWT, _B64))


def _mask_path(path: str) -> str:
    """Signature tokens in a URL path (and the time stamps beside them) masked; see the module docstring."""
    segs = path.split("/")
    tokens = [_is_token(s) for s in segs]
    if not any(tokens):
        return path
    out = []
    for i, seg in enumerate(segs):
        beside = (i > 0 and tokens[i - 1]) or (i + 1 < len(segs) and tokens[i + 1])
        out.append(MASK if tokens[i] or (beside and _STAMP.fullmatch(seg)) else seg)
    return "/".join(out)


def _mask_query(query: str) -> str:
    items = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        if eq:
            items.append(f"{name}={MASK}" if value else item)
        else:
            items.append(MASK if item else item)
    return "&".join(items)


def mask_url(url: str) -> str:
    """``url`` with its secrets masked (the rule is in the module docstring); names are kept.

    >>> mask_url("rtmp://bob:hunter2@host/live/abc?txSecret=s3cret&txTime=67AB#x")
    'rtmp://***@host/live/***?txSecret=***&txTime=***#***'
    >>> mask_url("/videos/show.mp4")  # a local path: nothing to hide
    '/videos/show.mp4'
    """
    m = _SCHEME.match(url)
    if m is None or len(m.group(1)) == 1:  # a local path (or a Windows drive letter)
        return url
    scheme, rest = m.group(1), url[m.end() :]
    rest, hash_, fragment = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    if rest.startswith("//"):
        authority = rest[2:]
        if "@" in authority:
            authority = MASK + authority[authority.rindex("@") :]
        host, slash, path = authority.partition("/")
        if scheme.lower() in _RTMP_SCHEMES:  # rtmp://host/app/STREAM_KEY: the last element is the key
            segs = path.split("/")
            if len(segs) >= 2 and segs[-1]:
                segs[-1] = MASK
                path = "/".join(segs)
        rest = f"//{host}{slash}{_mask_path(path)}"
    out = f"{scheme}:{rest}"
    if qmark:
        out += "?" + _mask_query(query)
    if hash_:
        out += "#" + (MASK if fragment else "")
    return out


def _mask_match(m: re.Match[str]) -> str:
    token = m.group(0)
    core = token.rstrip(_TRAILING)
    return mask_url(core) + token[len(core) :]


def mask_text(text: str) -> str:
    """``text`` with every URL in it masked by :func:`mask_url`, and any other ``?name=value&…`` too.

    >>> mask_text("[Errno 5] Input/output error: 'rtmp://h/live/key?txSecret=S1&txTime=67'.")
    "[Errno 5] Input/output error: 'rtmp://h/live/***?txSecret=***&txTime=***'."
    """
    if "?" not in text and "://" not in text:
        return text  # nothing to mask (most log lines)
    text = _URL_IN_TEXT.sub(_mask_match, text)
    return _QUERY_IN_TEXT.sub(lambda m: f"{m.group(1)}={MASK}", text)


class MaskingFilter(logging.Filter):
    """A handler filter: URLs in a record's message, traceback and stack text are masked.

    Install it on handlers (a logger's filter does not see records from child loggers): every
    record that a handler writes then goes through :func:`mask_text`, PyAV/FFmpeg lines
    (``libav.*`` loggers) included, whatever the call site passed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    """Put a :class:`MaskingFilter` on every handler of ``logger`` (default: the root logger), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


def _print_masked(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(mask_text("".join(traceback.format_exception(kind, value, tb))))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
        name = args.thread.name if args.thread is not None else "?"
        sys.stderr.write(f"Exception in thread {name}:\n")
        _print_masked(args.exc_type, args.exc_value, args.exc_traceback)


def install_uncaught_masking() -> None:
    """Tracebacks of uncaught exceptions (main thread and threads) are printed with their URLs masked:
    a library error that escapes quotes the URL it failed on."""
    sys.excepthook = _print_masked
    threading.excepthook = _thread_hook


__all__ = ["MASK", "MaskingFilter", "install_log_masking", "install_uncaught_masking", "mask_text", "mask_url"]
