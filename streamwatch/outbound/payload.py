"""What a webhook endpoint is sent: which events it wants (:class:`Selector`) and the JSON object of
each (:func:`payload`). Pure values in, values out; the policy lookup and the evidence link are
passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamwatch.analysis.policy import RuleSpec
from streamwatch.events.codec import FRAMES_PREFIX
from streamwatch.events.model import Severity
from streamwatch.outbound.config import WebhookConfig

_RANK = {s.value: s.rank for s in Severity}

# fields of the wire event that the payload names differently or adds to
PAYLOAD_FIELDS = (
    "id",
    "type",
    "stream",
    "rule",
    "category",
    "severity",
    "suggestion",
    "score",
    "offset",
    "at",
    "message",
    "model",
    "evidence_url",
)


@dataclass(frozen=True, slots=True)
class Selector:
    """An endpoint's filter: event types and streams (cheap, before decoding), then alert rules and severity."""

    types: frozenset[str]
    streams: frozenset[str] | None
    rules: frozenset[str] | None
    min_rank: int | None

    @classmethod
    def of(cls, cfg: WebhookConfig) -> Selector:
        return cls(
            frozenset(cfg.types),
            frozenset(cfg.streams) or None,
            frozenset(cfg.rules) or None,
            cfg.min_severity.rank if cfg.min_severity is not None else None,
        )

    def may_want(self, type_: str, stream: str) -> bool:
        return type_ in self.types and (self.streams is None or stream in self.streams)

    def wants(self, event: dict[str, Any]) -> bool:
        """The full check on a wire event (``rules`` and ``min_severity`` apply to alerts only)."""
        if not self.may_want(str(event.get("type")), str(event.get("stream"))):
            return False
        if event.get("type") != "alert":
            return True
        if self.rules is not None and event.get("rule") not in self.rules:
            return False
        return self.min_rank is None or _RANK.get(str(event.get("severity")), -1) >= self.min_rank


def suggestion_for(severity: str | None, explicit: str | None = None, action: str | None = None) -> str:
    """block / review / pass: the rule's own, else ``block`` for a rule that cuts the stream or is
    critical/high, ``review`` otherwise (medium, low, or no severity)."""
    if explicit:
        return explicit
    if action == "cut" or severity in ("critical", "high"):
        return "block"
    return "review"


def category_of(rule: RuleSpec | None) -> str | None:
    """The rule's category, else what triggers it: the detector, word list, ``qr``, the label or the health condition."""
    if rule is None:
        return None
    if rule.category:
        return rule.category
    w = rule.when
    if w.detector is not None:
        return w.detector
    if w.ocr is not None:
        return w.ocr
    if w.qr is not None:
        return "qr"
    return w.label or w.health


def _model(event: dict[str, Any]) -> str | None:
    if event.get("model"):
        return str(event["model"])
    kind = (event.get("evidence") or {}).get("kind")
    if not kind:
        return None
    return str(kind).removeprefix("vlm:")


def _message(event: dict[str, Any]) -> str:
    for key in ("message", "text", "reason"):
        if event.get(key):
            return str(event[key])
    parts = [str(event[k]) for k in ("kind", "state") if event.get(k)]
    return " ".join(parts)


def payload(event: dict[str, Any], rule: RuleSpec | None, evidence_url: Callable[[str], str] | None) -> dict[str, Any]:
    """The delivery object of one wire event: the integration fields first, the whole event under ``event``.

    ``rule`` is the alert's rule in the stream's policy (None when unknown: the policy changed);
    ``evidence_url`` turns an evidence path (relative to the evidence folder) into a signed link.
    """
    evidence = event.get("evidence") or {}
    frame = evidence.get("frame") or event.get("frame") or event.get("image")
    url = None
    if frame and evidence_url is not None and str(frame).startswith(FRAMES_PREFIX):
        url = evidence_url(str(frame)[len(FRAMES_PREFIX) :])
    severity = event.get("severity")
    out: dict[str, Any] = {
        "id": event.get("id"),
        "type": event.get("type"),
        "stream": event.get("stream"),
        "rule": event.get("rule"),
        "category": category_of(rule) if event.get("type") == "alert" else event.get("kind"),
        "severity": severity,
        "suggestion": suggestion_for(severity, rule.suggestion if rule else None, getattr(rule, "action", None))
        if event.get("type") == "alert"
        else None,
        "score": event.get("confidence"),
        "offset": event.get("offset"),
        "at": event.get("at"),
        "message": _message(event),
        "model": _model(event),
        "evidence_url": url,
        "event": event,
    }
    return out
