"""Self-contained HTML report: summary, inline-SVG timeline with its legend, alert and action tables with
embedded thumbnails, in the desk's language and the show's time zone (:mod:`streamwatch.i18n`). Pure.

No glyph depends on an emoji or CJK font being installed for meaning: labels are text, marks are SVG
shapes; numeric columns are right-aligned under right-aligned headers.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from functools import partial
from html import escape

from streamwatch.i18n import Lang, UIConfig, local_time, t
from streamwatch.report.build import Period, Report, hms

SEVERITY_COLORS = {"low": "#4c8bf5", "medium": "#f2b01e", "high": "#f26b1d", "critical": "#d7263d"}
PERIOD_COLORS = {
    "outage": "#d7263d",
    "cut": "#7048e8",
    "black": "#222222",
    "frozen": "#3aa0c8",
    "monitoring_gap": "#8e44ad",
    "segment_missing": "#b197fc",
    "analysis_failing": "#e67700",
    "storage_failing": "#7a5c00",
    "overloaded": "#c2255c",
}
ACTION_COLOR = "#7048e8"

_CSS = """
body{font:14px/1.4 system-ui,"Noto Sans CJK SC","WenQuanYi Micro Hei",sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px}
.muted{color:#666} .cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e5e5e5;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
img.thumb{max-width:160px;max-height:90px;border-radius:4px}
.state-pending{color:#b36b00}.state-confirmed{color:#d7263d}.state-dismissed{color:#666}
.st-done{color:#7048e8;font-weight:600}.st-failed{color:#d7263d}.st-pending{color:#b36b00}.st-dry_run,.st-off{color:#666}
svg text{font:11px system-ui,"Noto Sans CJK SC","WenQuanYi Micro Hei",sans-serif;fill:#444}
"""


def _data_uri(data: bytes, path: str) -> str:
    mime = "image/png" if path.endswith(".png") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def period_length(p: Period, lang: Lang) -> str:
    if p.duration is None:
        return t("period.open", lang)
    return t("period.open_so_far", lang, s=p.duration) if p.open else f"{p.duration:.1f}s"


def timeline_svg(report: Report, width: int = 1000, lang: Lang = "zh") -> str:
    """Health periods (bars), alerts (dots by severity) and actions (diamonds) over stream time, with
    ticks whose labels stay inside the picture and a legend of every colour used."""
    span = max(report.duration_s, 1.0)
    left, right, lane = 70, 30, 26
    plot = width - left - right
    axis = 24 + lane * 3
    legend_y = axis + 34
    legend, rows = _legend(report, left, legend_y, lang, width - 4)
    height = legend_y + 16 * (rows - 1) + 14  # as many legend rows as the swatches need

    def x(offset: float) -> float:
        return left + plot * min(max(offset, 0.0), span) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="timeline">']
    for i, key in enumerate(("r.lane_health", "r.lane_alerts", "r.lane_actions")):
        parts.append(f'<text x="4" y="{30 + lane * (i + 0.6):.0f}">{escape(t(key, lang))}</text>')
        parts.append(f'<rect x="{left}" y="{24 + lane * i}" width="{plot}" height="{lane - 6}" fill="#f0f0f0"/>')
    for p in report.periods:
        end = p.end if p.end is not None else span
        w = max(x(end) - x(p.start), 2.0)
        title = f"{t('period.' + p.kind, lang)} {hms(p.start)}: {period_length(p, lang)}"
        parts.append(
            f'<rect x="{x(p.start):.1f}" y="24" width="{w:.1f}" height="{lane - 6}" fill="{PERIOD_COLORS.get(p.kind, "#888")}"'
            f' opacity="0.8"><title>{escape(title)}</title></rect>'
        )
    cy = 24 + lane + (lane - 6) / 2
    for row in report.alerts:
        a = row.alert
        title = f"{hms(a.offset)} {t('sev.' + a.severity.value, lang)} {a.rule}: {a.message}"
        parts.append(
            f'<circle cx="{x(a.offset):.1f}" cy="{cy:.1f}" r="5" fill="{SEVERITY_COLORS[a.severity.value]}"'
            f' stroke="#fff"><title>{escape(title)}</title></circle>'
        )
    ay = 24 + lane * 2 + (lane - 6) / 2
    for ac in report.actions:
        cx = x(ac.offset)
        title = f"{hms(ac.offset)} {_action_name(ac.action, lang)}: {t('action.' + ac.status.value, lang)}"
        parts.append(
            f'<path d="M{cx:.1f} {ay - 6:.1f} l6 6 l-6 6 l-6 -6 z" fill="{ACTION_COLOR}" class="act-{ac.status.value}"'
            f' opacity="{1.0 if ac.status.value == "done" else 0.45}"><title>{escape(title)}</title></path>'
        )
    ticks = 6
    for i in range(ticks + 1):
        off = span * i / ticks
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"  # the last label ends at the axis end: never cut
        parts.append(f'<line x1="{x(off):.1f}" x2="{x(off):.1f}" y1="{axis - 4}" y2="{axis}" stroke="#999"/>')
        parts.append(f'<text x="{x(off):.1f}" y="{axis + 12}" text-anchor="{anchor}">{hms(off)}</text>')
    parts.append(legend)
    parts.append("</svg>")
    return "".join(parts)


def _legend(report: Report, left: int, y: int, lang: Lang, max_x: int) -> tuple[str, int]:
    """Swatches: the health period kinds, then alert severities and actions on a row of their own; a row
    wider than ``max_x`` wraps. Returns the SVG and the number of rows used."""
    groups: list[list[tuple[str, str, str]]] = [
        [("rect", PERIOD_COLORS[k], t("period." + k, lang)) for k in PERIOD_COLORS],
        [("circle", c, t("sev." + s, lang)) for s, c in SEVERITY_COLORS.items()] + [("path", ACTION_COLOR, t("r.lane_actions", lang))],
    ]
    out = [f'<g class="legend"><text x="4" y="{y}">{escape(t("r.legend", lang))}</text>']
    rows = 0
    for items in groups:
        placed, used = _swatches(items, left, y + 16 * rows, max_x)
        out.extend(placed)
        rows += used
    out.append("</g>")
    return "".join(out), rows


def _swatches(items: list[tuple[str, str, str]], left: int, y: int, max_x: int) -> tuple[list[str], int]:
    out = []
    cx, rows = left, 1
    for shape, colour, label in items:
        text_w = sum(12 if ord(ch) > 0x2E80 else 7 for ch in label)  # CJK glyphs are about twice as wide
        if cx > left and cx + 16 + text_w > max_x:  # this swatch would end past the picture: next row
            cx, y, rows = left, y + 16, rows + 1
        if shape == "rect":
            out.append(f'<rect x="{cx}" y="{y - 9}" width="12" height="10" fill="{colour}" opacity="0.8"/>')
        elif shape == "circle":
            out.append(f'<circle cx="{cx + 6}" cy="{y - 4}" r="5" fill="{colour}"/>')
        else:
            out.append(f'<path d="M{cx + 6} {y - 10} l6 6 l-6 6 l-6 -6 z" fill="{colour}"/>')
        out.append(f'<text x="{cx + 16}" y="{y}">{escape(label)}</text>')
        cx += 30 + text_w
    return out, rows


def _action_name(action: str, lang: Lang) -> str:
    return t("action." + action, lang) if action in ("cut", "warn") else action


def render_html(report: Report, images: Mapping[str, bytes], extra: str = "", ui: UIConfig | None = None) -> str:
    """The report as one HTML document; ``images`` maps evidence paths to bytes to embed; ``extra`` is an
    HTML section appended at the end (the post-ready summary); ``ui``: language and time zone."""
    ui = ui or UIConfig()
    lang = ui.language
    tr = partial(t, lang=lang)
    when = partial(local_time, tz=ui.timezone)
    r = report
    cuts = [p for p in r.periods if p.kind == "cut"]
    cards = [
        (tr("r.duration"), hms(r.duration_s)),
        (tr("r.alerts"), str(len(r.alerts))),
        (tr("r.reviewed"), str(r.reviewed)),
        (tr("r.pending"), str(r.pending)),
        (tr("r.outages"), f"{len(r.outages)} ({r.outage_s:.0f}s{', ' + tr('r.open') if any(p.open for p in r.outages) else ''})"),
        (tr("r.cuts"), f"{len(cuts)} ({sum(p.duration or 0.0 for p in cuts):.0f}s)"),
        (tr("r.not_watched"), f"{len(r.gaps)} ({sum(p.duration or 0.0 for p in r.gaps):.0f}s)"),
        (tr("r.end"), t("state." + r.ended.state.value, lang) if r.ended is not None and r.ended.state is not None else tr("r.open")),
        (tr("r.replies"), str(r.replies)),
        (tr("r.rejected"), str(r.rejected)),
    ]
    html_lang = "zh-CN" if lang == "zh" else "en"
    out = [
        f"<!doctype html><html lang='{html_lang}'><head><meta charset='utf-8'>",
        f"<title>streamwatch — {escape(tr('r.title', stream=r.stream))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(tr('r.title', stream=r.stream))}</h1>",
        f"<div class='muted'>{escape(when(r.first_at))} → {escape(when(r.last_at))} · {escape(tr('r.events', n=len(r.events)))}"
        f" · {escape(tr('r.times_in', tz=ui.timezone))}</div>",
        f"<h2>{tr('r.summary')}</h2><div class='cards'>",
        *(f"<div class='card'><span class='muted'>{escape(k)}</span><b>{escape(v)}</b></div>" for k, v in cards),
        f"</div><h2>{tr('r.by_severity')}</h2><div class='cards'>",
        *(
            f"<div class='card'><span class='sev' style='background:{SEVERITY_COLORS[s]}'>{escape(tr('sev.' + s))}</span><b>{n}</b></div>"
            for s, n in r.by_severity.items()
        ),
        f"</div><table id='rules'><tr><th>{tr('r.rule')}</th><th class='num'>{tr('r.alerts')}</th></tr>",
        *(f"<tr><td>{escape(rule)}</td><td class='num'>{n}</td></tr>" for rule, n in r.by_rule.items()),
        f"</table><h2>{tr('r.timeline')}</h2>",
        timeline_svg(r, lang=lang),
        f"<h2>{tr('r.periods')}</h2><table id='periods'><tr><th>{tr('r.offset')}</th><th>{tr('r.kind')}</th>"
        f"<th class='num'>{tr('r.length')}</th><th>{tr('r.detail')}</th></tr>",
        *(
            f"<tr data-kind='{p.kind}'><td>{hms(p.start)}</td><td>{escape(tr('period.' + p.kind))}</td>"
            f"<td class='num'>{escape(period_length(p, lang))}</td><td>{escape(p.detail)}</td></tr>"
            for p in r.periods
        ),
        f"</table><h2>{tr('r.alert_list')}</h2><table id='alerts'><tr><th class='num'>#</th><th>{tr('r.wall')}</th>"
        f"<th>{tr('r.offset')}</th><th>{tr('r.rule')}</th><th>{tr('r.severity')}</th><th class='num'>{tr('r.confidence')}</th>"
        f"<th>{tr('r.message')}</th><th>{tr('r.evidence')}</th><th>{tr('r.review')}</th></tr>",
    ]
    for row in r.alerts:
        a = row.alert
        ev = a.evidence
        thumb = ""
        if ev.frame and ev.frame in images:
            thumb = f"<img class='thumb' alt='evidence' src='{_data_uri(images[ev.frame], ev.frame)}'>"
        text = f"<div class='muted'>{escape(ev.text)}</div>" if ev.text else ""
        state = tr("review." + row.state)
        review = escape(tr("review.by", state=state, by=row.review.by) if row.review else state)
        if row.review and row.review.note:
            review += f"<div class='muted'>{escape(row.review.note)}</div>"
        out.append(
            f"<tr data-id='{a.id}'><td class='num'>{a.id}</td><td>{escape(when(a.at))}</td><td>{hms(a.offset)}</td>"
            f"<td>{escape(a.rule)}</td><td><span class='sev' style='background:{SEVERITY_COLORS[a.severity.value]}'>"
            f"{escape(tr('sev.' + a.severity.value))}</span></td><td class='num'>{a.confidence:.2f}</td><td>{escape(a.message)}{text}</td>"
            f"<td>{thumb}</td><td class='state-{row.state}'>{review}</td></tr>"
        )
    out.append("</table>")
    if r.actions:
        out.append(
            f"<h2>{tr('r.actions')}</h2><table id='actions'><tr><th>{tr('r.wall')}</th><th>{tr('r.offset')}</th>"
            f"<th class='num'>{tr('r.alert')}</th><th>{tr('r.action')}</th><th>{tr('r.by')}</th><th>{tr('r.status')}</th>"
            f"<th>{tr('r.target')}</th><th>{tr('r.detail')}</th></tr>"
        )
        for ac in r.actions:
            by = tr("action.by_policy") if ac.by == "policy" else ac.by
            out.append(
                f"<tr data-action='{ac.id}'><td>{escape(when(ac.at))}</td><td>{hms(ac.offset)}</td><td class='num'>{ac.alert_id}</td>"
                f"<td>{escape(_action_name(ac.action, lang))}</td><td>{escape(by)}</td>"
                f"<td class='st-{ac.status.value}'>{escape(tr('action.' + ac.status.value))}</td><td>{escape(ac.target)}</td>"
                f"<td>{escape(ac.detail)}</td></tr>"
            )
        out.append("</table>")
    out.extend(_models(r, images, lang, when))
    if extra:
        out.append(extra)
    out.append("</body></html>")
    return "\n".join(out)


def _models(r: Report, images: Mapping[str, bytes], lang: Lang, when: Callable[[float], str]) -> list[str]:
    """The VLM sections: models used, switches, scene tags, and the audience's feedback on replies."""
    tr = partial(t, lang=lang)
    out: list[str] = []
    if r.scenes or r.switches or r.models or r.model_health:
        out.append(f"<h2>{tr('r.models')}</h2><div class='cards'>")
        out.extend(f"<div class='card'><span class='muted'>{escape(m)}</span><b>{n}</b></div>" for m, n in r.models.items())
        out.append("</div>")
    if r.switches:
        out.append(f"<table id='switches'><tr><th>{tr('r.offset')}</th><th>{tr('r.switch')}</th><th class='num'>{tr('r.warmup')}</th></tr>")
        out.extend(
            f"<tr><td>{hms(e.offset)}</td><td>{escape(e.reason)}</td><td class='num'>{e.duration_s or 0:.1f}s</td></tr>" for e in r.switches
        )
        out.append("</table>")
    if r.model_health:
        out.append(f"<table id='model-health'><tr><th>{tr('r.offset')}</th><th>{tr('r.wall')}</th><th>{tr('r.model_health')}</th></tr>")
        out.extend(
            f"<tr class='{'failing' if e.active else 'recovered'}'><td>{hms(e.offset)}</td><td>{escape(when(e.at))}</td>"
            f"<td>{'⚠ ' if e.active else '✓ '}{escape(e.reason)}</td></tr>"
            for e in r.model_health
        )
        out.append("</table>")
    if r.scenes:
        out.append(
            f"<h3>{tr('r.scenes')}</h3><table id='scenes'><tr><th>{tr('r.offset')}</th><th>{tr('r.tags')}</th>"
            f"<th>{tr('r.model')}</th><th>{tr('r.frame')}</th></tr>"
        )
        for sc in r.scenes:
            thumb = (
                f"<img class='thumb' alt='frame' src='{_data_uri(images[sc.frame], sc.frame)}'>" if sc.frame and sc.frame in images else ""
            )
            late = f" <span class='muted'>{tr('r.late')}</span>" if sc.late else ""
            out.append(
                f"<tr><td>{hms(sc.offset)}</td><td>{escape(', '.join(sc.tags))}</td><td>{escape(sc.model)}{late}</td><td>{thumb}</td></tr>"
            )
        out.append("</table>")
    if r.feedback:
        heads = "".join(f"<th class='num'>{tr(k)}</th>" for k in ("r.replies", "r.up", "r.down", "r.reported"))
        out.append(f"<h2>{tr('r.feedback')}</h2><table id='feedback'><tr><th>{tr('r.model_persona')}</th>{heads}</tr>")
        out.extend(
            f"<tr><td>{escape(k)}</td>" + "".join(f"<td class='num'>{v[c]}</td>" for c in ("replies", "up", "down", "report")) + "</tr>"
            for k, v in r.feedback.items()
        )
        out.append("</table>")
    return out
