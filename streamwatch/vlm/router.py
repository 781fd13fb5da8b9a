"""Roles → failover chains of backends: retry once, fail over, circuit breakers, hot switching.

``run(role, task, local=…)`` walks the role's chain: a model whose breaker for the role is open is
skipped; a model that raises a :class:`~streamwatch.errors.VLMError` (unreachable, timeout, unusable
or cut-off output) is tried once more with a changed request, inside one deadline (its ``timeout_s``
from the moment it is asked: :mod:`streamwatch.vlm.attempts`), then its breaker for the role records
a failure and the next model serves. Breakers are per (model, role). ``local`` in a chain is the
template fallback the caller supplies. The result says which model produced it; :meth:`status` says
per (model, role) how the breaker stands and how many answers in a row were unusable, and per role
which model served last and why the chain fell back (:mod:`streamwatch.vlm.routestate`).

A request whose *input* the model refuses (:class:`~streamwatch.errors.VLMInputError`: HTTP 4xx, an
image the processor rejects) fails alone: it is not retried, its breaker records nothing and no
other model is asked. A request answered twice with a server error
(:class:`~streamwatch.errors.VLMServerError`, e.g. vLLM's 500 for a 20-px image) is followed by one
known-good probe (the backend's ``warm``): if the model answers it, the failure is this input's
(raised as ``VLMInputError``); if not, the model's breaker records the failure and the chain goes on.

With an :class:`AdmissionGate` (cluster mode: one in-flight budget per model across all workers) each
model's attempts run inside one of its slots. A model whose slots stay busy for ``admission_wait_s``
(default: the model's ``timeout_s``) is *busy*, not failing: observed as ``busy``, no breaker change,
and the request goes down the chain as if the model were unavailable.

``switch(role, model)`` loads and warms the new model *before* the chain changes (one assignment,
so no request sees a half-loaded model); requests already running finish on the old backend, which
is closed once it is idle and no chain uses it. Switches per role are rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from streamwatch.errors import VLMError, VLMTimeout, VLMUnavailable
from streamwatch.vlm.attempts import FAILED, AdmissionGate, ModelTurn, Observer
from streamwatch.vlm.backend import VLMBackend
from streamwatch.vlm.registry import LOCAL, Capability, ModelSpec, Registry
from streamwatch.vlm.routestate import RouterStatus, RouteTracker

logger = logging.getLogger(__name__)

T = TypeVar("T")
Factory = Callable[[ModelSpec], VLMBackend]
_TIMED_OUT = ("deadline", "no answer within", "no time left")
__all__ = ["AdmissionGate", "ModelRouter", "Observer", "SwitchRefused", "SwitchResult", "create_backend"]


class SwitchRefused(VLMError):
    """A switch came sooner than the minimum interval, or names a model that cannot serve the role."""


def create_backend(spec: ModelSpec) -> VLMBackend:
    """The backend for a registry entry (heavy imports only for the kind asked for)."""
    if spec.backend == "openai":
        from streamwatch.vlm.openai_compat import OpenAIBackend

        return OpenAIBackend(spec)
    if spec.backend == "hf":
        from streamwatch.vlm.hf import TransformersBackend

        return TransformersBackend(spec)
    raise VLMUnavailable(f"model {spec.id!r} has no backend to load (backend {spec.backend!r})")


@dataclass
class _Slot:
    spec: ModelSpec
    backend: VLMBackend
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(frozen=True, slots=True)
class SwitchResult:
    role: Capability
    old: str
    new: str
    seconds: float  # load + warm-up


class ModelRouter:
    def __init__(
        self,
        registry: Registry,
        *,
        factory: Factory = create_backend,
        breaker_failures: int = 2,
        breaker_cooldown_s: float = 30.0,
        min_switch_interval_s: float = 120.0,
        observe: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        admission: AdmissionGate | None = None,
        admission_wait_s: float | None = None,
    ) -> None:
        self.registry = registry
        self.factory = factory
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.min_switch_interval_s = min_switch_interval_s
        self.observe = observe or (lambda _m, _o, _s: None)
        self.clock = clock
        self.admission = admission
        self.admission_wait_s = admission_wait_s
        self.chains: dict[Capability, list[str]] = {r: list(c) for r, c in registry.roles.items()}
        self.tracker = RouteTracker(breaker_failures, breaker_cooldown_s)
        self._turn = ModelTurn(self.tracker, lambda m, o, s: self.observe(m, o, s), clock, admission, admission_wait_s)
        self._slots: dict[str, _Slot] = {}
        self._last_switch: dict[Capability, float] = {}
        self._switch_lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    def _slot(self, model_id: str) -> _Slot:
        slot = self._slots.get(model_id)
        if slot is None:
            spec = self.registry.get(model_id)
            slot = _Slot(spec, self.factory(spec))
            self._slots[model_id] = slot
        return slot

    def start(self) -> None:
        """Create the backends of every chain (HTTP clients; in-process models load on first use or warm-up)."""
        for chain in self.chains.values():
            for mid in chain:
                if mid != LOCAL:
                    self._slot(mid)

    def primary(self, role: Capability) -> str:
        return self.chains[role][0]

    def state(self) -> dict[str, str]:
        """Breaker state per model, the most open over its roles (closed | open | half_open)."""
        return {mid: state for mid, state in self.tracker.worst().items() if mid in self._slots}

    def status(self) -> RouterStatus:
        """Per (model, role): breaker, unusable answers in a row, last failure; per role: who served last and why not the first."""
        return self.tracker.status(self.chains)

    async def run(
        self,
        role: Capability,
        task: Callable[[VLMBackend], Awaitable[T]],
        *,
        local: Callable[[], Awaitable[T]] | None = None,
        deadline_s: float | None = None,
    ) -> tuple[T, str]:
        """The first answer down the role's chain, and the id of the model that gave it.

        Each model has its ``timeout_s`` from the moment it is asked; ``deadline_s`` bounds the whole chain
        (models after it are not asked; ``local`` still answers)."""
        loop = asyncio.get_running_loop()
        asked: float | None = loop.time()  # the first model asked has its timeout from this moment
        end = loop.time() + deadline_s if deadline_s is not None else float("inf")
        errors: list[str] = []
        chain = list(self.chains[role])  # a copy: a switch during this call does not reorder it
        for mid in chain:
            if mid == LOCAL:
                if local is not None:
                    self._served(role, chain, LOCAL, errors)
                    return await local(), LOCAL
                continue
            slot = self._slot(mid)
            breaker = self.tracker.breaker(mid, role)
            if not breaker.allow(self.clock()):
                self.observe(mid, "skipped", 0.0)
                errors.append(f"{mid}: circuit open for {role.value}")
                continue
            start = asked if asked is not None else loop.time()
            asked = None
            deadline = min(end, start + slot.spec.timeout_s)
            if deadline <= loop.time():
                breaker.release()
                errors.append(f"{mid}: not asked, the request's deadline has passed")
                continue
            slot.inflight += 1
            slot.idle.clear()
            try:
                result = await self._turn.serve(slot, role, task, errors, deadline)
            finally:
                slot.inflight -= 1
                if slot.inflight == 0:
                    slot.idle.set()
            if result is not FAILED:
                self._served(role, chain, mid, errors)
                return result, mid  # type: ignore[return-value]
        kind = VLMTimeout if errors and all(any(w in e for w in _TIMED_OUT) for e in errors) else VLMUnavailable
        raise kind(f"no model could serve {role.value}: " + "; ".join(errors or ["empty chain"]))

    def _served(self, role: Capability, chain: list[str], model: str, errors: list[str]) -> None:
        reason = "; ".join(errors)[:500] if model != chain[0] else ""
        before = self.tracker.last_served(role)
        if reason and before != model:  # a change of who serves, not every request
            logger.warning("%s served by %s instead of %s: %s", role.value, model, chain[0], reason)
        elif not reason and before not in (None, model):
            logger.info("%s served by %s again", role.value, model)
        self.tracker.served(role, model, reason)

    # --- hot switch ------------------------------------------------------------------------------

    async def switch(self, role: Capability, model_id: str, *, warm_timeout_s: float = 300.0) -> SwitchResult:
        spec = self.registry.get(model_id)
        if not spec.serves(role):
            raise SwitchRefused(f"model {model_id!r} does not have the {role.value!r} capability")
        async with self._switch_lock:
            now = self.clock()
            last = self._last_switch.get(role)
            if last is not None and now - last < self.min_switch_interval_s:
                wait = self.min_switch_interval_s - (now - last)
                raise SwitchRefused(f"{role.value} was switched {now - last:.0f}s ago; the next switch is allowed in {wait:.0f}s")
            old = self.chains[role][0]
            t0 = time.perf_counter()
            if model_id != LOCAL:
                existed = model_id in self._slots
                slot = self._slot(model_id)
                try:
                    async with asyncio.timeout(warm_timeout_s):
                        await slot.backend.warm()
                except (VLMError, TimeoutError) as e:
                    if not existed:
                        del self._slots[model_id]
                        await slot.backend.close()
                    raise VLMUnavailable(f"switch to {model_id!r} failed while warming up; {role.value} stays on {old!r}: {e}") from e
                self.tracker.reset(model_id, role)
            self.chains[role] = [model_id, *(m for m in self.chains[role] if m != model_id)]  # the atomic swap
            self._last_switch[role] = self.clock()
            self._retire_unused()
            return SwitchResult(role, old, model_id, time.perf_counter() - t0)

    def _retire_unused(self) -> None:
        """Close backends that no chain uses any more, once their requests in flight have finished."""
        used = {m for chain in self.chains.values() for m in chain}
        for mid in [m for m in self._slots if m not in used]:
            slot = self._slots.pop(mid)
            self.tracker.forget(mid)
            task = asyncio.create_task(self._close_when_idle(slot))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_when_idle(self, slot: _Slot) -> None:
        await slot.idle.wait()
        await slot.backend.close()
        logger.info("model %s unloaded", slot.spec.id)

    async def close(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for slot in self._slots.values():
            await slot.backend.close()
        self._slots.clear()
