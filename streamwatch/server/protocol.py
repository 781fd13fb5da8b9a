"""Client → server messages of protocol v1 (see PROTOCOL.md): parsed and validated into typed records.

Pure: text in, a record or a :class:`ProtocolError` (with the error code sent back) out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from streamwatch.events.model import ReviewAction, Vote
from streamwatch.server.auth import CHANNELS

VERSION = 1


class ProtocolError(Exception):
    """A client message that cannot be accepted; ``code`` goes into the ``error`` frame."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True, slots=True)
class Subscribe:
    channels: tuple[str, ...]
    streams: tuple[str, ...] | None
    since: int | None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    id: int
    action: ReviewAction
    note: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Act:
    """A moderator confirms the action (cut, warn, …) an alert's rule waits to run."""

    alert: int
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class SwitchActions:
    """An admin switches a show's actions at run time (``on``, ``dry_run``, ``off``) until the daemon restarts."""

    stream: str
    actions: str
    ref: str | None = None


ACTION_SWITCHES = ("on", "dry_run", "off")


@dataclass(frozen=True, slots=True)
class SubmitMsg:
    stream: str
    image: str  # base64, validated by server.submit
    text: str
    user: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class AskMsg:
    stream: str
    question: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class SwitchModel:
    role: str  # compliance | reply | qa
    model: str  # registry id
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackMsg:
    reply: int  # the reply event's id
    vote: Vote
    user: str  # the voter, when a relay votes for a viewer
    note: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class AddStream:
    stream: dict[str, Any]  # the stream object, validated by server.control (like a config [[streams]] entry)
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RemoveStream:
    stream: str  # stream id
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class ListStreams:
    ref: str | None = None


MODEL_ROLES = ("compliance", "reply", "qa", "summary")

ClientMessage = (
    Subscribe | Ack | Act | SwitchActions | SubmitMsg | AskMsg | Ping | SwitchModel | FeedbackMsg | AddStream | RemoveStream | ListStreams
)


def _str(d: dict[str, Any], key: str, ref: str | None, *, required: bool = True, max_len: int = 1000) -> str:
    value = d.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError("bad_field", f"{key!r} must be a non-empty string", ref)
    if len(value) > max_len:
        raise ProtocolError("bad_field", f"{key!r} is longer than {max_len} characters", ref)
    return value


def _ref(d: dict[str, Any]) -> str | None:
    ref = d.get("ref")
    if ref is None:
        return None
    if isinstance(ref, str | int) and not isinstance(ref, bool) and len(str(ref)) <= 100:
        return str(ref)
    raise ProtocolError("bad_field", "'ref' must be a string or integer (≤100 chars)")


def loads(text: str | bytes) -> dict[str, Any]:
    """The JSON object of a text frame (``bad_frame``/``bad_json`` otherwise)."""
    if isinstance(text, bytes):
        raise ProtocolError("bad_frame", "send JSON text frames, not binary")
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_json", f"not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ProtocolError("bad_json", "a message must be a JSON object")
    return d


def parse(text: str | bytes | dict[str, Any]) -> ClientMessage:
    """A typed client message from a frame's text (or its already-decoded object)."""
    d = text if isinstance(text, dict) else loads(text)
    ref = _ref(d)
    kind = d.get("type")
    if kind == "subscribe":
        return _subscribe(d, ref)
    if kind == "ack":
        eid = d.get("id")
        if not isinstance(eid, int) or isinstance(eid, bool) or eid <= 0:
            raise ProtocolError("bad_field", "'id' must be a positive integer (the alert id)", ref)
        try:
            action = ReviewAction(d.get("action"))
        except ValueError as e:
            raise ProtocolError("bad_field", "'action' must be 'confirm' or 'dismiss'", ref) from e
        return Ack(eid, action, _str(d, "note", ref, required=False, max_len=2000), ref)
    if kind == "act":
        aid = d.get("alert")
        if not isinstance(aid, int) or isinstance(aid, bool) or aid <= 0:
            raise ProtocolError("bad_field", "'alert' must be a positive integer (the alert id)", ref)
        return Act(aid, ref)
    if kind == "switch_actions":
        value = d.get("actions")
        if value not in ACTION_SWITCHES:
            raise ProtocolError("bad_field", f"'actions' must be one of {', '.join(ACTION_SWITCHES)}", ref)
        return SwitchActions(_str(d, "stream", ref, max_len=64), value, ref)
    if kind == "submit":
        return SubmitMsg(
            _str(d, "stream", ref, max_len=64),
            _str(d, "image", ref, max_len=1 << 40),
            _str(d, "text", ref, required=False, max_len=500),
            _str(d, "user", ref, required=False, max_len=64),
            ref,
        )
    if kind == "ask":
        return AskMsg(_str(d, "stream", ref, max_len=64), _str(d, "question", ref, max_len=1000), ref)
    if kind == "ping":
        return Ping(ref)
    if kind == "feedback":
        rid = d.get("reply")
        if not isinstance(rid, int) or isinstance(rid, bool) or rid <= 0:
            raise ProtocolError("bad_field", "'reply' must be a positive integer (the reply event's id)", ref)
        try:
            vote = Vote(d.get("vote"))
        except ValueError as e:
            raise ProtocolError("bad_field", "'vote' must be 'up', 'down' or 'report'", ref) from e
        return FeedbackMsg(
            rid, vote, _str(d, "user", ref, required=False, max_len=64), _str(d, "note", ref, required=False, max_len=500), ref
        )
    if kind == "switch_model":
        role = d.get("role")
        if role not in MODEL_ROLES:
            raise ProtocolError("bad_field", f"'role' must be one of {', '.join(MODEL_ROLES)}", ref)
        return SwitchModel(role, _str(d, "model", ref, max_len=64), ref)
    if kind == "add_stream":
        stream = d.get("stream")
        if not isinstance(stream, dict):
            raise ProtocolError("bad_request", "'stream' must be an object: {id, source, listen?, every_s?, policy?}", ref)
        return AddStream(stream, ref)
    if kind == "remove_stream":
        return RemoveStream(_str(d, "stream", ref, max_len=64), ref)
    if kind == "list_streams":
        return ListStreams(ref)
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}", ref)


def _subscribe(d: dict[str, Any], ref: str | None) -> Subscribe:
    channels = d.get("channels", list(CHANNELS))
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise ProtocolError("bad_field", "'channels' must be a non-empty list of strings", ref)
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ProtocolError("bad_field", f"unknown channels {unknown}; known: {sorted(CHANNELS)}", ref)
    streams = d.get("streams")
    if streams is not None and (not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)):
        raise ProtocolError("bad_field", "'streams' must be a list of stream ids", ref)
    since = d.get("since")
    if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
        raise ProtocolError("bad_field", "'since' must be a non-negative integer (an event id)", ref)
    return Subscribe(tuple(dict.fromkeys(channels)), tuple(streams) if streams else None, since, ref)


def error_frame(code: str, message: str, ref: str | None = None) -> str:
    out: dict[str, Any] = {"v": VERSION, "type": "error", "code": code, "message": message}
    if ref is not None:
        out["ref"] = ref
    return json.dumps(out, ensure_ascii=False)


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"v": VERSION, "type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))


def batch_frame(texts: list[str]) -> str:
    """Several events in one frame (sent when more than one is waiting for a client)."""
    return '{"v":1,"type":"batch","events":[' + ",".join(texts) + "]}"
