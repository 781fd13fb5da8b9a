"""The VLM tier against a real server, through streamwatch's own router and client (``vlm.py --router``).

Requests go round-robin through :class:`~streamwatch.vlm.service.VLMService` (compliance, persona reply,
live Q&A) on real photos, with a chain ``[bench, local]`` and a breaker that never opens (every request
asks the model). Per role it prints: requests, answered by the model / by the local fallback, failed
attempts by kind, end-to-end latency p50/p95/max against ``timeout_s`` (and how many went over it), and
the retries: how many changed the request (budget, thinking, temperature, instruction) and what.

Failure kinds, per attempt: ``truncated`` (cut off: finish_reason length, JSON or reasoning never
closed), ``schema ignored`` (a 200 that ignored response_format), ``unusable`` (an answer that is no
answer: bad JSON, wrong schema, garbage), ``timeout``, ``refused`` (the request's input: HTTP 4xx),
``http`` (unreachable, 5xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamwatch.errors import VLMError, VLMInputError, VLMOutputError, VLMTruncated
from streamwatch.vlm.backend import VLMBackend, VLMRequest, VLMResult
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.registry import Capability, ModelSpec, Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter, create_backend
from streamwatch.vlm.service import VLMService

KINDS = ("truncated", "unusable", "schema ignored", "timeout", "refused", "http")
ROLES = (Capability.COMPLIANCE, Capability.REPLY, Capability.QA)
PERSONA = Persona(id="bench", name="小雪", personality="一位开朗的歌手", reply_length=40)
FANS = ("今天的舞台好美！", "你穿的是什么牌子？", "Where is this concert?", "唱一首新歌吧")
QUESTIONS = ("画面里有什么？", "What is on the screen right now?", "现场有多少人？")


def kind_of(e: BaseException) -> str:
    """An attempt's failure kind (see the module doc)."""
    if isinstance(e, VLMTruncated):
        return "truncated"
    if isinstance(e, VLMOutputError) and "ignored the JSON schema" in str(e):
        return "schema ignored"
    if isinstance(e, VLMInputError):
        return "refused"
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ValueError):
        return "unusable"
    return "http"


def changes(first: VLMRequest, second: VLMRequest) -> tuple[str, ...]:
    """What a retry changed (empty: the identical request)."""
    out = []
    if second.max_tokens != first.max_tokens:
        out.append(f"budget {first.max_tokens}→{second.max_tokens}")
    if second.thinking != first.thinking:
        out.append(f"thinking {first.thinking}→{second.thinking}")
    if second.temperature != first.temperature:
        out.append(f"temperature {first.temperature:g}→{second.temperature:g}")
    if second.prompt != first.prompt:
        out.append("instruction")
    return tuple(out)


@dataclass
class Recorder:
    """Wraps each backend the router creates: the requests one router call sent and how each attempt ended."""

    requests: list[VLMRequest] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # per attempt: "ok" or a failure kind
    tokens: int = 0  # output tokens the server reported (answers cut off included)

    def factory(self, spec: ModelSpec) -> VLMBackend:
        return _Recording(create_backend(spec), self)

    def observe(self, _model: str, outcome: str, _seconds: float) -> None:
        """The router's observer: an attempt that failed in the task (not in the backend) was unusable."""
        if len(self.kinds) < len(self.requests):
            self.kinds.append({"ok": "ok", "bad_output": "unusable", "timeout": "timeout", "refused": "refused"}.get(outcome, "http"))

    def reset(self) -> None:
        self.requests, self.kinds, self.tokens = [], [], 0


class _Recording:
    def __init__(self, inner: VLMBackend, rec: Recorder) -> None:
        self.inner, self.rec = inner, rec

    @property
    def model(self) -> str:
        return self.inner.model

    async def generate(self, request: VLMRequest) -> VLMResult:
        self.rec.requests.append(request)
        try:
            result = await self.inner.generate(request)
        except (VLMError, TimeoutError) as e:
            self.rec.kinds.append(kind_of(e))
            if isinstance(e, VLMTruncated) and isinstance(e.result, VLMResult):
                self.rec.tokens += e.result.completion_tokens
            raise
        self.rec.tokens += result.completion_tokens
        return result

    async def warm(self) -> None:
        await self.inner.warm()

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class RoleStats:
    latencies: list[float] = field(default_factory=list)
    by_model: int = 0
    by_local: int = 0
    by_none: int = 0  # refused: the request failed alone (its input), no fallback
    kinds: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    changed: Counter[str] = field(default_factory=Counter)  # what changed → retries
    unchanged: int = 0
    tokens: int = 0


def photos(n: int) -> list[np.ndarray]:
    import skimage.data
    from skimage.util import img_as_ubyte

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "horse", "coins"]
    out = []
    for i in range(n):
        img = img_as_ubyte(getattr(skimage.data, names[i % len(names)])())
        out.append(np.ascontiguousarray((np.stack([img] * 3, -1) if img.ndim == 2 else img)[..., :3]))
    return out


async def bench(spec: ModelSpec, requests: int) -> dict[Capability, RoleStats]:
    rec = Recorder()
    registry = Registry(RegistrySpec(models=[spec], roles={r: [spec.id, "local"] for r in ROLES}))
    router = ModelRouter(registry, factory=rec.factory, breaker_failures=10**9, observe=rec.observe)
    service = VLMService(router, reply_tokens=spec.max_output_tokens, answer_tokens=spec.max_output_tokens,
                         compliance_tokens=spec.max_output_tokens)  # fmt: skip
    router.start()
    stats: dict[Capability, RoleStats] = defaultdict(RoleStats)
    images = photos(8)
    ev = ImageEvidence(512, 512)
    try:
        await router._slot(spec.id).backend.warm()  # the model's load is not a request's latency
        for i in range(requests):
            role, img = ROLES[i % len(ROLES)], images[i % len(images)]
            rec.reset()
            t0 = time.perf_counter()
            try:
                model = await _ask(service, role, img, ev, i, spec.id)
            except VLMInputError:
                model = ""
            s = stats[role]
            s.latencies.append(time.perf_counter() - t0)
            s.by_model += model == spec.id
            s.by_local += model == "local"
            s.by_none += model == ""
            s.kinds.update(k for k in rec.kinds if k != "ok")
            s.tokens += rec.tokens
            for first, second, why in zip(rec.requests, rec.requests[1:], rec.kinds, strict=False):
                s.retries += 1
                what = changes(first, second)
                if what:
                    s.changed[f"{', '.join(what)} (after {why})"] += 1
                else:
                    s.unchanged += 1
    finally:
        await router.close()
    return stats


async def _ask(service: VLMService, role: Capability, img: np.ndarray, ev: ImageEvidence, i: int, mid: str) -> str:
    """One request of ``role`` through the service; the id of the model that answered."""
    if role is Capability.COMPLIANCE:
        return "local" if await service.compliance(img, ev) is None else mid
    if role is Capability.REPLY:
        return (await service.reply(PERSONA, img, ev, FANS[i % len(FANS)], f"k{i}")).model
    return (await service.answer(QUESTIONS[i % len(QUESTIONS)], img, ev)).model


def table(stats: dict[Capability, RoleStats], timeout_s: float) -> list[str]:
    head = f"{'role':<11} {'req':>4} {'model':>6} {'local':>6} " + " ".join(
        f"{k:>9}" for k in ("cut", "unusable", "schema", "timeout", "refused", "http")
    )
    head += f" {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'>timeout':>8} {'retries':>8} {'changed':>8} {'tok/s':>7}"
    lines = [head]
    for role, s in stats.items():
        xs = s.latencies
        over = sum(x > timeout_s for x in xs)
        rate = s.tokens / sum(xs)
        counts = " ".join(f"{s.kinds.get(k, 0):>9}" for k in KINDS)
        lines.append(
            f"{role.value:<11} {len(xs):>4} {s.by_model:>6} {s.by_local:>6} {counts} {np.percentile(xs, 50):>7.2f} "
            f"{np.percentile(xs, 95):>7.2f} {max(xs):>7.2f} {over:>8} {s.retries:>8} {sum(s.changed.values()):>8} {rate:>7.1f}"
        )
    note = "tok/s: output tokens over request seconds; req - model - local: refused; a retry after a server error repeats the request"
    lines.append(f"(failures per attempt; latency end to end per request, timeout_s = {timeout_s:g}; {note})")
    for role, s in stats.items():
        for what, n in s.changed.most_common():
            lines.append(f"  {role.value} retry changed: {what} ×{n}")
        if s.unchanged:
            lines.append(f"  {role.value} retry unchanged (after a server error or timeout): ×{s.unchanged}")
    return lines


@contextlib.contextmanager
def started(which: str, tmp: Path) -> Iterator[tuple[str, str]]:
    """A tiny random-weight checkpoint served by a real server: (base URL, model name)."""
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tools"), str(root / "tests")]
    import tiny_vlm
    from real_servers import hf_serve, llama_server, llama_server_binary

    if which == "hf":
        folder = tiny_vlm.build(tmp / "qwen3_vl", "qwen3_vl")
        with hf_serve(tmp / "hf.log") as srv:
            yield srv.url, str(folder)
        return
    binary, convert = llama_server_binary(), tiny_vlm.default_convert_script()
    if binary is None or convert is None:
        raise SystemExit("llama-server is not built: run `make llama-server` first")
    text, mmproj = tiny_vlm.to_gguf(tiny_vlm.build(tmp / "qwen2_5_vl", "qwen2_5_vl", vision_depth=4), convert)
    with llama_server(binary, text, mmproj, tmp / "llama.log") as srv:
        yield srv.url, "tiny"


def run(url: str, model: str, requests: int, timeout_s: float, max_tokens: int, server: str | None, api_key_env: str | None,
        say: Callable[[str], None] = print) -> None:  # fmt: skip
    spec = ModelSpec(id="bench", backend="openai", endpoint=url, model_name=model, api_key_env=api_key_env, server=server or "other",
                     capabilities=list(ROLES), timeout_s=timeout_s, max_output_tokens=max_tokens)  # fmt: skip
    logging.basicConfig(level=logging.ERROR)  # the attempts' warnings are what the table counts
    stats = asyncio.run(bench(spec, requests))
    say(f"model {model} at {url}: {requests} requests, timeout_s {timeout_s:g}, max_output_tokens {max_tokens}")
    for line in table(dict(sorted(stats.items(), key=lambda kv: ROLES.index(kv[0]))), timeout_s):
        say(line)
