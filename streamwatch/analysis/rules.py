"""Policy evaluation: detections and health → alert drafts, with cooldowns. Pure (time passed in).

Cooldown: an alert is keyed by (stream, rule, evidence key). While the same evidence keeps being
seen with gaps shorter than ``cooldown_s`` it is one alert; if it disappears for longer than the
cooldown and comes back, that is a new alert.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from streamwatch.analysis.model import AlertDraft, Detection, FrameAnalysis
from streamwatch.analysis.policy import Policy, RuleSpec
from streamwatch.analysis.text import Match, normalize
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.i18n import Lang

_DEFAULTS: dict[str, object] = {"text": "", "label": "", "payload": "", "confidence": 1.0, "duration": 0.0, "started": "", "min_s": 0}


def _hms(offset: float) -> str:
    s = max(0, int(offset))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Fields(dict[str, object]):
    """Template values; placeholders a trigger does not fill get a neutral value of the right type."""

    def __missing__(self, key: str) -> object:
        return _DEFAULTS.get(key, "")


def _message(rule: RuleSpec, lang: Lang, **values: object) -> str:
    return rule.text(lang).format_map(_Fields(rule=rule.id, **values))


def shown(m: Match) -> str:
    """What a moderator sees for a word-list hit: the list's word, or for a ``re:`` pattern the text it matched
    (never the pattern)."""
    return m.found if m.entry.startswith("re:") else m.entry


def qr_domain(payload: str) -> str | None:
    """Host of a URL-like QR payload (``http(s)://`` or a bare ``domain/path``), else None."""
    text = payload.strip()
    if "://" not in text:
        if " " in text or "." not in text.split("/", 1)[0]:
            return None
        text = "http://" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


def domain_allowed(host: str, allowed: list[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in (a.lower().lstrip(".") for a in allowed))


def _vlm(fa: FrameAnalysis) -> tuple[Detection, ...]:
    """Answers of the compliance model (source ``vlm:<model>``), for ``detector = "vlm"`` and text rules."""
    return tuple(d for d in fa.detections if d.source.startswith("vlm:"))


def _kind(d: Detection, local: str) -> str:
    """Evidence kind: the local analyzer's, or ``vlm:<model>`` for the compliance model's answers."""
    return d.source if d.source.startswith("vlm:") else local


@dataclass
class _Period:
    since: float  # wall time the condition began
    offset: float  # stream offset it began at (the alert's offset)
    alerted: bool = False
    closed: float | None = None  # the length of a period already over when reported (a monitoring gap): checked once


@dataclass
class RuleEngine:
    """Evaluates a policy on frame analyses and health; keeps cooldown and health state per stream."""

    policy: Policy
    language: Lang = "zh"  # of alert texts written in both languages
    _last_seen: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _periods: dict[tuple[str, str], _Period] = field(default_factory=dict)

    def replace_policy(self, policy: Policy) -> None:
        """Hot reload: new rules, cooldown state kept for rules that still exist."""
        ids = {r.id for r in policy.rules}
        self._last_seen = {k: v for k, v in self._last_seen.items() if k[1] in ids}
        self.policy = policy

    def export_cooldowns(self, stream: str) -> dict[str, float]:
        """Cooldown state of ``stream`` for another engine to continue (a cluster takeover).

        Key: ``json.dumps([rule id, evidence key])`` (any characters are safe); value: when that
        evidence was last seen, in the clock frame rules are evaluated on, the show time
        (``FrameAnalysis.offset``, seconds), which a resumed session keeps.
        """
        return {json.dumps([rule, key]): at for (s, rule, key), at in self._last_seen.items() if s == stream}

    def import_cooldowns(self, stream: str, cooldowns: Mapping[str, float]) -> None:
        """Continue the cooldowns of ``stream`` exported by :meth:`export_cooldowns` (unreadable
        keys are skipped; a later time already known here wins)."""
        for enc, at in cooldowns.items():
            try:
                rule, key = json.loads(enc)
            except (ValueError, TypeError):
                continue
            if not isinstance(rule, str) or not isinstance(key, str):
                continue
            k = (stream, rule, key)
            self._last_seen[k] = max(float(at), self._last_seen.get(k, float("-inf")))

    def _fresh(self, stream: str, rule: RuleSpec, key: str, now: float) -> bool:
        k = (stream, rule.id, key)
        last = self._last_seen.get(k)
        self._last_seen[k] = now
        return last is None or now - last > rule.cooldown_s

    # --- frames --------------------------------------------------------------------------------

    def evaluate(self, fa: FrameAnalysis) -> list[AlertDraft]:
        out: list[AlertDraft] = []
        for rule in self.policy.rules:
            w = rule.when
            if w.detector is not None:
                drafts = self._detector(rule, fa.by(w.detector) if w.detector != "vlm" else _vlm(fa))
            elif w.label is not None:
                drafts = self._label(rule, fa.by("encoder"))
            elif w.ocr is not None:
                drafts = self._ocr(rule, fa.by("ocr") + tuple(d for d in _vlm(fa) if d.text))
            elif w.qr is not None:
                drafts = self._qr(rule, fa.by("qr"))
            else:
                continue
            out.extend(d for d in drafts if self._fresh(fa.stream, rule, d.key, fa.offset))
        return out

    def _detector(self, rule: RuleSpec, dets: tuple[Detection, ...]) -> list[AlertDraft]:
        w = rule.when
        best: dict[str, Detection] = {}
        for d in dets:
            wanted = d.confidence >= w.min_confidence and (not w.labels or d.label in w.labels)
            if wanted and (d.label not in best or d.confidence > best[d.label].confidence):
                best[d.label] = d
        return [
            AlertDraft(
                rule.id,
                rule.severity,
                _message(rule, self.language, label=d.label, confidence=d.confidence),
                d.confidence,
                _kind(d, "detection"),
                d.label,
                bbox=d.bbox,
                labels=(d.label,),
                escalate=rule.escalate,
            )
            for d in best.values()
        ]

    def _label(self, rule: RuleSpec, dets: tuple[Detection, ...]) -> list[AlertDraft]:
        w = rule.when
        floor = w.min_score if w.min_score is not None else -1.0
        best = max((d for d in dets if d.label == w.label and d.confidence >= floor), key=lambda d: d.confidence, default=None)
        if best is None:
            return []
        return [
            AlertDraft(
                rule.id,
                rule.severity,
                _message(rule, self.language, label=best.label, confidence=best.confidence, text=best.text or ""),
                best.confidence,
                "encoder",
                best.label,
                labels=(best.label,),
                escalate=rule.escalate,
            )
        ]

    def _ocr(self, rule: RuleSpec, lines: tuple[Detection, ...]) -> list[AlertDraft]:
        w = rule.when
        words = self.policy.lists[w.ocr or ""]
        allow = self.policy.lists.get(w.allow) if w.allow else None
        usable = [d for d in lines if d.text and d.confidence >= w.min_confidence]
        if not usable:
            return []
        found: dict[str, AlertDraft] = {}
        # each line alone (for its box), then all lines joined (text split across lines)
        candidates = [(d.text or "", d) for d in usable] + [(" ".join(d.text or "" for d in usable), None)]
        for text, det in candidates:
            norm = normalize(text, words.t2s)
            hits = [m for m in words.find(norm) if allow is None or not (allow.matches(m.found) or allow.matches(m.entry))]
            if not hits or hits[0].entry in found:  # one alert per line, keyed on its first matching entry
                continue
            key = hits[0].entry
            conf = det.confidence if det else min(d.confidence for d in usable)
            labels = tuple(dict.fromkeys(shown(m) for m in hits))
            found[key] = AlertDraft(
                rule.id,
                rule.severity,
                _message(rule, self.language, text=text, label=labels[0], confidence=conf),
                conf,
                _kind(det, "ocr") if det else _kind(usable[0], "ocr"),
                key,
                text=text,
                bbox=det.bbox if det else None,
                labels=labels,
                escalate=rule.escalate,
            )
        return list(found.values())

    def _qr(self, rule: RuleSpec, codes: tuple[Detection, ...]) -> list[AlertDraft]:
        w = rule.when
        out = []
        for d in codes:
            payload = d.text or ""
            if w.qr == "offsite":
                host = qr_domain(payload)
                if host is not None and domain_allowed(host, w.allow_domains):
                    continue
            out.append(
                AlertDraft(
                    rule.id,
                    rule.severity,
                    _message(rule, self.language, payload=payload, text=payload, confidence=d.confidence),
                    d.confidence,
                    "qr",
                    payload,
                    text=payload,
                    bbox=d.bbox,
                    labels=("qr",),
                    escalate=rule.escalate,
                )
            )
        return out

    # --- health --------------------------------------------------------------------------------

    def on_health(self, ev: HealthEvent) -> None:
        """Track open black / frozen / outage / no-video periods from health events."""
        if ev.kind in (HealthKind.BLACK, HealthKind.FROZEN, HealthKind.STORAGE, HealthKind.OVERLOADED):
            key = (ev.stream, ev.kind.value)
            if ev.active:
                self._periods.setdefault(key, _Period(ev.at, ev.offset))
            else:
                self._periods.pop(key, None)
        elif ev.kind is HealthKind.STATE and ev.state is not None:
            key = (ev.stream, "outage")
            if ev.state in (StreamState.STALLED, StreamState.RECONNECTING) and ev.caused_by is None:
                self._periods.setdefault(key, _Period(ev.at, ev.offset))
            elif ev.caused_by is not None or ev.state in (StreamState.LIVE, StreamState.STOPPED, StreamState.ENDED, StreamState.NO_VIDEO):
                # (a cut's outage is on purpose: no "stream down" alert)
                self._periods.pop(key, None)
            if ev.state is StreamState.NO_VIDEO:  # the source is up with audio only: its own (low) notice
                self._periods.setdefault((ev.stream, "no_video"), _Period(ev.at, ev.offset))
            else:
                self._periods.pop((ev.stream, "no_video"), None)
        elif ev.kind is HealthKind.MONITORING_GAP:
            self._periods[(ev.stream, "monitoring_gap")] = _Period(ev.at, ev.offset, closed=ev.duration_s or 0.0)

    def tick(self, stream: str, now: float, offset: float | None = None) -> list[tuple[float, AlertDraft]]:
        """(offset where it began, alert) for health conditions of ``stream`` that have now lasted ``min_s``.

        Black and frozen pictures are measured in stream time (``offset``, the latest sample), so a
        recording analysed faster than real time is judged like the live show; outages, when no
        samples arrive, in wall time (``now``), and monitoring gaps (already over when the daemon
        is back) by their length. Messages may name ``{started}`` (show time the condition began,
        HH:MM:SS) and ``{min_s}`` (the threshold: the condition has lasted at least that long).
        """
        out = []
        for rule in self.policy.rules:
            cond = rule.when.health
            if cond is None:
                continue
            period = self._periods.get((stream, cond))
            if period is None or period.alerted:
                continue
            # no samples arrive, or not about them
            wall = cond in ("outage", "monitoring_gap", "storage", "no_video", "overloaded") or offset is None
            lasted = now - period.since if wall or offset is None else offset - period.offset
            if period.closed is not None:
                lasted = period.closed
            if lasted >= rule.when.min_s:
                period.alerted = True
                fields = {"started": _hms(period.offset), "min_s": f"{rule.when.min_s:g}"}
                draft = AlertDraft(
                    rule.id,
                    rule.severity,
                    _message(rule, self.language, duration=round(lasted, 1), label=cond, **fields),
                    1.0,
                    "health",
                    cond,
                    labels=(cond,),
                    escalate=rule.escalate,
                )
                out.append((period.offset, draft))
        for key in [k for k, p in self._periods.items() if k[0] == stream and p.closed is not None]:
            del self._periods[key]  # checked once against every rule
        return out


def text_is_clean(policy: Policy, stream: str, text: str) -> bool:
    """No rule of ``policy`` fires on ``text`` read as on-screen text: the output check of persona replies
    and summary posts."""
    probe = FrameAnalysis(stream, 0.0, 0.0, 0.0, (Detection("ocr", "text", 1.0, None, text),), 0, 0)
    return not RuleEngine(policy).evaluate(probe)
