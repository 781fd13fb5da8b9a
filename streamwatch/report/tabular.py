"""JSON and CSV forms of the report (schema: report/SCHEMA.md). Pure."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from streamwatch.events.codec import iso, to_dict
from streamwatch.report.build import Report, hms

SCHEMA = "streamwatch.report/1"
CSV_COLUMNS = ("id", "type", "stream", "at", "offset_s", "offset", "severity", "rule", "text", "confidence", "review", "details")


def report_dict(r: Report) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "stream": r.stream,
        "from": iso(r.first_at) if r.events else None,
        "to": iso(r.last_at) if r.events else None,
        "summary": {
            "duration_s": round(r.duration_s, 3),
            "events": len(r.events),
            "alerts": len(r.alerts),
            "alerts_by_severity": r.by_severity,
            "alerts_by_rule": r.by_rule,
            "reviewed": r.reviewed,
            "pending": r.pending,
            "outages": len(r.outages),
            "outage_s": round(r.outage_s, 3),
            "monitoring_gaps": len(r.gaps),
            "monitoring_gap_s": round(sum(p.duration or 0.0 for p in r.gaps), 3),  # not watched: gaps and missing HLS segments
            "end": r.ended.state.value if r.ended is not None and r.ended.state is not None else None,
            "replies": r.replies,
            "rejected": r.rejected,
            "answers": r.answers,
            "scenes": len(r.scenes),
            "model_switches": len(r.switches),
            "model_failures": sum(1 for e in r.model_health if e.active),
            "by_model": r.models,
            "reply_feedback": r.feedback,
            "actions": len(r.actions),
            "cuts": sum(1 for p in r.periods if p.kind == "cut"),
        },
        "periods": [
            {
                "kind": p.kind,
                "start_s": round(p.start, 3),
                "start": hms(p.start),
                "duration_s": p.duration,
                "open": p.open,
                "detail": p.detail,
            }
            for p in r.periods
        ],
        "alerts": [
            {
                **to_dict(row.alert),
                "offset_hms": hms(row.alert.offset),
                "review": row.state,
                "reviewed_by": row.review.by if row.review else None,
            }
            for row in r.alerts
        ],
        "actions": [{**to_dict(a), "offset_hms": hms(a.offset)} for a in r.actions],
        "scenes": [
            {"offset_s": round(sc.offset, 3), "offset_hms": hms(sc.offset), "tags": list(sc.tags), "model": sc.model} for sc in r.scenes
        ],
        "events": [to_dict(e) for e in r.events],
    }


def render_json(r: Report) -> str:
    return json.dumps(report_dict(r), ensure_ascii=False, indent=1)


def render_csv(r: Report) -> str:
    review = {row.alert.id: row.state for row in r.alerts}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for e in r.events:
        d = to_dict(e)
        common = {"id", "type", "stream", "at", "offset", "severity", "rule", "message", "text", "confidence"}
        text = d.get("message") or d.get("text") or d.get("reason") or d.get("state") or d.get("kind") or ""
        details = {k: v for k, v in d.items() if k not in common}
        w.writerow(
            [
                e.id,
                e.TYPE,
                e.stream,
                d["at"],
                round(e.offset, 3),
                hms(e.offset),
                d.get("severity", ""),
                d.get("rule", ""),
                text,
                d.get("confidence", ""),
                review.get(e.id, ""),
                json.dumps(details, ensure_ascii=False, separators=(",", ":")) if details else "",
            ]
        )
    return buf.getvalue()
