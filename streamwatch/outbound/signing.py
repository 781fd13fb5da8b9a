"""Signatures: webhook deliveries and token-free evidence links. Pure functions, no I/O (but :func:`evidence_key`).

A delivery carries ``X-Streamwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``;
a receiver recomputes it over the raw body and rejects an old ``t`` (a replay). An evidence link is
``/evidence/<path>?exp=<unix seconds>&sig=<hex HMAC-SHA256(key, "<path>\\n<exp>")>``, checked by the
daemon's HTTP server with a key kept in ``data_dir/evidence.key``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import quote

SIGNATURE_HEADER = "X-Streamwatch-Signature"
EVIDENCE_PREFIX = "/evidence/"


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance_s: float = 300.0) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within ``tolerance_s`` of ``now``."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        ts = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - ts) > tolerance_s:
        return False
    expected = signature(secret, ts, body).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


def _evidence_mac(key: bytes, path: str, expires: int) -> str:
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def evidence_link(key: bytes, path: str, expires: int) -> str:
    """Site-relative link to the evidence file ``path`` (relative to the evidence folder) until ``expires``."""
    return f"{EVIDENCE_PREFIX}{quote(path)}?exp={expires}&sig={_evidence_mac(key, path, expires)}"


def evidence_allowed(key: bytes, path: str, exp: str, sig: str, now: float) -> bool:
    """Whether a request for ``path`` with these query values may be served now."""
    if not exp.isdigit() or int(exp) < now:
        return False
    return hmac.compare_digest(_evidence_mac(key, path, int(exp)), sig)


def evidence_key(data_dir: Path) -> bytes:
    """The daemon's evidence-link key (``data_dir/evidence.key``, created once, owner-only)."""
    file = Path(data_dir) / "evidence.key"
    try:
        return bytes.fromhex(file.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, file)  # first writer wins: two processes on one data_dir agree on the key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(file.read_text().strip())
