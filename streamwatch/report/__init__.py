"""Post-stream report from the event store alone (works after a crash).

:func:`collect` reads (I/O); :func:`render` is pure rendering to html, json or csv.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from streamwatch.errors import EventsError
from streamwatch.events.model import AlertEvent, Event, SceneEvent
from streamwatch.events.store import EventStore
from streamwatch.i18n import UIConfig
from streamwatch.report.build import Report, build_report, hms
from streamwatch.report.html import render_html
from streamwatch.report.tabular import render_csv, render_json

FORMATS = ("html", "json", "csv")

__all__ = ["FORMATS", "Report", "ReportInputs", "build_report", "collect", "hms", "render"]


@dataclass(frozen=True, slots=True)
class ReportInputs:
    stream: str
    events: list[Event]
    images: Mapping[str, bytes] = field(default_factory=dict)
    until: float | None = None  # wall time the report ends at (open periods run up to it)
    summary: str = ""  # the post-ready summary section (HTML fragment), when there are frames to show


def collect(
    store: EventStore, stream: str, start: float | None = None, end: float | None = None, *, embed_images: bool = True
) -> ReportInputs:
    """Read one stream's events (and their evidence images, for HTML) from the store.

    The report ends at ``end`` or, without one, now: outages still open run up to then.
    """
    events = store.events(stream, start=start, end=end)
    images: dict[str, bytes] = {}
    if embed_images:
        for e in events:
            frame = e.evidence.frame if isinstance(e, AlertEvent) else e.frame if isinstance(e, SceneEvent) else None
            if frame and frame not in images:
                path = store.frame_path(frame)
                if path is not None:
                    images[frame] = path.read_bytes()
    summary = ""
    if embed_images:
        from streamwatch.report.post import report_section

        summary = report_section(store, stream, events)
    return ReportInputs(stream, events, images, end if end is not None else time.time(), summary)


def render(inputs: ReportInputs, fmt: str, ui: UIConfig | None = None) -> str:
    """The report as html (in ``ui``'s language and time zone; default: Chinese, Asia/Shanghai), json or csv."""
    if fmt not in FORMATS:
        raise EventsError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    report = build_report(inputs.stream, inputs.events, inputs.until)
    if fmt == "html":
        return render_html(report, inputs.images, inputs.summary, ui)
    return render_json(report) if fmt == "json" else render_csv(report)
