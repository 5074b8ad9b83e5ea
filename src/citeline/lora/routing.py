"""Which model a request from a principal uses: :class:`AdapterRouter`, the registry's model router.

It answers with the team's active adapter (cached for ``ttl_s`` so a request costs no extra query), the
base model when the team has none (and the answer says so), and refuses an adapter of another team
(:class:`~citeline.errors.ForbiddenError`). It satisfies :class:`citeline.answers.routing.ModelRouter`, the
shape the assistant consumes (the answers layer does not import lora).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from citeline.answers.routing import ModelChoice
from citeline.domain import Principal
from citeline.errors import ForbiddenError
from citeline.lora.registry import AdapterRegistry, AdapterVersion

__all__ = ["AdapterRouter", "ModelChoice"]


@dataclass
class _Cache:
    at: float = -1e9
    by_team: dict[str, AdapterVersion] = field(default_factory=dict)
    by_served: dict[str, AdapterVersion] = field(default_factory=dict)


class AdapterRouter:
    """Picks each request's model from the registry: the team's active adapter, else the base model."""

    def __init__(self, registry: AdapterRegistry, *, ttl_s: float = 1.0) -> None:
        self._registry = registry  # read here; its writes are the facade's audited adapters concern
        self.ttl_s = ttl_s
        self._cache = _Cache()
        self._lock = threading.Lock()

    def _snapshot(self) -> _Cache:
        now = time.monotonic()
        with self._lock:
            if now - self._cache.at >= self.ttl_s:
                every = self._registry.list()
                self._cache = _Cache(now, {a.team: a for a in every if a.status == "active"},
                                     {a.served_name: a for a in every})
            return self._cache

    def invalidate(self) -> None:
        with self._lock:
            self._cache = _Cache()

    def may_use(self, principal: Principal, model: str) -> bool:
        """False for an adapter of another team (or a retired one); True for anything the registry does not own."""
        adapter = self._snapshot().by_served.get(model)
        return adapter is None or (adapter.team == principal.team and adapter.status != "retired")

    def choose(self, principal: Principal, requested: str | None, base_model: str) -> ModelChoice:
        """The team's active adapter when ``requested`` names none; a named adapter only for its own team."""
        cache = self._snapshot()
        if requested in (None, "", "citeline", base_model):
            if requested == base_model:
                return ModelChoice(base_model)
            adapter = cache.by_team.get(principal.team) if principal.team else None
            if adapter is None:
                who = f"team {principal.team!r}" if principal.team else f"{principal.user} (no team)"
                return ModelChoice(base_model, note=f"{who} has no active adapter; answered by the base model")
            return ModelChoice(adapter.served_name, adapter)
        adapter = cache.by_served.get(requested)
        if adapter is None:
            return ModelChoice(requested)  # not an adapter citeline manages: the backend decides
        if adapter.team != principal.team:
            raise ForbiddenError(f"adapter {requested!r} belongs to team {adapter.team!r}; "
                                 f"{principal.user} is in team {principal.team!r} and may only use its own team's "
                                 "adapters")
        if adapter.status == "retired":
            raise ForbiddenError(f"adapter {requested!r} is retired; ask without a model to use team "
                                 f"{adapter.team!r}'s current adapter")
        return ModelChoice(adapter.served_name, adapter)
