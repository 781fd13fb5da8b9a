"""Small things a newcomer meets (issue 25): `models list` columns, plurals, the demo's health lines,
an ended console tile's offset, and what the console's evidence pane says for each health kind."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from streamwatch.analysis.policy import When
from streamwatch.cli_post import _collage
from streamwatch.server.console import ConsoleData

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "streamwatch" / "server" / "static"


def test_models_list_columns_line_up() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "streamwatch", "models", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("\n\n")[0].splitlines()
    assert len(table) >= 3 and table[0].split()[0] == "id"
    for name in ("backend", "mode", "capabilities", "where"):  # each column starts where its header does
        col = table[0].index(name)
        for row in table[1:]:
            assert row[col - 2 : col] == "  " and row[col] != " ", (name, row)
    params_end = table[0].index("params") + len("params")  # right-aligned: ends under its header
    for row in table[1:]:
        assert row[params_end - 1] != " " and row[params_end] == " ", row


@pytest.mark.parametrize(("n", "text"), [(1, "collage of 1 fan image"), (2, "collage of 2 fan images"), (12, "collage of 12 fan images")])
def test_collage_counts_read_as_english(n: int, text: str) -> None:
    assert _collage(n) == text


def _demo() -> object:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("ev", "line"),
    [
        ({"type": "health", "offset": 3.0, "kind": "state", "state": "live", "reason": ""}, "[00:03.0] health live"),
        ({"type": "health", "offset": 3.0, "kind": "state", "state": "live"}, "[00:03.0] health live"),
        ({"type": "health", "offset": 61.5, "kind": "frozen", "active": True}, "[01:01.5] health frozen started"),
        ({"type": "health", "offset": 9.0, "kind": "state", "state": "ended", "reason": "eof"}, "[00:09.0] health ended: eof"),
    ],
)
def test_demo_health_lines_have_no_empty_reason(ev: dict[str, object], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    _demo().show(ev, {})  # type: ignore[attr-defined]
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize(("sampled", "ended_at"), [(63.0, 68.5), (0.0, 4.2), (120.0, 120.0), (59.9, 3600.25)])
def test_an_ended_tile_shows_the_final_offset(sampled: float, ended_at: float) -> None:
    for state in ("ended", "stopped"):
        status = {"s": {"state": state, "since": None, "offset": ended_at}}
        data = ConsoleData({"s"}, status, lambda _sid: sampled)
        assert data.streams_json()["streams"][0]["offset"] == round(max(sampled, ended_at), 3)
    status = {"s": {"state": "live", "since": None, "offset": 0.0}}  # live: where the stream is now
    assert ConsoleData({"s"}, status, lambda _sid: sampled).streams_json()["streams"][0]["offset"] == sampled


def _strings(lang: str) -> dict[str, str]:
    text = (STATIC / "console-i18n.js").read_text(encoding="utf-8")
    block = text.split(f"{lang}: {{", 1)[1].split("\n    }", 1)[0]
    return dict(re.findall(r'(\w+): "([^"]*)"', block))


def test_the_evidence_pane_names_each_health_kind() -> None:
    kinds = [k for t in get_args(When.model_fields["health"].annotation) for k in get_args(t)]  # Literal[...] | None
    assert {"black", "frozen", "outage"} <= set(kinds)
    for lang in ("zh", "en"):
        s = _strings(lang)
        texts = [s[f"no_frame_{k}"] for k in kinds]
        assert len(set(texts)) == len(texts), texts  # one text per kind
    zh = _strings("zh")
    assert "冻结" in zh["no_frame_frozen"] and "没有画面" not in zh["no_frame_frozen"]  # a frozen picture is a picture
    assert "黑" in zh["no_frame_black"] and "没有画面" not in zh["no_frame_black"]
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    assert '"no_frame_" + cond' in js and 'evid.kind === "health"' in js
