"""What the moderation console (``/console``) reads besides ``/ws``: stream status, the latest analysed
frame per stream, the VLM roles, and the page's own static files.

- ``GET /streams`` → ``{"now": ISO, "streams": [{"id", "state", "since", "for_s", "black", "frozen",
  "offset", "frame": {"offset", "at"} | null}]}`` (moderator, admin).
- ``GET /streams/{id}/frame.jpg`` → the latest analysed frame as JPEG (long side ≤ 640 px), with
  ``X-Frame-Offset`` (seconds) (moderator, admin); 404 before the first analysed frame.
- ``GET /models`` → role chains, breaker states and VLM requests per model and outcome (admin).
- ``GET /static/{name}`` → the console's JS/CSS from the package (no auth: no data in them).

The JPEG is encoded once per analysed frame (cached by identity), so polling consoles cost one
encode per new frame per stream, not one per request. Blocking work runs in an executor.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from websockets.http11 import Response

from streamwatch.config import Role
from streamwatch.events.codec import iso, parse_iso
from streamwatch.server.auth import Principal

if TYPE_CHECKING:
    from streamwatch.analysis.model import AnalyzedFrame
    from streamwatch.server.metrics import Metrics

STREAM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\.(js|css)$")
STATIC_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
READERS = (Role.MODERATOR, Role.ADMIN)

Latest = Callable[[str], "AnalyzedFrame | None"]
ModelsInfo = Callable[[], dict[str, Any]]


@dataclass
class _Encoded:
    frame: object  # the AnalyzedFrame it was made from (compared by identity)
    jpeg: bytes
    offset: float


class ConsoleData:
    """Stream status and latest frames for the console. ``status`` is the server's live dict (from health
    events); ``latest`` gives a stream's last analysed frame (the daemon's), ``models`` the VLM roles."""

    def __init__(
        self,
        streams: set[str],
        status: dict[str, dict[str, Any]],
        offsets: Callable[[str], float],
        latest: Latest | None = None,
        models: ModelsInfo | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.streams = streams
        self.status = status
        self.offsets = offsets
        self.latest = latest
        self.models = models
        self.metrics = metrics
        self._jpegs: dict[str, _Encoded] = {}
        self._lock = threading.Lock()

    def known(self, sid: str) -> bool:
        return sid in self.streams or sid in self.status

    def streams_json(self, now: float | None = None) -> dict[str, Any]:
        """Per stream: state (connecting|live|stalled|reconnecting|stopped|unknown) and since when, the
        black/frozen flags, the stream offset (s) and the latest analysed frame's offset and wall time."""
        now = time.time() if now is None else now
        out = []
        for sid in sorted(self.streams | set(self.status)):
            st = self.status.get(sid, {})
            since = st.get("since")
            frame = self.latest(sid) if self.latest is not None else None
            offset = self.offsets(sid)
            if st.get("state") in ("ended", "stopped") and st.get("offset") is not None:  # the end, not the last sample
                offset = max(offset, float(st["offset"]))
            out.append(
                {
                    "id": sid,
                    "state": st.get("state") or "unknown",
                    "since": since,
                    "for_s": round(max(0.0, now - parse_iso(since)), 1) if since else None,
                    "reason": st.get("reason", ""),
                    "black": bool(st.get("black")),
                    "frozen": bool(st.get("frozen")),
                    "analysis_failing": bool(st.get("analysis_failing")),
                    "storage_failing": bool(st.get("storage_failing")),
                    "overloaded": bool(st.get("overloaded")),
                    "offset": round(offset, 3),
                    "frame": None if frame is None else {"offset": round(frame.analysis.offset, 3), "at": iso(frame.analysis.at)},
                }
            )
        return {"now": iso(now), "streams": out}

    def frame_jpeg(self, sid: str) -> tuple[bytes, float] | None:
        """Blocking: (JPEG, offset) of the stream's latest analysed frame, or None before the first."""
        frame = self.latest(sid) if self.latest is not None else None
        if frame is None:
            return None
        with self._lock:
            cached = self._jpegs.get(sid)
            if cached is not None and cached.frame is frame:
                return cached.jpeg, cached.offset
        from streamwatch.events.alerts import evidence_jpeg

        jpeg, _ = evidence_jpeg(frame.image)
        with self._lock:
            self._jpegs[sid] = _Encoded(frame, jpeg, frame.analysis.offset)
        return jpeg, frame.analysis.offset

    def models_json(self) -> dict[str, Any] | None:
        """Role chains and breaker states (from the daemon) with VLM requests per model and outcome."""
        if self.models is None:
            return None
        info = dict(self.models())
        requests: dict[str, dict[str, int]] = {}
        if self.metrics is not None:
            for metric in self.metrics.vlm_requests.collect():
                for s in metric.samples:
                    if s.name.endswith("_total"):
                        requests.setdefault(s.labels["model"], {})[s.labels["outcome"]] = int(s.value)
        info["requests"] = requests
        return info


def static_file(name: str) -> tuple[bytes, str] | None:
    """A console asset from ``streamwatch/server/static`` by plain name (no paths), or None."""
    m = STATIC_NAME.match(name)
    if m is None:
        return None
    ref = resources.files("streamwatch.server").joinpath(f"static/{name}")
    if not ref.is_file():
        return None
    return ref.read_bytes(), STATIC_TYPES[m.group(1)]


async def handle(
    data: ConsoleData,
    path: str,
    who: Principal | None,
    respond: Callable[..., Response],
    respond_json: Callable[[int, Any], Response],
) -> Response | None:
    """Answer a console route, or None when ``path`` is not one of them."""
    if path.startswith("/static/"):
        found = static_file(path[len("/static/") :])
        return respond(404, "not found") if found is None else respond(200, found[0], found[1])
    if path != "/streams" and not path.startswith("/streams/") and path != "/models":
        return None
    if who is None:
        return respond_json(401, {"error": "token required (Authorization: Bearer … or ?token=…)"})
    if path == "/models":
        if who.role is not Role.ADMIN:
            return respond_json(403, {"error": "models are for admins"})
        info = data.models_json()
        return respond_json(503, {"error": "no VLM tier on this server"}) if info is None else respond_json(200, info)
    if who.role not in READERS:
        return respond_json(403, {"error": "stream status is for moderators and admins"})
    if path == "/streams":
        return respond_json(200, data.streams_json())
    sid, _, rest = path[len("/streams/") :].partition("/")
    if rest != "frame.jpg" or not STREAM_ID.match(sid):
        return respond_json(400, {"error": "use /streams or /streams/{id}/frame.jpg (id: letters, digits, _ . -, ≤ 64)"})
    if not data.known(sid):
        return respond_json(404, {"error": f"no stream {sid!r}"})
    frame = await asyncio.get_running_loop().run_in_executor(None, data.frame_jpeg, sid)
    if frame is None:
        return respond_json(404, {"error": f"stream {sid!r} has no analysed frame yet"})
    return respond(200, frame[0], "image/jpeg", X_Frame_Offset=f"{frame[1]:.3f}")
