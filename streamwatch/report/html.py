"""Self-contained HTML report: summary, inline-SVG timeline, alert table with embedded thumbnails. Pure."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape

from streamwatch.events.codec import iso
from streamwatch.report.build import Report, hms

SEVERITY_COLORS = {"low": "#4c8bf5", "medium": "#f2b01e", "high": "#f26b1d", "critical": "#d7263d"}
PERIOD_COLORS = {
    "outage": "#d7263d",
    "black": "#222222",
    "frozen": "#3aa0c8",
    "monitoring_gap": "#8e44ad",
    "segment_missing": "#b197fc",
    "analysis_failing": "#e67700",
}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px}
.muted{color:#666} .cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e5e5e5;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
img.thumb{max-width:160px;max-height:90px;border-radius:4px}
.state-pending{color:#b36b00}.state-confirmed{color:#d7263d}.state-dismissed{color:#666}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def _data_uri(data: bytes, path: str) -> str:
    mime = "image/png" if path.endswith(".png") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def timeline_svg(report: Report, width: int = 1000) -> str:
    """Alerts (dots by severity) and health periods (bars) over stream time."""
    span = max(report.duration_s, 1.0)
    left, right, lane = 70, 20, 26
    plot = width - left - right
    height = 30 + lane * 2 + 24

    def x(offset: float) -> float:
        return left + plot * min(max(offset, 0.0), span) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="timeline">']
    parts.append(f'<text x="4" y="{30 + lane * 0.6:.0f}">health</text><text x="4" y="{30 + lane * 1.6:.0f}">alerts</text>')
    for i in range(2):
        parts.append(f'<rect x="{left}" y="{24 + lane * i}" width="{plot}" height="{lane - 6}" fill="#f0f0f0"/>')
    for p in report.periods:
        end = p.end if p.end is not None else span
        w = max(x(end) - x(p.start), 2.0)
        title = f"{p.kind} at {hms(p.start)}: {p.length}"
        parts.append(
            f'<rect x="{x(p.start):.1f}" y="24" width="{w:.1f}" height="{lane - 6}" fill="{PERIOD_COLORS.get(p.kind, "#888")}"'
            f' opacity="0.8"><title>{escape(title)}</title></rect>'
        )
    for row in report.alerts:
        a = row.alert
        title = f"{hms(a.offset)} {a.severity.value} {a.rule}: {a.message}"
        parts.append(
            f'<circle cx="{x(a.offset):.1f}" cy="{24 + lane + (lane - 6) / 2:.1f}" r="5" fill="{SEVERITY_COLORS[a.severity.value]}"'
            f' stroke="#fff"><title>{escape(title)}</title></circle>'
        )
    ticks = 6
    for i in range(ticks + 1):
        off = span * i / ticks
        parts.append(f'<text x="{x(off):.1f}" y="{height - 6}" text-anchor="middle">{hms(off)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, images: Mapping[str, bytes], extra: str = "") -> str:
    """The report as one HTML document; ``images`` maps evidence paths to bytes to embed; ``extra`` is an
    HTML section appended at the end (the post-ready summary)."""
    r = report
    cards = [
        ("duration", hms(r.duration_s)),
        ("alerts", str(len(r.alerts))),
        ("reviewed", str(r.reviewed)),
        ("pending", str(r.pending)),
        ("outages", f"{len(r.outages)} ({r.outage_s:.0f}s{', open' if any(p.open for p in r.outages) else ''})"),
        ("not watched", f"{len(r.gaps)} ({sum(p.duration or 0.0 for p in r.gaps):.0f}s)"),
        ("end", r.ended.state.value if r.ended is not None and r.ended.state is not None else "open"),
        ("replies", str(r.replies)),
        ("rejected", str(r.rejected)),
    ]
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>streamwatch report — {escape(r.stream)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Stream report: {escape(r.stream)}</h1>",
        f"<div class='muted'>{escape(iso(r.first_at))} → {escape(iso(r.last_at))} · {len(r.events)} events</div>",
        "<h2>Summary</h2><div class='cards'>",
        *(f"<div class='card'><span class='muted'>{k}</span><b>{escape(v)}</b></div>" for k, v in cards),
        "</div><h2>Alerts by severity and rule</h2><div class='cards'>",
        *(
            f"<div class='card'><span class='sev' style='background:{SEVERITY_COLORS[s]}'>{s}</span><b>{n}</b></div>"
            for s, n in r.by_severity.items()
        ),
        "</div><table><tr><th>rule</th><th>alerts</th></tr>",
        *(f"<tr><td>{escape(rule)}</td><td class='num'>{n}</td></tr>" for rule, n in r.by_rule.items()),
        "</table><h2>Timeline</h2>",
        timeline_svg(r),
        "<h2>Health periods</h2><table><tr><th>offset</th><th>kind</th><th>duration</th><th>detail</th></tr>",
        *(
            f"<tr><td>{hms(p.start)}</td><td>{p.kind}</td><td class='num'>{p.length}</td><td>{escape(p.detail)}</td></tr>"
            for p in r.periods
        ),
        "</table><h2>Alerts</h2><table id='alerts'><tr><th>#</th><th>wall time (UTC)</th><th>offset</th><th>rule</th>"
        "<th>severity</th><th>confidence</th><th>message</th><th>evidence</th><th>review</th></tr>",
    ]
    for row in r.alerts:
        a = row.alert
        ev = a.evidence
        thumb = ""
        if ev.frame and ev.frame in images:
            thumb = f"<img class='thumb' alt='evidence' src='{_data_uri(images[ev.frame], ev.frame)}'>"
        text = f"<div class='muted'>{escape(ev.text)}</div>" if ev.text else ""
        review = row.state + (f" by {escape(row.review.by)}" if row.review else "")
        if row.review and row.review.note:
            review += f"<div class='muted'>{escape(row.review.note)}</div>"
        out.append(
            f"<tr data-id='{a.id}'><td class='num'>{a.id}</td><td>{escape(iso(a.at))}</td><td>{hms(a.offset)}</td>"
            f"<td>{escape(a.rule)}</td><td><span class='sev' style='background:{SEVERITY_COLORS[a.severity.value]}'>"
            f"{a.severity.value}</span></td><td class='num'>{a.confidence:.2f}</td><td>{escape(a.message)}{text}</td>"
            f"<td>{thumb}</td><td class='state-{row.state}'>{review}</td></tr>"
        )
    out.append("</table>")
    if r.scenes or r.switches or r.models:
        out.append("<h2>Vision-language models</h2><div class='cards'>")
        out.extend(f"<div class='card'><span class='muted'>{escape(m)}</span><b>{n}</b></div>" for m, n in r.models.items())
        out.append("</div>")
    if r.switches:
        out.append("<table id='switches'><tr><th>offset</th><th>switch</th><th>load + warm-up</th></tr>")
        out.extend(
            f"<tr><td>{hms(e.offset)}</td><td>{escape(e.reason)}</td><td class='num'>{e.duration_s or 0:.1f}s</td></tr>" for e in r.switches
        )
        out.append("</table>")
    if r.scenes:
        out.append("<h3>Scenes (compliance model)</h3><table id='scenes'><tr><th>offset</th><th>tags</th><th>model</th><th>frame</th></tr>")
        for sc in r.scenes:
            thumb = (
                f"<img class='thumb' alt='frame' src='{_data_uri(images[sc.frame], sc.frame)}'>" if sc.frame and sc.frame in images else ""
            )
            late = " <span class='muted'>(late)</span>" if sc.late else ""
            out.append(
                f"<tr><td>{hms(sc.offset)}</td><td>{escape(', '.join(sc.tags))}</td><td>{escape(sc.model)}{late}</td><td>{thumb}</td></tr>"
            )
        out.append("</table>")
    if r.feedback:
        out.append("<h2>Replies: audience feedback by model and persona</h2><table id='feedback'>")
        out.append("<tr><th>model / persona</th><th>replies</th><th>👍</th><th>👎</th><th>reported</th></tr>")
        out.extend(
            f"<tr><td>{escape(k)}</td><td class='num'>{v['replies']}</td><td class='num'>{v['up']}</td><td class='num'>{v['down']}</td>"
            f"<td class='num'>{v['report']}</td></tr>"
            for k, v in r.feedback.items()
        )
        out.append("</table>")
    if extra:
        out.append(extra)
    out.append("</body></html>")
    return "\n".join(out)
