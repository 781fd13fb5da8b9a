"""tools/bench/vlm.py --router counts what it claims: a scripted server (tests/chat_server.py) answers each
request of a random plan well, with garbage, cut off, with 503s, too late or with a refusal, and the
benchmark's failures by kind, fallbacks and changed retries must match the plan."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
from chat_server import Answer, ChatServer

from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.registry import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
import vlm_router

GOOD = {"exposure": False, "setting": "indoor_stage", "brands": [], "text": [], "outfit": "", "objects": [], "confidence": 0.7}
# plan step → (server faults, answers, failed attempts by kind, served by)
STEPS = {
    "ok": (["ok"], ["good"], {}, "model"),
    "garbage": (["ok", "ok"], ["garbage", "garbage"], {"unusable": 2}, "local"),
    "cut": (["ok", "ok"], ["cut", "cut"], {"truncated": 2}, "local"),
    "down": (["503", "503", "503"], [], {"http": 2}, "local"),  # two attempts, then a probe that fails too
    "late": (["ok"], ["late"], {"timeout": 1}, "local"),  # answered after the deadline: no time left for a retry
    "refused": (["400"], [], {"refused": 1}, "none"),
}


def shaped(what: str, req: VLMRequest) -> Answer:
    compliance = "Answer only with JSON" in req.system
    if what == "cut":
        return Answer('{"exposure": false, "setting": "indo' if compliance else "the stage is", finish_reason="length")
    if what == "garbage":
        return Answer("\x01\ufffd\x02\ufffd\x03\ufffd")
    return Answer(json.dumps(GOOD) if compliance else "今天的舞台很美。", delay_s=1.6 if what == "late" else 0.0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(3))
def test_the_router_bench_counts_failures_by_kind(seed: int) -> None:
    rng = random.Random(seed)
    plan = [rng.choice(list(STEPS)) for _ in range(rng.randint(6, 12))]
    answers: list[str] = []

    def respond(req: VLMRequest) -> Answer:
        return shaped(answers.pop(0), req)

    with ChatServer(respond) as srv:
        srv.script.append("ok")  # the bench's warm-up
        answers.append("good")
        for step in plan:
            faults, said, _, _ = STEPS[step]
            srv.script.extend(faults)
            answers.extend(said)
        # JSON by instruction (a server that refuses or ignores response_format: the next test)
        spec = ModelSpec(id="bench", backend="openai", endpoint=srv.url, model_name="m", capabilities=list(vlm_router.ROLES),
                         timeout_s=1.0, json_schema=False)  # fmt: skip
        stats = asyncio.run(vlm_router.bench(spec, len(plan)))
    assert not answers and not srv.script  # the plan ran as written
    kinds: Counter[str] = Counter()
    served: Counter[str] = Counter()
    retried = 0
    for step in plan:
        kinds.update(STEPS[step][2])
        served[STEPS[step][3]] += 1
        retried += step in ("garbage", "cut", "down")
    got_kinds = sum((s.kinds for s in stats.values()), Counter())
    assert +got_kinds == +kinds
    assert sum(s.by_model for s in stats.values()) == served["model"]
    assert sum(s.by_local for s in stats.values()) == served["local"]
    assert sum(s.by_none for s in stats.values()) == served["none"]
    assert sum(s.retries for s in stats.values()) == retried
    changed = sum(sum(s.changed.values()) for s in stats.values())
    assert changed == sum(step in ("garbage", "cut") for step in plan)  # a retry after 503s repeats the request
    assert sum(s.unchanged for s in stats.values()) == plan.count("down")
    lines = vlm_router.table(stats, 1.0)
    assert lines[0].split()[:4] == ["role", "req", "model", "local"] and len(lines) >= 1 + len(stats)


@pytest.mark.timeout(60)
def test_a_schema_the_server_ignores_is_counted_once_then_asked_by_instruction() -> None:
    """Compliance with response_format on a server that answers 200 with something else: the first attempt is
    'schema ignored', the retry (by instruction) 'unusable'; later requests are asked by instruction."""
    answers = ["good", "garbage", "garbage", "good", "good", "garbage", "garbage"]  # warm-up, compliance, reply, qa, compliance
    with ChatServer(lambda req: shaped(answers.pop(0), req)) as srv:
        spec = ModelSpec(id="bench", backend="openai", endpoint=srv.url, model_name="m", capabilities=list(vlm_router.ROLES))
        stats = asyncio.run(vlm_router.bench(spec, 4))  # compliance, reply, qa, compliance
        sent_schema = ["response_format" in r for r in srv.requests]
    kinds = stats[vlm_router.Capability.COMPLIANCE].kinds
    assert not answers
    assert +kinds == Counter({"unusable": 3, "schema ignored": 1}), kinds
    assert sent_schema[1] and sent_schema.count(True) == 1  # only the first compliance attempt sent one (not the warm-up)
