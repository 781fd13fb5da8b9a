"""The VLM tier's health notices (issue 21): roles that fall back, breakers that open and close, output
unusable N times in a row: each change makes exactly one notice, recoveries make the matching one,
and a real router driven by failing backends produces them through the daemon's wiring."""

from __future__ import annotations

import asyncio
import itertools
import random

import numpy as np
import pytest

from streamwatch.errors import VLMOutputError, VLMUnavailable
from streamwatch.runtime.model_health import ModelHealth, ModelNotice, ModelWatch, router_snapshot
from streamwatch.vlm.backend import VLMRequest, VLMResult
from streamwatch.vlm.registry import Capability, ModelSpec, Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_unusable_streaks_make_one_notice_each_way(n: int, seed: int) -> None:
    """Random outcome sequences: a notice exactly when a streak of n unusable answers is reached (errors and
    timeouts neither count nor break it), one recovery at the next ok, nothing else."""
    rng = random.Random(seed)
    health = ModelHealth(unusable_after=n)
    outcomes = [rng.choice(["ok", "bad_output", "bad_output", "bad_output", "error", "timeout", "skipped"]) for _ in range(200)]
    notices = [x for i, o in enumerate(outcomes) for x in health.observe("m", o, float(i))]
    expected: list[bool] = []
    streak, failing = 0, False
    for o in outcomes:
        if o == "bad_output":
            streak += 1
            if streak == n and not failing:
                failing = True
                expected.append(True)
        elif o == "ok":
            streak = 0
            if failing:
                failing = False
                expected.append(False)
    assert [x.active for x in notices] == expected
    assert all(x.model == "m" and x.role is None for x in notices)
    assert all(f"{n} unusable answers" in x.reason for x in notices if x.active)


def test_streaks_are_per_model() -> None:
    health = ModelHealth(unusable_after=2)
    seq = [("a", "bad_output"), ("b", "bad_output"), ("b", "ok"), ("a", "bad_output"), ("b", "bad_output")]
    notices = [x for m, o in seq for x in health.observe(m, o, 0.0)]
    assert [(x.model, x.active) for x in notices] == [("a", True)]


CHAINS = {"compliance": ["a", "b", "local"], "reply": ["b", "local"], "qa": ["a", "local"]}


@pytest.mark.parametrize("states", list(itertools.product(["closed", "open", "half_open"], repeat=2)))
def test_breakers_and_fallbacks_from_snapshots(states: tuple[str, str]) -> None:
    """Every pair of breaker states after all-closed, then back to all-closed: notices for exactly the changes."""
    health = ModelHealth()
    assert health.update(CHAINS, {"a": "closed", "b": "closed"}, 0.0) == []
    a, b = states
    first = health.update(CHAINS, {"a": a, "b": b}, 1.0)
    opened = {m for m, s in (("a", a), ("b", b)) if s == "open"}
    assert {x.model for x in first if x.role is None and x.active} == opened
    assert "circuit open" in " ".join(x.reason for x in first if x.role is None) or not opened
    # roles whose primary is open fall back to the next model not open (local at the end)
    serving = {r: next(m for m in c if m == "local" or m not in opened) for r, c in CHAINS.items()}
    fell = {x.role: x.reason for x in first if x.role is not None}
    assert set(fell) == {r for r, c in CHAINS.items() if serving[r] != c[0]}
    for role, reason in fell.items():
        to = "local templates" if serving[role] == "local" else serving[role]
        assert f"falls back from {CHAINS[role][0]} to {to}" in reason
    assert all(x.active for x in first)
    back = health.update(CHAINS, {"a": "closed", "b": "closed"}, 2.0)
    assert all(not x.active for x in back)
    # half_open → closed is a breaker closing too; roles come back exactly where they fell
    closed_again = {m for m, s in (("a", a), ("b", b)) if s != "closed"}
    assert {x.model for x in back if x.role is None} == closed_again
    assert {x.role for x in back if x.role is not None} == set(fell)
    assert health.update(CHAINS, {"a": "closed", "b": "closed"}, 3.0) == []  # no change, no notice


class Flaky:
    """A backend that fails in a given way for its first ``bad`` requests, then answers."""

    def __init__(self, spec: ModelSpec, fail: type[Exception], bad: int) -> None:
        self.spec, self.fail, self.bad, self.calls = spec, fail, bad, 0

    @property
    def model(self) -> str:
        return self.spec.id

    async def generate(self, request: VLMRequest) -> VLMResult:
        self.calls += 1
        if self.calls <= self.bad:
            raise self.fail(f"{self.spec.id}: broken answer {self.calls}")
        return VLMResult("fine", self.spec.id)

    async def warm(self) -> None:
        await self.generate(VLMRequest("warm"))

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("fail", [VLMOutputError, VLMUnavailable])
def test_a_real_router_publishes_fallback_breaker_and_recovery(fail: type[Exception]) -> None:
    """The daemon's wiring (observer + snapshot) on a real ModelRouter: the primary fails 4 attempts (2 requests),
    its breaker opens, compliance falls back to local; after the cool-down a probe succeeds: closed, back."""
    spec = ModelSpec(id="judge", backend="openai", endpoint="http://127.0.0.1:9/v1", model_name="j", capabilities=[Capability.COMPLIANCE])
    registry = Registry(RegistrySpec(models=[spec], roles={Capability.COMPLIANCE: ["judge", "local"]}))
    now = [0.0]
    published: list[tuple[ModelNotice, tuple[str, ...]]] = []

    async def publish(n: ModelNotice, streams: object) -> None:
        published.append((n, tuple(streams)))  # type: ignore[arg-type]

    async def go() -> None:
        watch = ModelWatch(ModelHealth(unusable_after=3), targets=lambda: ["s1", "s2"])
        factory = lambda s: Flaky(s, fail, 4)  # noqa: E731
        router = ModelRouter(registry, factory=factory, breaker_cooldown_s=10, observe=watch.observe, clock=lambda: now[0])
        watch.attach(lambda: router_snapshot(router))
        runner = asyncio.create_task(watch.run(publish, every_s=0.01))

        async def task(backend: Flaky) -> str:  # type: ignore[type-arg]
            return (await backend.generate(VLMRequest("q"))).text

        async def local() -> str:
            return "template"

        served = []
        for _ in range(3):
            served.append((await router.run(Capability.COMPLIANCE, task, local=local))[1])
            await asyncio.sleep(0.05)
        now[0] = 11.0  # the cool-down has passed: the next request is the probe, and it succeeds
        served.append((await router.run(Capability.COMPLIANCE, task, local=local))[1])
        await asyncio.sleep(0.05)
        runner.cancel()
        await watch.flush(publish)
        assert served == ["local", "local", "local", "judge"]

    asyncio.run(go())
    reasons = [(n.active, n.reason) for n, _ in published]
    assert all(streams == ("s1", "s2") for _, streams in published)
    failing = [r for a, r in reasons if a]
    assert any("circuit open" in r for r in failing) and any("compliance: falls back from judge to local" in r for r in failing)
    assert any("unusable answers" in r for r in failing) == (fail is VLMOutputError)  # errors are not "unusable output"
    recovered = [r for a, r in reasons if not a]
    assert any("circuit closed" in r for r in recovered) and any("compliance: back on judge" in r for r in recovered)
    assert [a for a, _ in reasons].index(False) > max(i for i, (a, _) in enumerate(reasons) if a)  # recoveries come after


@pytest.mark.parametrize("new_state", ["closed", "open"])
def test_a_switch_is_no_recovery(new_state: str) -> None:
    """A role switched to another model (a new primary) is no 'back on' notice; only a new primary that cannot
    serve makes a fallback notice."""
    health = ModelHealth()
    health.update({"qa": ["a", "b", "local"]}, {"a": "closed", "b": "closed"}, 0.0)
    notices = health.update({"qa": ["b", "a", "local"]}, {"a": "closed", "b": new_state}, 1.0)
    fell = [n for n in notices if n.role == "qa"]
    if new_state == "closed":
        assert fell == []
    else:
        assert [(n.active, n.reason) for n in fell] == [(True, "qa: falls back from b to a (b is failing)")]


# --- a role that falls back for single failed requests, before any breaker opens ----------------------------

FAILURES = ("garbled", "cut", "down")  # unusable text, an answer cut off without a full sentence, HTTP 503 (the probe too)


def _failed_qa(kind: str) -> tuple[list[str], list[object]]:
    """The server's script (one fault per HTTP request) and answers for one Q&A request whose model fails."""
    from chat_server import Answer

    if kind == "garbled":
        bad = Answer("\x01\x02\ufffd\ufffd\x03\ufffd ok\x04\ufffd")
        return ["ok", "ok"], [bad, bad]
    if kind == "cut":
        cut = Answer("the stage lights are and the", finish_reason="length")
        return ["ok", "ok"], [cut, cut]
    return ["503", "503", "503"], []  # two attempts and the probe (a model that fails a probe is failing)


@pytest.mark.parametrize("seed", range(6))
def test_a_role_that_falls_back_once_is_news_once_per_episode(seed: int) -> None:
    """A scripted server (tests/chat_server.py) behind a real router whose breakers never open: random runs
    of failed Q&A requests (garbled text, cut off, server down) between answered ones, replies always answered.
    Each run of failures makes exactly one 'qa: falls back' notice with the failure in it, the next answer
    one 'qa: back on'; replies, served by the same model, make none."""
    from chat_server import Answer, ChatServer

    from streamwatch.vlm.service import VLMService

    rng = random.Random(seed)
    plan = [rng.choice(["ok", "ok", *FAILURES]) for _ in range(rng.randint(6, 10))]
    answers: list[object] = []

    def respond(_req: VLMRequest) -> Answer:
        return answers.pop(0)  # type: ignore[return-value]

    published: list[ModelNotice] = []

    async def publish(n: ModelNotice, _streams: object) -> None:
        published.append(n)

    with ChatServer(respond) as server:
        spec = ModelSpec(id="m", backend="openai", endpoint=server.url, model_name="m",
                         capabilities=[Capability.QA, Capability.REPLY], timeout_s=10)  # fmt: skip
        registry = Registry(RegistrySpec(models=[spec], roles={Capability.QA: ["m", "local"], Capability.REPLY: ["m", "local"]}))

        async def go() -> list[str]:
            watch = ModelWatch(ModelHealth(unusable_after=1000))
            router = ModelRouter(registry, breaker_failures=1000, observe=watch.observe)
            watch.attach(lambda: router_snapshot(router))
            runner = asyncio.create_task(watch.run(publish, every_s=0.01))
            service = VLMService(router)
            served = []
            try:
                for step in plan:
                    if step == "ok":
                        server.script += ["ok"]
                        answers.append(Answer("今天的舞台很美。"))
                    else:
                        script, bad = _failed_qa(step)
                        server.script += script
                        answers.extend(bad)
                    served.append((await service.answer("舞台上有什么？", None, _evidence())).model)
                    server.script += ["ok"]
                    answers.append(Answer("谢谢你的支持！"))
                    assert (await service.reply(_persona(), np.zeros((64, 64, 3), np.uint8), _evidence(), "hi", "k")).model == "m"
                    await asyncio.sleep(0.03)
            finally:
                runner.cancel()
                await watch.flush(publish)
                await router.close()
            return served

        served = asyncio.run(go())
    assert served == ["m" if s == "ok" else "local" for s in plan]
    assert not answers and not server.script  # every scripted answer was asked for: the plan ran as written
    expected: list[tuple[bool, str]] = []
    failing = False
    for step in plan:
        if step != "ok" and not failing:
            expected.append((True, step))
        elif step == "ok" and failing:
            expected.append((False, "ok"))
        failing = step != "ok"
    role_notices = [n for n in published if n.role is not None]
    assert all(n.role == "qa" and n.model == "m" for n in role_notices), role_notices  # replies never fell back
    assert [n.active for n in role_notices] == [a for a, _ in expected]
    words = {"garbled": "garbled", "cut": "cut off", "down": "503"}
    for n, (active, kind) in zip(role_notices, expected, strict=True):
        if active:
            assert n.reason.startswith("qa: falls back from m to local templates") and words[kind] in n.reason, (kind, n.reason)
        else:
            assert n.reason == "qa: back on m"
    assert not [n for n in published if n.role is None]  # no breaker opened, no streak notice: the role's notices alone


def _evidence() -> object:
    from streamwatch.vlm.local import ImageEvidence

    return ImageEvidence(64, 64)


def _persona() -> object:
    from streamwatch.vlm.persona import Persona

    return Persona(id="p", name="小雪")


@pytest.mark.parametrize("open_role", ["compliance", "reply", "qa"])
def test_a_breaker_open_for_one_role_moves_only_that_role(open_role: str) -> None:
    """Breakers are per (model, role): the model's breaker open for one role falls back that role only."""
    from streamwatch.runtime.model_health import Served

    chains = {"compliance": ["a", "local"], "reply": ["a", "local"], "qa": ["a", "local"]}
    health = ModelHealth()
    served = {r: Served("a", "", 1) for r in chains}
    assert health.update(chains, {"a": "closed"}, 0.0, served, {("a", r): "closed" for r in chains}) == []
    per_role = {("a", r): "open" if r == open_role else "closed" for r in chains}
    notices = health.update(chains, {"a": "open"}, 1.0, served, per_role)
    assert [n.role for n in notices if n.role] == [open_role]


@pytest.mark.parametrize("answers_after_switch", [0, 1])
def test_answers_from_before_a_switch_say_nothing_of_the_new_chain(answers_after_switch: int) -> None:
    """qa fell back from a to b (one failed request); then b is switched in as primary: the old answer (by b) is
    no news; a new answer by a (now second) is a fallback from b."""
    from streamwatch.runtime.model_health import Served

    health = ModelHealth()
    breakers = {"a": "closed", "b": "closed"}
    health.update({"qa": ["a", "b", "local"]}, breakers, 0.0, {"qa": Served("a", "", 1)})
    fell = health.update({"qa": ["a", "b", "local"]}, breakers, 1.0, {"qa": Served("b", "a: broken", 2)})
    assert [(n.active, n.reason) for n in fell] == [(True, "qa: falls back from a to b (a: broken)")]
    after = health.update({"qa": ["b", "a", "local"]}, breakers, 2.0, {"qa": Served("b", "a: broken", 2)})
    assert after == []
    if answers_after_switch:
        later = health.update({"qa": ["b", "a", "local"]}, breakers, 3.0, {"qa": Served("a", "b: down", 3)})
        assert [(n.active, n.reason) for n in later] == [(True, "qa: falls back from b to a (b: down)")]
