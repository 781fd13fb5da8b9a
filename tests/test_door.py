"""The door: a wrong-token flood from one address is answered 403 then 429, summarised in a few log
lines instead of two per handshake, counted in metrics; HTTP routes are rate-limited per token."""

from __future__ import annotations

import logging
import random
import socket
import string
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from evserver import TOKENS, ServerThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from streamwatch.server.door import Door


def handshake(port: int, token: str | None, *, header: bool = False, source: str = "127.0.0.1") -> int:
    """Status of one WebSocket handshake (101 when it opened)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    url = f"ws://127.0.0.1:{port}/ws" + (f"?token={token}" if token is not None and not header else "")
    headers = {"Authorization": f"Bearer {token}"} if header and token is not None else None
    try:
        with connect(url, sock=sock, additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as e:
        return int(e.response.status_code)


def wrong_tokens(seed: int, n: int) -> list[tuple[str | None, bool]]:
    """Guesses of several shapes: random strings, a real token's prefix or with one character changed, none, by header or query."""
    rnd = random.Random(seed)
    real = TOKENS["moderator"]
    out: list[tuple[str | None, bool]] = []
    for _ in range(n):
        shape = rnd.randrange(4)
        if shape == 0:
            tok: str | None = "".join(rnd.choices(string.ascii_letters + string.digits, k=rnd.randrange(8, 40)))
        elif shape == 1:
            tok = real[: rnd.randrange(1, len(real))]
        elif shape == 2:
            i = rnd.randrange(len(real))
            tok = real[:i] + ("x" if real[i] != "x" else "y") + real[i + 1 :]
        else:
            tok = None
        out.append((tok, rnd.random() < 0.5))
    return out


def test_door_buckets_are_per_address_and_refill() -> None:
    door = Door(per_min=60.0, burst=5)
    for i in range(5):
        assert not door.limited("a", 100.0 + i * 0.001)
        door.failed("a", 100.0 + i * 0.001, 403)
    assert door.limited("a", 100.01)
    assert not door.limited("b", 100.01)  # another address is not touched
    assert not door.limited("a", 101.1)  # one failure a second refills
    lines = door.summary(160.0)
    assert len(lines) == 1 and "a: 5 refused (403) and 1 rate-limited (429)" in lines[0]
    assert door.summary(161.0) == []


def test_wrong_token_flood_is_limited_summarised_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    n = 800
    with ServerThread(tmp_path, auth_failures_per_min=30.0, auth_failures_burst=20) as st:
        st.server.door.summary_s = 1.0
        port = st.port
        assert handshake(port, TOKENS["moderator"]) == 101
        caplog.clear()
        t0 = time.monotonic()
        statuses = [handshake(port, tok, header=h) for tok, h in wrong_tokens(26, n)]
        took = time.monotonic() - t0
        during = len(caplog.records)
        # a right token from the guessing address is refused too (guessing stops paying) …
        assert handshake(port, TOKENS["moderator"]) == 429
        # … while another address is let in
        assert handshake(port, TOKENS["moderator"], source="127.0.0.2") == 101
        time.sleep(1.5)
        refused = sum(1 for s in statuses if s in (401, 403))
        assert statuses[:20] == [s for s in statuses[:20] if s in (401, 403)]
        assert 20 <= refused <= 20 + took * 0.5 + 1  # the burst, then 30 a minute
        assert statuses.count(429) == n - refused
        reg = st.server.metrics.registry
        assert reg.get_sample_value("streamwatch_auth_failures_total", {"outcome": "refused"}) == refused
        assert reg.get_sample_value("streamwatch_auth_failures_total", {"outcome": "limited"}) == n - refused + 1
    summaries = [r.getMessage() for r in caplog.records if "failed authentication from 127.0.0.1" in r.getMessage()]
    assert summaries and all(r.levelno == logging.WARNING for r in caplog.records if "failed authentication" in r.getMessage())
    total = 0
    for line in summaries:
        words = line.split()
        total += int(words[words.index("refused") - 1]) + int(words[words.index("rate-limited") - 1])
    assert total == n + 1
    # before: two INFO lines per refused handshake (4,017 for 2,000); now a few, whatever n is
    assert during <= took / 1.0 + 5, [r.getMessage() for r in caplog.records][:20]


def test_http_routes_are_rate_limited_per_token(tmp_path: Path) -> None:
    with ServerThread(tmp_path, http_per_s=0.5, http_burst=15) as st:
        base = f"http://127.0.0.1:{st.port}"

        def get(path: str, token: str | None = None) -> int:
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return e.code

        routes = ["/streams", "/search?q=x", "/report/s1", "/frames/s1/none.jpg"]
        got = [get(routes[i % len(routes)], TOKENS["moderator"]) for i in range(40)]
        assert all(s != 429 for s in got[:15]) and got[15:].count(429) >= 24
        assert get("/streams", TOKENS["admin"]) == 200  # another token has its own budget
        assert get("/healthz") == 200  # open pages are not limited
