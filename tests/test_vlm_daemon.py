"""The compliance model in the daemon: escalated and periodic frames go to a real OpenAI-compatible
server; its answers become alerts through the same policy (evidence ``vlm:<model>``) and scene tags;
late answers are marked late, not lost."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from chat_server import ChatServer

from streamwatch.app import Daemon
from streamwatch.config import load_settings
from streamwatch.events.model import AlertEvent, SceneEvent
from streamwatch.events.store import EventStore
from streamwatch.vlm.backend import VLMRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_concert_clip import write_concert_clip


@pytest.fixture(scope="module")
def concert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("concert") / "concert.mp4"
    return path, write_concert_clip(path)


def judge(req: VLMRequest) -> str:
    """A stand-in compliance model: flags exposure on the frame whose OCR context shows the energy-drink ad."""
    flagged = "Monster" in req.prompt
    return json.dumps(
        {
            "exposure": flagged,
            "setting": "indoor_stage",
            "brands": ["Monster Energy"] if flagged else [],
            "text": [],
            "outfit": "stage costume",
            "objects": ["photo"],
            "confidence": 0.62 if flagged else 0.9,
        }
    )


def test_escalated_and_periodic_frames_get_a_second_look(concert: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    clip, labels = concert
    with ChatServer(judge) as srv:
        registry = tmp_path / "registry.json"
        model = {"id": "judge", "backend": "openai", "endpoint": srv.url, "model_name": "j", "capabilities": ["compliance"]}
        registry.write_text(json.dumps({"models": [model], "roles": {"compliance": ["judge", "local"]}}))
        settings = load_settings(
            None,
            {
                "data_dir": tmp_path / "d",
                "streams": [{"id": "s", "source": str(clip)}],
                "analysis": {"analyzers": ["ocr", "qr"]},
                "vlm": {"registry": registry, "compliance_every_s": 30, "compliance_deadline_s": 0.001},
            },
        )
        daemon = Daemon(settings, serve=False)
        asyncio.run(daemon.run())
        prompts = [r["messages"][-1]["content"][-1]["text"] for r in srv.requests]
    store = EventStore(tmp_path / "d")
    events = list(store.events("s"))
    scenes = [e for e in events if isinstance(e, SceneEvent)]
    vlm_alerts = [e for e in events if isinstance(e, AlertEvent) and e.evidence.kind.startswith("vlm:")]
    brand_at = next(p["offset"] for p in labels["planted"] if p["rule"] == "unauthorized_brand")
    # one call per escalated frame (unauthorized_brand escalates) plus one periodic frame per 30 s of stream
    assert sum("Monster" in p for p in prompts) >= 1
    assert 3 <= len(prompts) <= 6, len(prompts)
    assert len(scenes) == len(prompts)
    assert all("setting=indoor_stage" in s.tags and s.model == "judge" and s.frame for s in scenes)
    exposure = [a for a in vlm_alerts if a.rule == "vlm_exposure"]
    assert len(exposure) == 1 and abs(exposure[0].offset - brand_at) <= 1.01
    assert exposure[0].evidence.kind == "vlm:judge" and exposure[0].evidence.frame
    # no nudity detector ran on that frame: the model's verdict alone is not critical, and says so;
    # its confidence is the model's own answer
    assert exposure[0].severity.value == "high" and "model only" in exposure[0].message
    assert exposure[0].confidence == pytest.approx(0.62)
    # the model's brand answer goes through the same text rule; the OCR alert for it came first, so the
    # cooldown keeps it to one alert for that evidence
    assert [a.rule for a in events if isinstance(a, AlertEvent)].count("unauthorized_brand") == 1
    # every answer came after the (tiny) deadline: marked late and counted, not dropped
    assert all(a.late for a in vlm_alerts) and all(s.late for s in scenes)
    assert daemon.metrics.registry.get_sample_value("streamwatch_vlm_late_total") == len(scenes)
    assert daemon.metrics.registry.get_sample_value("streamwatch_vlm_requests_total", {"model": "judge", "outcome": "ok"}) == len(prompts)


def test_the_report_lists_scenes_switches_and_models(tmp_path: Path) -> None:
    from streamwatch.events.model import AnswerEvent, HealthEvent, HealthKind
    from streamwatch.report import collect, render
    from streamwatch.report.build import build_report
    from streamwatch.report.tabular import report_dict

    store = EventStore(tmp_path / "d")
    frame = store.save_image("s", b"\xff\xd8\xff\xe0fakejpeg")
    store.append(
        [
            SceneEvent(
                stream="s", at=1000.0, offset=30.0, tags=("setting=indoor_stage", "outfit=white dress"), model="qwen3-vl-8b", frame=frame
            ),
            HealthEvent(stream="s", at=1001.0, offset=31.0, kind=HealthKind.MODEL, duration_s=2.5, reason="qa: a → b (by admin)"),
            AnswerEvent(stream="s", at=1002.0, offset=32.0, question="q", text="t", asker="m", model="b"),
        ]
    )
    inputs = collect(store, "s")
    html = render(inputs, "html")
    assert "setting=indoor_stage, outfit=white dress" in html and "qa: a → b" in html and "data:image/jpeg" in html
    d = report_dict(build_report("s", list(inputs.events)))
    assert d["summary"]["by_model"] == {"qwen3-vl-8b": 1, "b": 1} and d["summary"]["model_switches"] == 1
    assert d["scenes"][0]["tags"] == ["setting=indoor_stage", "outfit=white dress"]
    store.close()
