"""The console's action button and key in real headless Chromium: an alert whose rule waits for a
moderator shows a "run" button; pressing ``x`` sends ``act``, the server runs the action (a named HTTP
action against a real local receiver) and every console shows the result; the outage a cut makes is
its own period on the timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from evserver import TOKENS, ServerThread, alert
from test_actions import Receiver, rule
from test_console import browser  # noqa: F401  (the fixture)
from test_overlay import ARTIFACTS

from streamwatch.events.model import Severity
from streamwatch.outbound.actions import ActionDesk
from streamwatch.outbound.actions_config import ActionsConfig


@pytest.fixture
def receiver() -> Any:
    r = Receiver({"/ban/": (200, '{"ok":true}', 0.0)})
    yield r
    r.close()


def test_a_moderator_runs_a_pending_cut_with_the_key_and_both_consoles_see_it(browser: Any, receiver: Receiver, tmp_path: Path) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    s = ServerThread(tmp_path / "d")
    try:
        cfg = ActionsConfig.model_validate({"cut": "ban", "http": [{"name": "ban", "url": f"{receiver.url}/ban/{{stream}}"}]})
        rules = {"qr_code": rule(action="cut"), "contact_spam": rule(id="contact_spam", action="warn", auto=True)}
        desk = ActionDesk(cfg, s.bus, lambda _s, r: rules.get(r))
        s.server.actions = desk
        stored = s.publish(alert("s1", 11.0, "qr_code", Severity.HIGH, message="二维码指向站外：https://evil.example/j"))
        plain = s.publish(alert("s1", 12.0, "nudity", Severity.HIGH, message="no action for this rule"))
        s.call(desk.on_alert(s.store.get(stored.id)))  # type: ignore[arg-type]
        pages = [browser.new_page(viewport={"width": 1280, "height": 720}) for _ in range(2)]
        errors: list[str] = []
        for page in pages:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{s.port}/console?token={TOKENS['moderator']}")
            page.wait_for_selector(f".arow[data-id='{stored.id}'][data-action=pending]", timeout=15_000)
        a, b = pages
        a.click(f".arow[data-id='{plain.id}']")
        assert a.is_hidden("#d-run")  # no action: no button, and x says so
        a.keyboard.press("x")
        a.wait_for_selector("#toast:not([hidden])")
        assert "没有待确认的处置" in a.inner_text("#toast")
        assert receiver.got == []
        a.click(f".arow[data-id='{stored.id}']")
        assert a.is_visible("#d-run") and "执行断流" in a.inner_text("#d-run")
        assert "断流：待确认" in a.inner_text("#d-action")
        a.screenshot(path=str(ARTIFACTS / "console-action-pending.png"))
        a.keyboard.press("x")
        for page in pages:
            page.wait_for_selector(f".arow[data-id='{stored.id}'][data-action=done]", timeout=10_000)
        a.wait_for_selector("#d-run", state="hidden")
        assert "断流：已执行 · moderator-client" in a.inner_text("#d-action")
        b.click(f".arow[data-id='{stored.id}']")
        assert "已执行" in b.inner_text("#d-action") and b.is_hidden("#d-run")
        a.screenshot(path=str(ARTIFACTS / "console-action-done.png"))
        assert [g["path"] for g in receiver.got] == ["/ban/s1"] and receiver.got[0]["method"] == "POST"
        a.keyboard.press("x")  # once only: the button is gone and the server refuses a second run
        a.wait_for_selector("#toast:not([hidden])")
        assert len(receiver.got) == 1
        b.click("#lang")
        assert "cut: done · moderator-client" in b.inner_text("#d-action")
        assert errors == []
    finally:
        s.close()
