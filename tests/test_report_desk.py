"""report.html for a Chinese desk, checked in real headless Chromium: Simplified Chinese by default and
English by the setting, times in the show's time zone, the actions and the outage a cut made, no emoji
headers, numbers under their own headers, a timeline whose tick labels fit and that has a legend."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import cv2
import pytest
from evserver import alert, health
from skimage import data as skdata
from test_console import browser  # noqa: F401  (the fixture)
from test_overlay import ARTIFACTS

from streamwatch.events.model import (
    ActionEvent,
    ActionStatus,
    Evidence,
    FeedbackEvent,
    HealthKind,
    ReplyEvent,
    ReviewAction,
    ReviewEvent,
    Severity,
    StreamState,
    Vote,
)
from streamwatch.events.store import EventStore
from streamwatch.i18n import UIConfig, local_time
from streamwatch.report import build_report, collect, render
from streamwatch.report.html import PERIOD_COLORS

T0 = 1_790_000_000.0


def seed(data: Path, span: float) -> EventStore:
    """A show of ``span`` seconds: an outage, a black period, alerts, a cut and the outage it made, replies with votes."""
    store = EventStore(data)
    thumb = store.save_image("show", cv2.imencode(".jpg", skdata.coffee()[::8, ::8])[1].tobytes())
    q = span / 10
    evs: list[Any] = [
        health("show", 0.0, StreamState.CONNECTING),
        health("show", 0.4, StreamState.LIVE),
        alert("show", q, "contact_spam", Severity.HIGH, message="画面出现联系方式/引流文字：加V信 abc",
              evidence=Evidence(kind="ocr", text="加V信 abc", labels=("加v信",), frame=thumb)),
        health("show", 2 * q, StreamState.RECONNECTING, reason="read timeout"),
        health("show", 2 * q + 5.2, StreamState.LIVE, gap_s=5.2),
        health("show", 3 * q, None, kind=HealthKind.BLACK, active=True),
        health("show", 3 * q + 4, None, kind=HealthKind.BLACK, active=False, duration_s=4.0),
        alert("show", 6 * q, "qr_code", Severity.HIGH, message="二维码指向站外：https://evil.example/j",
              evidence=Evidence(kind="qr", text="https://evil.example/j", frame=thumb)),
    ]  # fmt: skip
    evs = [dataclasses.replace(e, at=T0 + e.offset) for e in evs]
    stored = [store.add(e) for e in evs]
    qr = stored[-1].id
    cut = store.add(
        ActionEvent(stream="show", at=T0 + 6 * q + 1, offset=6 * q, alert_id=qr, rule="qr_code", action="cut", status=ActionStatus.DONE,
                    by="duty-mod", backend="nginx", target="live/show", detail="nginx control: 1 publisher(s) dropped")
    )  # fmt: skip
    later: list[Any] = [
        health("show", 6 * q + 3, StreamState.STALLED, reason="no data for 2s", caused_by=cut.id),
        health("show", 6 * q + 5, StreamState.RECONNECTING, reason="no data for 2s", caused_by=cut.id),
        health("show", 8 * q, StreamState.LIVE, gap_s=2 * q - 3, caused_by=cut.id),
        ReplyEvent(
            stream="show", at=0.0, offset=9 * q, submission="a1", submitter="fans", text="谢谢!", model="qwen3-vl-4b", persona="星喵"
        ),
    ]
    later = [dataclasses.replace(e, at=T0 + e.offset) for e in later]
    reply = [store.add(e) for e in later][-1]
    for i, vote in enumerate((Vote.UP, Vote.UP, Vote.UP, Vote.DOWN, Vote.REPORT)):
        store.add(FeedbackEvent(stream="show", at=T0 + span, offset=9 * q, reply_id=reply.id, vote=vote, by="relay", user=f"fan{i}",
                                model="qwen3-vl-4b", persona="星喵"))  # fmt: skip
    store.add(dataclasses.replace(health("show", span, StreamState.ENDED), at=T0 + span))
    store.add(ReviewEvent(stream="show", at=T0 + span + 60, offset=q, alert_id=stored[2].id, action=ReviewAction.CONFIRM, by="mod-a"))
    return store


def test_a_cut_is_an_action_and_its_outage_is_not_a_fault(tmp_path: Path) -> None:
    for span in (65.0, 3900.0):
        r = build_report("show", seed(tmp_path / str(span), span).events())
        assert [p.kind for p in r.periods] == ["outage", "black", "cut"]
        assert r.outage_s == pytest.approx(5.2)  # the cut's 2q-3 s are not counted as an outage
        cut = r.periods[-1]
        assert cut.duration == pytest.approx(2 * span / 10 - 3) and cut.detail == f"action #{r.actions[0].id}"
        assert [(a.action, a.status) for a in r.actions] == [("cut", ActionStatus.DONE)]


JS_LAYOUT = """() => {
  const out = {misaligned: [], ticks: [], svgWidth: 0, legend: []};
  const textBox = (cell) => { const r = document.createRange(); r.selectNodeContents(cell); return r.getBoundingClientRect(); };
  for (const table of document.querySelectorAll("table")) {
    const heads = [...table.rows[0].cells];
    for (const row of [...table.rows].slice(1)) {
      [...row.cells].forEach((cell, i) => {
        if (!cell.classList.contains("num") || !cell.textContent.trim()) return;
        const a = textBox(cell), b = textBox(heads[i]);
        if (a.right < b.left - 1 || a.left > b.right + 1) out.misaligned.push([table.id, heads[i].textContent, cell.textContent]);
      });
    }
  }
  const svg = document.querySelector("h2 + svg"); out.svgWidth = svg.getBoundingClientRect().width;
  const left = svg.getBoundingClientRect().left;
  for (const t of svg.querySelectorAll(":scope > text")) {
    const bb = t.getBoundingClientRect(); out.ticks.push([t.textContent, bb.left - left, bb.right - left]);
  }
  for (const t of svg.querySelectorAll(".legend text")) {
    const bb = t.getBoundingClientRect(); out.legend.push([t.textContent, bb.left - left, bb.right - left, Math.round(bb.top)]);
  }
  return out;
}"""


@pytest.mark.parametrize(("lang", "tz", "span"), [("zh", "Asia/Shanghai", 65.0), ("en", "Europe/London", 3900.0), ("zh", "UTC", 3900.0)])
def test_report_html_in_the_desks_language_and_time_zone_renders_cleanly(
    browser: Any,  # noqa: F811
    tmp_path: Path,
    lang: str,
    tz: str,
    span: float,
) -> None:
    store = seed(tmp_path / "d", span)
    ui = UIConfig(language=lang, timezone=tz)  # type: ignore[arg-type]
    html = render(collect(store, "show"), "html", ui if (lang, tz) != ("zh", "Asia/Shanghai") else None)  # zh + Shanghai: the default
    assert "👍" not in html and "👎" not in html
    chinese = {"title": "直播报告：show", "h2": "处置记录", "th": "<th class='num'>赞</th>", "cut": "处置断流", "status": "已执行"}
    english = {"title": "Stream report: show", "h2": "Actions on the stream", "th": "<th class='num'>up</th>", "cut": "cut by an action",
               "status": "done"}  # fmt: skip
    want, other = (chinese, english) if lang == "zh" else (english, chinese)
    for key, text in want.items():
        assert text in html, key
    assert other["title"] not in html and other["h2"] not in html
    stamp = local_time(T0 + span / 10, tz)  # the first alert's wall time, in the show's zone
    assert stamp in html and (tz == "UTC" or local_time(T0 + span / 10, "UTC") not in html)
    alerts = re.findall(r"<tr data-id='(\d+)'>(.*?)</tr>", html, re.S)
    assert [("contact_spam" in a, "qr_code" in a) for _i, a in alerts] == [(True, False), (False, True)]

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.set_content(html)
        layout = page.evaluate(JS_LAYOUT)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report-{lang}-{tz.replace('/', '_')}-{span:.0f}.png"), full_page=True)
    finally:
        page.close()
    assert layout["misaligned"] == []
    ticks = [tk for tk in layout["ticks"] if re.fullmatch(r"\d\d:\d\d:\d\d", tk[0])]
    assert len(ticks) == 7 and ticks[-1][0] == f"{int(span) // 3600:02d}:{int(span) % 3600 // 60:02d}:{int(span) % 60:02d}"
    assert all(lo >= 0 and hi <= layout["svgWidth"] for _t, lo, hi in ticks)  # no label cut at either end
    labels = [name for name, _lo, _hi, _top in layout["legend"]]
    # the legend: caption, periods, severities, actions
    assert (chinese if lang == "zh" else english)["cut"] in labels and len(labels) == 1 + len(PERIOD_COLORS) + 4 + 1
    assert all(hi <= layout["svgWidth"] for _n, _lo, hi, _top in layout["legend"])
    for row in {top for *_r, top in layout["legend"]}:  # entries of one legend row do not overlap
        spans = sorted((lo, hi) for _n, lo, hi, top in layout["legend"] if top == row)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
