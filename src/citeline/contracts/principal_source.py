"""The principal-source contract: where principals and their groups come from when no one types them in.

A principal source is a class registered under the entry-point group ``citeline.principal_sources`` (the
built-ins ``ldap`` and ``scim`` are registered in citeline's own ``pyproject.toml`` the same way). It is built
by :func:`citeline.plugins.create` as ``cls(config, source=name, db=db)``: ``config`` is the class's own pydantic
``Config`` validated from the ``config`` table of a ``[[principal_sources]]`` entry, ``source`` that entry's name
(the source's ``name``), ``db`` the index's :class:`citeline.db.Database` (a source that reads an outside
directory ignores it).

One method: ``fetch()`` returns the **complete** listing of the users the source manages, each with its groups
(and optionally a team). citeline then reconciles (:mod:`citeline.operations.principal_sources`): a listed user
is added or updated, a user the source managed before and no longer lists is removed and its API keys are
revoked, all in one transaction with its audit row; a listing identical to what is stored writes nothing.
Principals added by hand or by another source are never touched by it.

A source must guarantee:

- ``fetch()`` returns a :class:`Listing` (users unique by name; names and groups valid principal names), or
  raises :class:`citeline.errors.PrincipalError` when it cannot produce a complete one (server down, bad
  credentials, a reply it cannot parse, more users or members than its limits): never a partial listing,
  because a user missing from a listing loses access;
- the same directory gives the same listing (deterministic: an unchanged directory must write nothing);
- it never logs or puts a secret (a bind password, a token) into an error message.

Push sources (SCIM, :mod:`citeline.identity.scim`) receive changes over HTTP and apply each one as it comes;
their ``fetch()`` returns what was last pushed, so a sync repairs principals edited by hand since.

``citeline.testing.principal_sources.PrincipalSourceContract`` checks these; built-ins and plugins run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from citeline.domain import Principal

__all__ = ["Listing", "PrincipalSource"]


@dataclass(frozen=True)
class Listing:
    """Every principal a source manages, sorted by user; built by :meth:`of` (which refuses duplicates)."""

    principals: tuple[Principal, ...]

    @classmethod
    def of(cls, principals: list[Principal] | tuple[Principal, ...]) -> Listing:
        seen: set[str] = set()
        for p in principals:
            if p.user in seen:
                raise ValueError(f"user {p.user!r} is listed twice")
            seen.add(p.user)
        return cls(tuple(sorted(principals, key=lambda p: p.user)))

    def users(self) -> list[str]:
        return [p.user for p in self.principals]


@runtime_checkable
class PrincipalSource(Protocol):
    """What the principal sync consumes. See the module docstring for the full contract."""

    name: str

    def fetch(self) -> Listing: ...
