"""Post-stream report from a seeded store: HTML (summary, SVG timeline, embedded thumbnails), JSON, CSV, CLI."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from pathlib import Path

import cv2
import pytest
from evserver import alert, health
from skimage import data as skdata

from streamwatch.cli import main
from streamwatch.events.model import Evidence, HealthKind, ReplyEvent, ReviewAction, ReviewEvent, Severity, StreamState
from streamwatch.events.store import EventStore
from streamwatch.i18n import UIConfig
from streamwatch.report import build_report, collect, render

T0 = 1_790_000_000.0  # 2026-09-21T...Z


def seed(data: Path) -> EventStore:
    store = EventStore(data)
    thumb = store.save_image("show", cv2.imencode(".jpg", skdata.coffee()[::8, ::8])[1].tobytes())
    evs = [
        health("show", 0.0, StreamState.CONNECTING),
        health("show", 0.4, StreamState.LIVE),
        alert("show", 61.0, "contact_spam", Severity.HIGH, evidence=Evidence(kind="ocr", text="加V信 abc", frame=thumb)),
        health("show", 100.0, StreamState.RECONNECTING, reason="read timeout"),
        health("show", 105.2, StreamState.LIVE, gap_s=5.2),
        health("show", 200.0, None, kind=HealthKind.BLACK, active=True),
        health("show", 204.0, None, kind=HealthKind.BLACK, active=False, duration_s=4.0),
        alert("show", 3725.0, "qr_code", Severity.MEDIUM, evidence=Evidence(kind="qr", text="https://x.example")),
        alert("show", 3800.0, "brand", Severity.CRITICAL),
        alert("other", 5.0, "brand", Severity.LOW),
        ReplyEvent(stream="show", at=T0 + 300, offset=300, submission="a1", submitter="fans", text="谢谢!", user="小明"),
        health("show", 3900.0, StreamState.STOPPED),
    ]
    evs = [dataclasses.replace(e, at=T0 + e.offset) for e in evs]
    stored = [store.add(e) for e in evs]
    store.add(
        ReviewEvent(
            stream="show", at=T0 + 4000, offset=61.0, alert_id=stored[2].id, action=ReviewAction.CONFIRM, by="mod-a", note="real spam"
        )
    )
    store.add(ReviewEvent(stream="show", at=T0 + 4001, offset=3725.0, alert_id=stored[7].id, action=ReviewAction.DISMISS, by="mod-b"))
    return store


def test_report_summary_periods_and_reviews(tmp_path: Path) -> None:
    store = seed(tmp_path)
    r = build_report("show", store.events())
    assert len(r.alerts) == 3 and r.reviewed == 2 and r.pending == 1
    assert r.by_severity == {"low": 0, "medium": 1, "high": 1, "critical": 1}
    assert r.by_rule == {"contact_spam": 1, "qr_code": 1, "brand": 1}
    assert [(p.kind, p.start, p.duration) for p in r.periods] == [("outage", 100.0, 5.2), ("black", 200.0, 4.0)]
    assert r.outage_s == pytest.approx(5.2) and r.duration_s == 3900.0 and r.replies == 1
    assert [row.state for row in r.alerts] == ["confirmed", "dismissed", "pending"]


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    store = seed(tmp_path)
    html = render(collect(store, "show"), "html", UIConfig(language="en", timezone="UTC"))  # (Chinese by default: test_report_desk.py)
    svg = re.search(r"<svg.*?</svg>", html, re.S)
    assert svg and re.sub(r"<g class=\"legend\">.*?</g>", "", svg.group(0)).count("<circle") == 3  # one dot per alert
    assert "data:image/jpeg;base64," in html  # evidence embedded, no external file
    assert not re.search(r"""(src|href)=["']https?://""", html)  # no CDN, nothing remote
    rows = re.findall(r"<tr data-id='(\d+)'>(.*?)</tr>", html, re.S)
    assert len(rows) == 3
    first = rows[0][1]
    assert "00:01:01" in first and "contact_spam" in first and "0.91" in first and "confirmed by mod-a" in first
    assert "01:02:05" in rows[1][1] and "dismissed" in rows[1][1]
    assert "pending" in rows[2][1]
    assert "加V信 abc" in html and "other" not in re.sub(r"<svg.*?</svg>", "", html).split("<h2>Alerts</h2>")[1]


def test_json_and_csv_reports(tmp_path: Path) -> None:
    store = seed(tmp_path)
    doc = json.loads(render(collect(store, "show", embed_images=False), "json"))
    assert doc["schema"] == "streamwatch.report/1" and doc["stream"] == "show"
    assert doc["summary"]["alerts"] == 3 and doc["summary"]["outages"] == 1 and doc["summary"]["pending"] == 1
    assert [a["review"] for a in doc["alerts"]] == ["confirmed", "dismissed", "pending"]
    assert doc["alerts"][1]["offset_hms"] == "01:02:05"
    assert len(doc["events"]) == 13
    rows = list(csv.DictReader(io.StringIO(render(collect(store, "show"), "csv"))))
    assert len(rows) == 13 and {r["type"] for r in rows} == {"health", "alert", "reply", "review"}
    spam = next(r for r in rows if r["rule"] == "contact_spam")
    assert spam["severity"] == "high" and spam["offset"] == "00:01:01" and spam["review"] == "confirmed"
    # a time window keeps only what falls inside it
    window = collect(store, "show", T0 + 50, T0 + 210)
    assert [e.offset for e in window.events] == [61.0, 100.0, 105.2, 200.0, 204.0]


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path / "data").close()
    out = tmp_path / "r" / "show.html"
    assert main(["report", "show", "--data", str(tmp_path / "data"), "--format", "html", "-o", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")
    assert main(["report", "show", "--data", str(tmp_path / "data"), "--format", "csv", "-o", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().count("\n") == 14
    assert main(["report", "nope", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "x.html")]) == 1
    assert "no events for stream 'nope'" in capsys.readouterr().err and "show" in capsys.readouterr().err + "show"
    assert main(["report", "show", "--data", str(tmp_path / "empty")]) == 1
    assert "no event store" in capsys.readouterr().err


def _ids(events: list) -> list:  # type: ignore[type-arg]
    return [dataclasses.replace(e, id=i + 1) for i, e in enumerate(events)]


def test_unwatched_and_analysis_periods() -> None:
    """Cluster ``unwatched`` (from the last heartbeat): superseded by the takeover's monitoring gap, measured by
    the wall clock when a new session starts without one, still open at the end otherwise; an outage in
    progress ends where nobody watched any more. ``analysis`` failing/works again is a period with its error."""
    t0 = 1_000_000.0

    def h(offset: float, state: StreamState | None = None, **kw):  # type: ignore[no-untyped-def]
        return dataclasses.replace(health("show", offset, state, **kw), at=t0 + offset)

    def periods(events: list) -> list:  # type: ignore[type-arg]
        return [(p.kind, p.start, p.duration, p.open) for p in build_report("show", _ids(events), until=t0 + 100).periods]

    live = h(0.0, StreamState.LIVE)
    gone = h(10.0, StreamState.UNWATCHED, reason="no worker holds it")
    gap = h(10.0, None, kind=HealthKind.MONITORING_GAP, duration_s=7.5)
    # superseded by the next owner's gap
    assert periods([live, gone, gap, h(17.5, StreamState.CONNECTING), h(17.6, StreamState.LIVE)]) == [("monitoring_gap", 10.0, 7.5, False)]
    # no gap (the carried state was lost: a new session): by the wall clock
    fresh = dataclasses.replace(h(0.0, StreamState.CONNECTING), at=t0 + 40.0)
    assert periods([live, gone, fresh]) == [("monitoring_gap", 10.0, 30.0, False)]
    # nobody came back: open up to the report's end, and an outage in progress ends there
    down = h(5.0, StreamState.RECONNECTING, reason="read timeout")
    assert periods([live, down, gone]) == [("outage", 5.0, 5.0, False), ("monitoring_gap", 10.0, 90.0, True)]
    report = build_report("show", _ids([live, gone]), until=t0 + 100)
    assert report.ended is None and report.gaps[0].open
    # analysis failing for a while, with the error
    bad = h(20.0, None, kind=HealthKind.ANALYSIS, active=True, reason="5 frames in a row skipped (RuntimeError: CUDA error)")
    ok = h(26.0, None, kind=HealthKind.ANALYSIS, active=False, reason="after 20 skipped frames")
    got = build_report("show", _ids([live, bad, ok]), until=t0 + 100).periods
    assert [(p.kind, p.start, p.duration) for p in got] == [("analysis_failing", 20.0, 6.0)] and "CUDA error" in got[0].detail
    still = build_report("show", _ids([live, bad]), until=t0 + 100).periods
    assert still[0].kind == "analysis_failing" and still[0].open and "CUDA" in still[0].detail
