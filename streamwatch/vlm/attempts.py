"""One model's turn in a role's chain: admission, at most two attempts inside one deadline, the probe.

The deadline is the model's ``timeout_s`` from the moment it is asked (or the caller's, if sooner):
the wait for a cluster slot, the wait for a connection slot, encoding, HTTP and the retry all run
inside it, and a retry is started only when at least as much time is left as the failed attempt took.
A retry changes the request (:mod:`streamwatch.vlm.retry`). Outcomes go to the router's observer
(``ok | error | timeout | bad_output | refused | busy``) and to the per-(model, role) tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar

from streamwatch.errors import VLMError, VLMInputError, VLMServerError, VLMTruncated
from streamwatch.vlm.backend import VLMBackend
from streamwatch.vlm.registry import Capability
from streamwatch.vlm.retry import BAD_OUTPUT, TRUNCATED, Attempt, RetryingBackend
from streamwatch.vlm.routestate import RouteTracker

if TYPE_CHECKING:
    from streamwatch.vlm.router import _Slot

logger = logging.getLogger(__name__)

T = TypeVar("T")
Observer = Callable[[str, str, float], None]  # (model, outcome, seconds)
FAILED = object()


class AdmissionGate(Protocol):
    """Admission to a model shared with other processes (e.g. :class:`streamwatch.cluster.admission.Admission`)."""

    def slot(self, model_id: str, timeout_s: float) -> AbstractAsyncContextManager[None]:
        """Hold one of ``model_id``'s slots for the ``async with`` body; entering raises TimeoutError when none
        came free within ``timeout_s`` seconds."""
        ...


def outcome_of(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    return "bad_output" if isinstance(e, ValueError) else "error"


class ModelTurn:
    def __init__(
        self,
        tracker: RouteTracker,
        observe: Observer,
        clock: Callable[[], float],
        admission: AdmissionGate | None,
        admission_wait_s: float | None,
    ) -> None:
        self.tracker = tracker
        self.observe = observe
        self.clock = clock
        self.admission = admission
        self.admission_wait_s = admission_wait_s

    async def serve(
        self, slot: _Slot, role: Capability, task: Callable[[VLMBackend], Awaitable[T]], errors: list[str], deadline: float
    ) -> T | object:
        """The model's answer, or ``FAILED`` (reasons appended to ``errors``); VLMInputError passes through."""
        mid = slot.spec.id
        breaker = self.tracker.breaker(mid, role)
        loop = asyncio.get_running_loop()
        try:
            async with contextlib.AsyncExitStack() as admitted:
                if self.admission is not None:
                    wait = self.admission_wait_s if self.admission_wait_s is not None else slot.spec.timeout_s
                    wait = max(0.0, min(wait, deadline - loop.time()))
                    try:
                        await admitted.enter_async_context(self.admission.slot(mid, wait))
                    except TimeoutError as e:  # busy across the cluster: not the model's fault
                        self.observe(mid, "busy", 0.0)
                        logger.info("%s busy: no cluster slot within %.1fs", mid, wait)
                        errors.append(f"{mid}: busy ({e})")
                        breaker.release()
                        return FAILED
                return await self._attempts(slot, role, task, errors, deadline)
        except asyncio.CancelledError:
            breaker.release()
            raise

    async def _attempts(
        self, slot: _Slot, role: Capability, task: Callable[[VLMBackend], Awaitable[T]], errors: list[str], deadline: float
    ) -> T | object:
        mid = slot.spec.id
        breaker = self.tracker.breaker(mid, role)
        loop = asyncio.get_running_loop()
        server_errors: list[VLMServerError] = []
        after, detail, took = "", "", 0.0
        for number in (1, 2):
            left = deadline - loop.time()
            if number == 2 and left < took:
                logger.warning("%s: no retry (%.1fs left, the failed attempt took %.1fs)", mid, max(0.0, left), took)
                errors.append(f"{mid}: no time left for a retry")
                break
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout_at(deadline):
                    value = await task(RetryingBackend(slot.backend, Attempt(number, deadline, after, detail)))
            except VLMInputError as e:  # this request's input: no retry, no breaker, no failover
                self.observe(mid, "refused", time.perf_counter() - t0)
                logger.warning("%s refused the request's input: %s", mid, e)
                breaker.release()
                raise
            except (VLMError, TimeoutError) as e:
                took = time.perf_counter() - t0
                if isinstance(e, VLMServerError):
                    server_errors.append(e)
                outcome = outcome_of(e)
                after = TRUNCATED if isinstance(e, VLMTruncated) else outcome
                detail = str(e) or f"no answer within the {slot.spec.timeout_s:g}s deadline"
                self.observe(mid, outcome, took)
                self.tracker.failed(mid, role, detail, unusable=after in (BAD_OUTPUT, TRUNCATED))
                logger.warning("%s attempt %d for %s failed (%s): %s", mid, number, role.value, after, detail)
                errors.append(f"{mid}: {detail}")
                continue
            except Exception as e:  # a backend bug must fail over, not take the stream down
                took = time.perf_counter() - t0
                logger.exception("%s attempt %d crashed", mid, number)
                self.observe(mid, "error", took)
                self.tracker.failed(mid, role, type(e).__name__, unusable=False)
                errors.append(f"{mid}: {type(e).__name__}")
                after, detail = "error", type(e).__name__
                continue
            self.observe(mid, "ok", time.perf_counter() - t0)
            self.tracker.ok(mid, role)
            return value
        if len(server_errors) == 2 and await self._answers_probe(slot):
            self.observe(mid, "refused", 0.0)
            breaker.release()
            raise VLMInputError(f"{mid} failed this request twice but answers a probe, so its input is refused: {server_errors[-1]}")
        if breaker.failure(self.clock()):
            logger.error(
                "%s failed for %s: circuit open for %.0fs, the next model in the chain serves", mid, role.value, breaker.cooldown_s
            )
        return FAILED

    async def _answers_probe(self, slot: _Slot) -> bool:
        """Does the model answer a known-good request (its ``warm``) within its timeout?"""
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(slot.spec.timeout_s):
                await slot.backend.warm()
        except (VLMError, TimeoutError) as e:
            logger.warning("%s also fails a probe: %s", slot.spec.id, e)
            return False
        logger.info("%s answers a probe (%.2fs): the failure was the request's input", slot.spec.id, time.perf_counter() - t0)
        return True
