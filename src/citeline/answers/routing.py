"""What the assistant needs from model routing: a :class:`ModelRouter` and the :class:`ModelChoice` it returns.

The assistant asks a router which model a principal's request generates with (the team's adapter, the
base model, or a model the request names) and whether a principal may use a listed model. The answers
layer only defines this shape; :class:`citeline.lora.routing.AdapterRouter` (the registry's router) is
the implementation the facade passes in. Without a router the assistant uses the base model or whatever
model the request names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from citeline.domain import Principal

__all__ = ["ModelChoice", "ModelRouter", "RoutedAdapter"]


class RoutedAdapter(Protocol):
    """The parts of a registered adapter the assistant reads (to load it and to explain a fallback)."""

    @property
    def served_name(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class ModelChoice:
    """The model a request generates with, and why."""

    model: str  # what the backend is asked for: the base model's name or an adapter's served name
    adapter: RoutedAdapter | None = None
    note: str | None = None  # set when the team's adapter is not used (falls back to the base model)


class ModelRouter(Protocol):
    """Picks each request's model; refuses (:class:`~citeline.errors.ForbiddenError`) another team's adapter."""

    def choose(self, principal: Principal, requested: str | None, base_model: str) -> ModelChoice: ...

    def may_use(self, principal: Principal, model: str) -> bool: ...
