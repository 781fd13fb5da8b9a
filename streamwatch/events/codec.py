"""JSON form of events (protocol v1): pure conversion, no I/O.

``encode_body`` gives the JSON object text *without* ``id`` (what the store keeps); ``with_id``
splices the id in front, so each event is serialised exactly once however many clients get it.
Evidence paths become URLs under ``/frames/`` on the wire and back on decode.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import UTC, datetime
from typing import Any

from streamwatch.errors import EventsError
from streamwatch.events.model import EVENT_TYPES, Event, Evidence

FRAMES_PREFIX = "/frames/"
_PATH_FIELDS = frozenset({"frame", "crop", "image"})


def iso(ts: float) -> str:
    """Epoch seconds → ISO 8601 UTC with milliseconds (``2026-11-21T10:00:00.123Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as e:
        raise EventsError(f"not an ISO 8601 time: {text!r}") from e


def _plain(name: str, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Evidence):
        return {
            f.name: _plain(f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if getattr(value, f.name) not in (None, ())
        }
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str) and name in _PATH_FIELDS:
        return FRAMES_PREFIX + value
    if isinstance(value, float):
        return round(value, 3)
    return value


def to_dict(event: Event) -> dict[str, Any]:
    """Wire dict of an event (with ``id`` when it has one)."""
    out: dict[str, Any] = {"id": event.id} if event.id else {}
    out["type"] = event.TYPE
    for f in dataclasses.fields(event):
        if f.name == "id":
            continue
        value = getattr(event, f.name)
        if value is None:
            continue
        out[f.name] = iso(value) if f.name in ("at", "received_at") else _plain(f.name, value)
    return out


def encode_body(event: Event) -> str:
    """JSON text of the event without its id (compact, UTF-8 kept as is)."""
    body = to_dict(dataclasses.replace(event, id=0))
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def with_id(event_id: int, body: str) -> str:
    return f'{{"id":{event_id},{body[1:]}'


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _convert(name: str, hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(name, inner[0], value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if hint is Evidence:
        if not isinstance(value, dict):
            raise EventsError(f"{name}: expected an object")
        hints = _hints(Evidence)
        return Evidence(**{k: _convert(k, hints[k], v) for k, v in value.items() if k in hints})
    if origin is tuple:
        return tuple(value)
    if isinstance(value, str) and name in _PATH_FIELDS and value.startswith(FRAMES_PREFIX):
        return value[len(FRAMES_PREFIX) :]
    if hint is float and isinstance(value, int | float):
        return float(value)
    return value


def from_dict(data: dict[str, Any]) -> Event:
    """Event from its wire dict (inverse of :func:`to_dict`)."""
    cls = EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        raise EventsError(f"unknown event type {data.get('type')!r}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("at", "received_at") and isinstance(value, str):
                kwargs[f.name] = parse_iso(value)
            else:
                kwargs[f.name] = _convert(f.name, hints[f.name], value)
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise EventsError(f"bad {cls.TYPE} event: {e}") from e


def decode(text: str) -> Event:
    return from_dict(json.loads(text))
