"""The VLM tier's health notices (issue 21): roles that fall back, breakers that open and close, output
unusable N times in a row: each change makes exactly one notice, recoveries make the matching one,
and a real router driven by failing backends produces them through the daemon's wiring."""

from __future__ import annotations

import asyncio
import itertools
import random

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
