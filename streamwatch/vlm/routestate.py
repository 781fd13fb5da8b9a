"""What the router knows about each (model, role): breaker, unusable answers in a row, why a role fell back.

Breakers are kept per (model, role), not per model: a model whose compliance answers always fail opens
its compliance breaker while it keeps serving replies. :meth:`RouteTracker.status` is the typed,
read-only view for the console, health events and ``models check`` (:class:`RouterStatus`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamwatch.vlm.breaker import BreakerState, CircuitBreaker
from streamwatch.vlm.registry import Capability

_RANK = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class ModelRoleState:
    model: str
    role: Capability
    breaker: BreakerState
    unusable_in_row: int  # answers in a row that could not be used (bad, cut off, ignored schema)
    last_failure: str  # the last failed attempt's reason ("" when none yet)


@dataclass(frozen=True, slots=True)
class RoleState:
    role: Capability
    chain: tuple[str, ...]
    served_by: str | None  # the model that gave the role's last answer (None: no request yet)
    fallback_reason: str  # why the last answer did not come from the chain's first model ("" when it did)
    answers: int = 0  # answers given for the role so far (tells a new answer from the last one seen)


@dataclass(frozen=True, slots=True)
class RouterStatus:
    models: tuple[ModelRoleState, ...]
    roles: tuple[RoleState, ...]

    def of(self, model: str, role: Capability) -> ModelRoleState | None:
        return next((m for m in self.models if m.model == model and m.role is role), None)

    def role(self, role: Capability) -> RoleState | None:
        return next((r for r in self.roles if r.role is role), None)


@dataclass
class _Track:
    breaker: CircuitBreaker
    unusable: int = 0
    last_failure: str = ""


@dataclass
class RouteTracker:
    failures: int = 2
    cooldown_s: float = 30.0
    _tracks: dict[tuple[str, Capability], _Track] = field(default_factory=dict)
    _served: dict[Capability, tuple[str, str]] = field(default_factory=dict)
    _answers: dict[Capability, int] = field(default_factory=dict)

    def track(self, model: str, role: Capability) -> _Track:
        key = (model, role)
        if key not in self._tracks:
            self._tracks[key] = _Track(CircuitBreaker(self.failures, self.cooldown_s))
        return self._tracks[key]

    def breaker(self, model: str, role: Capability) -> CircuitBreaker:
        return self.track(model, role).breaker

    def ok(self, model: str, role: Capability) -> None:
        t = self.track(model, role)
        t.breaker.success()
        t.unusable = 0

    def failed(self, model: str, role: Capability, reason: str, *, unusable: bool) -> None:
        """One failed attempt (the breaker counts failed requests, not attempts: see the router)."""
        t = self.track(model, role)
        t.last_failure = reason
        if unusable:
            t.unusable += 1

    def served(self, role: Capability, model: str, fallback_reason: str) -> None:
        self._served[role] = (model, fallback_reason)
        self._answers[role] = self._answers.get(role, 0) + 1

    def last_served(self, role: Capability) -> str | None:
        served = self._served.get(role)
        return served[0] if served else None

    def forget(self, model: str) -> None:
        for key in [k for k in self._tracks if k[0] == model]:
            del self._tracks[key]

    def reset(self, model: str, role: Capability) -> None:
        """A model switched in (loaded and warmed): its breaker for the role starts closed."""
        self.ok(model, role)

    def worst(self) -> dict[str, str]:
        """The most open breaker state of each model over its roles (closed | half_open | open)."""
        out: dict[str, BreakerState] = {}
        for (model, _role), t in self._tracks.items():
            if model not in out or _RANK[t.breaker.state] > _RANK[out[model]]:
                out[model] = t.breaker.state
        return {m: s.value for m, s in out.items()}

    def status(self, chains: dict[Capability, list[str]]) -> RouterStatus:
        models = tuple(
            ModelRoleState(m, r, t.breaker.state, t.unusable, t.last_failure)
            for (m, r), t in sorted(self._tracks.items(), key=lambda kv: (kv[0][0], kv[0][1].value))
        )
        roles = tuple(
            RoleState(r, tuple(chain), self._served.get(r, (None, ""))[0], self._served.get(r, (None, ""))[1], self._answers.get(r, 0))
            for r, chain in sorted(chains.items(), key=lambda kv: kv[0].value)
        )
        return RouterStatus(models, roles)
