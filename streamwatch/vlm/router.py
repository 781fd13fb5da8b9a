"""Roles → failover chains of backends: retry once, fail over, circuit breakers, hot switching.

``run(role, task, local=…)`` walks the role's chain: a model whose breaker is open is skipped; a
model that raises a :class:`~streamwatch.errors.VLMError` (unreachable, timeout, unusable output)
is tried once more, then its breaker records a failure and the next model serves. ``local`` in a
chain is the template fallback the caller supplies. The result says which model produced it.

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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from streamwatch.errors import VLMError, VLMInputError, VLMServerError, VLMUnavailable
from streamwatch.vlm.backend import VLMBackend
from streamwatch.vlm.breaker import CircuitBreaker
from streamwatch.vlm.registry import LOCAL, Capability, ModelSpec, Registry

logger = logging.getLogger(__name__)

T = TypeVar("T")
Factory = Callable[[ModelSpec], VLMBackend]
# (model, outcome, seconds); outcome: ok | error | timeout | bad_output | refused | skipped | busy
Observer = Callable[[str, str, float], None]


class AdmissionGate(Protocol):
    """Admission to a model shared with other processes (e.g. :class:`streamwatch.cluster.admission.Admission`)."""

    def slot(self, model_id: str, timeout_s: float) -> AbstractAsyncContextManager[None]:
        """Hold one of ``model_id``'s slots for the ``async with`` body; entering raises TimeoutError when none
        came free within ``timeout_s`` seconds."""
        ...


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
    breaker: CircuitBreaker
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
        self._slots: dict[str, _Slot] = {}
        self._last_switch: dict[Capability, float] = {}
        self._switch_lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    def _slot(self, model_id: str) -> _Slot:
        slot = self._slots.get(model_id)
        if slot is None:
            spec = self.registry.get(model_id)
            slot = _Slot(spec, self.factory(spec), CircuitBreaker(self.breaker_failures, self.breaker_cooldown_s))
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
        """Breaker state per loaded model (closed | open | half_open)."""
        return {mid: s.breaker.state.value for mid, s in self._slots.items()}

    async def run(
        self,
        role: Capability,
        task: Callable[[VLMBackend], Awaitable[T]],
        *,
        local: Callable[[], Awaitable[T]] | None = None,
    ) -> tuple[T, str]:
        """The first answer down the role's chain, and the id of the model that gave it."""
        errors: list[str] = []
        for mid in list(self.chains[role]):  # a copy: a switch during this call does not reorder it
            if mid == LOCAL:
                if local is not None:
                    return await local(), LOCAL
                continue
            slot = self._slot(mid)
            if not slot.breaker.allow(self.clock()):
                self.observe(mid, "skipped", 0.0)
                errors.append(f"{mid}: circuit open")
                continue
            result = await self._try(slot, task, errors)
            if result is not _FAILED:
                return result, mid  # type: ignore[return-value]
        raise VLMUnavailable(f"no model could serve {role.value}: " + "; ".join(errors or ["empty chain"]))

    async def _try(self, slot: _Slot, task: Callable[[VLMBackend], Awaitable[T]], errors: list[str]) -> T | object:
        mid = slot.spec.id
        slot.inflight += 1
        slot.idle.clear()
        server_errors: list[VLMServerError] = []
        try:
            async with contextlib.AsyncExitStack() as admitted:
                if self.admission is not None:
                    wait = self.admission_wait_s if self.admission_wait_s is not None else slot.spec.timeout_s
                    t0 = time.perf_counter()
                    try:
                        await admitted.enter_async_context(self.admission.slot(mid, wait))
                    except TimeoutError as e:  # busy across the cluster: not the model's fault
                        self.observe(mid, "busy", 0.0)
                        logger.info("%s busy: no cluster slot within %.1fs", mid, time.perf_counter() - t0)
                        errors.append(f"{mid}: busy ({e})")
                        slot.breaker.release()
                        return _FAILED
                    except asyncio.CancelledError:
                        slot.breaker.release()
                        raise
                return await self._attempts(slot, task, errors, server_errors)
        finally:
            slot.inflight -= 1
            if slot.inflight == 0:
                slot.idle.set()

    async def _attempts(
        self, slot: _Slot, task: Callable[[VLMBackend], Awaitable[T]], errors: list[str], server_errors: list[VLMServerError]
    ) -> T | object:
        mid = slot.spec.id
        for attempt in (1, 2):
            t0 = time.perf_counter()
            try:
                value = await task(slot.backend)
            except VLMInputError as e:  # this request's input: no retry, no breaker, no failover
                self.observe(mid, "refused", time.perf_counter() - t0)
                logger.warning("%s refused the request's input: %s", mid, e)
                slot.breaker.release()
                raise
            except VLMError as e:
                if isinstance(e, VLMServerError):
                    server_errors.append(e)
                outcome = "timeout" if isinstance(e, TimeoutError) else "bad_output" if isinstance(e, ValueError) else "error"
                self.observe(mid, outcome, time.perf_counter() - t0)
                logger.warning("%s attempt %d failed: %s", mid, attempt, e)
                errors.append(f"{mid}: {e}")
                continue
            except asyncio.CancelledError:
                slot.breaker.release()
                raise
            except Exception as e:  # a backend bug must fail over, not take the stream down
                logger.exception("%s attempt %d crashed", mid, attempt)
                self.observe(mid, "error", time.perf_counter() - t0)
                errors.append(f"{mid}: {type(e).__name__}")
                continue
            self.observe(mid, "ok", time.perf_counter() - t0)
            slot.breaker.success()
            return value
        if len(server_errors) == 2 and await self._answers_probe(slot):
            self.observe(mid, "refused", 0.0)
            slot.breaker.release()
            raise VLMInputError(f"{mid} failed this request twice but answers a probe, so its input is refused: {server_errors[-1]}")
        if slot.breaker.failure(self.clock()):
            logger.error("%s failed twice: circuit open for %.0fs, the next model in the chain serves", mid, slot.breaker.cooldown_s)
        return _FAILED

    async def _answers_probe(self, slot: _Slot) -> bool:
        """Does the model answer a known-good request (its ``warm``) within its timeout?"""
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(slot.spec.timeout_s):
                await slot.backend.warm()
        except asyncio.CancelledError:
            slot.breaker.release()
            raise
        except (VLMError, TimeoutError) as e:
            logger.warning("%s also fails a probe: %s", slot.spec.id, e)
            return False
        logger.info("%s answers a probe (%.2fs): the failure was the request's input", slot.spec.id, time.perf_counter() - t0)
        return True

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
                slot.breaker.success()
            self.chains[role] = [model_id, *(m for m in self.chains[role] if m != model_id)]  # the atomic swap
            self._last_switch[role] = self.clock()
            self._retire_unused()
            return SwitchResult(role, old, model_id, time.perf_counter() - t0)

    def _retire_unused(self) -> None:
        """Close backends that no chain uses any more, once their requests in flight have finished."""
        used = {m for chain in self.chains.values() for m in chain}
        for mid in [m for m in self._slots if m not in used]:
            slot = self._slots.pop(mid)
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


_FAILED = object()
