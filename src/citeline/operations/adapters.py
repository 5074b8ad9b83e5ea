"""The team adapters' lifecycle, audited: :class:`Adapters` (``cl.adapters``).

Registering, promoting, retiring and syncing adapters are admin actions: each writes an audit row naming
the acting identity (registering and retiring in the change's own transaction; a promotion in the
registry flip's transaction, see :func:`citeline.lora.rollout.promote`).
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citeline import plugins
from citeline.access.audit import AuditLog
from citeline.contracts.generator import AdapterHost, GenerationBackend
from citeline.db import Database
from citeline.errors import AdapterError, AuditError, CitelineError, ConfigError
from citeline.lora.registry import AdapterRegistry, AdapterVersion
from citeline.lora.rollout import HostReport, Promotion, ReplicaClient, promote, reconcile
from citeline.lora.routing import AdapterRouter
from citeline.operations.admin import audited
from citeline.settings import Settings

__all__ = ["Adapters"]

log = logging.getLogger(__name__)


class Adapters:
    """Versioned team adapters (``adapters`` table; files under ``adapters.store``) and their rollout."""

    def __init__(self, settings: Settings, db: Database, *, audit: Callable[[], AuditLog],
                 backend: Callable[[], GenerationBackend],
                 on_promote: Callable[[str | None], None] | None = None) -> None:
        self.settings = settings
        store = settings.adapters.store
        self._registry = AdapterRegistry(db, settings.resolve_path(store) if store else settings.home / "adapters")
        self.router = AdapterRouter(self._registry, ttl_s=settings.adapters.cache_s)
        self._db = db
        self._audit = audit
        self._backend = backend
        self._on_promote = on_promote  # told the previous version's served name after a promotion (answer cache)

    # -- reading the registry ----------------------------------------------------------------------------
    def list(self, *, team: str | None = None, status: str | None = None) -> list[AdapterVersion]:
        return self._registry.list(team=team, status=status)

    def get(self, served_name: str) -> AdapterVersion | None:
        return self._registry.get(served_name)

    def require(self, served_name: str) -> AdapterVersion:
        return self._registry.require(served_name)

    def active(self, team: str) -> AdapterVersion | None:
        return self._registry.active(team)

    # -- where adapters run ------------------------------------------------------------------------------
    def base_model_dir(self) -> Path:
        """The local copy of the served base model that adapters are checked against."""
        configured = self.settings.adapters.base_model_path
        if configured is not None:
            path = self.settings.resolve_path(configured)
            if not (path / "config.json").is_file():
                raise ConfigError(f"adapters.base_model_path {path} has no config.json: point it at a local copy of "
                                  "the base model the servers run")
            return path
        from citeline.generation.local import ensure_base_model  # the local backend's stack loads on demand
        return ensure_base_model(self.settings.home)

    def hosts(self) -> builtins.list[Any]:
        """Where adapters are loaded: each configured replica, else the openai backend's server, else in process."""
        gen = self.settings.generation  # a server backend's options (openai's) say where it is and its key
        options = plugins.configure(plugins.load(plugins.GENERATORS, gen.backend), gen.options,
                                    section="generation.options")
        api_key = getattr(options, "api_key", None)
        key = api_key.get_secret_value() if api_key else None
        if urls := self._server_urls():
            return [ReplicaClient(u, api_key=key, timeout_s=gen.timeout_s) for u in urls]
        backend = self._backend()
        return [backend] if isinstance(backend, AdapterHost) else []

    def _server_urls(self) -> builtins.list[str]:
        """The model servers adapters are loaded on over HTTP (vLLM): the replicas, else the openai backend's."""
        gen = self.settings.generation
        options = plugins.configure(plugins.load(plugins.GENERATORS, gen.backend), gen.options,
                                    section="generation.options")
        base_url = getattr(options, "base_url", None)
        return list(self.settings.adapters.replicas) or ([base_url] if base_url else [])

    def _serves_soft_prompts(self) -> bool:
        """Only the embedded backend in process serves soft prompts; vLLM (replicas, an openai server) does not."""
        return self.settings.generation.backend == "embedded" and not self._server_urls()

    # -- admin actions (audited) ---------------------------------------------------------------------
    def register(self, path: Path, *, team: str, name: str | None = None, actor: str) -> AdapterVersion:
        """Preflight an adapter folder against the base model and record it as a new version."""
        base = self.base_model_dir()
        with audited(self._db, self._audit) as (conn, audit):
            adapter, new = self._registry.register(path, team=team, name=name, base_model_dir=base,
                                                   max_rank=self.settings.adapters.max_rank, actor=actor, conn=conn,
                                                   serves_soft_prompts=self._serves_soft_prompts())
            audit.append_in(conn, "admin", "adapter.register", principal=actor, team=team,
                            payload={"adapter": adapter.served_name, "path": str(path), "new": new})
        return adapter

    def upload_roots(self) -> builtins.list[Path]:
        """Where :meth:`register_from` may take adapter folders from: the store and ``source_policy.allowed_roots``
        (symlinks resolved)."""
        roots = [self._registry.store, *(self.settings.resolve_path(r)
                                         for r in self.settings.source_policy.allowed_roots or ())]
        return [Path(os.path.realpath(r)) for r in roots]

    def register_from(self, raw_path: str, *, team: str, name: str | None = None, actor: str) -> AdapterVersion:
        """:meth:`register` for a path a remote caller named: relative to the store, and refused (``AdapterError``)
        unless it resolves, symlinks followed, to a folder under one of :meth:`upload_roots`."""
        if not raw_path or "\x00" in raw_path or len(raw_path) > 4096:
            raise AdapterError("the adapter path must be 1 to 4096 characters with no NUL byte")
        roots = self.upload_roots()
        real = Path(os.path.realpath(roots[0] / raw_path))  # an absolute raw_path replaces the store part
        if not any(real.is_relative_to(r) for r in roots):
            raise AdapterError(f"adapter path {raw_path!r} is outside the adapter store and every allowed root "
                               "(adapters.store, source_policy.allowed_roots): copy the adapter folder there first")
        if not real.is_dir():
            raise AdapterError(f"adapter path {raw_path!r} is not a folder under the allowed roots")
        return self.register(real, team=team, name=name, actor=actor)

    def promote(self, served_name: str, *, actor: str, force: bool = False, drain_s: float | None = None
                ) -> Promotion:
        """Load on every host, make it the team's adapter, unload the old version after the drain."""
        hosts = self.hosts()
        audit = self._audit()
        drain = self.settings.adapters.drain_s if drain_s is None else drain_s

        def flipped(conn: Any, previous: AdapterVersion | None) -> None:  # in the flip's own transaction
            audit.append_in(conn, "admin", "adapter.promote", principal=actor, team=self._registry.require(
                served_name).team, payload={"adapter": served_name, "previous": previous.served_name if previous
                                            else None, "forced": force, "drain_s": drain})

        try:
            result = promote(self._registry, hosts, served_name, force=force, drain_s=drain,
                             base_model_dir=self.base_model_dir(), max_rank=self.settings.adapters.max_rank,
                             on_flip=self.router.invalidate, audit=flipped)
        except AuditError:
            raise
        except CitelineError as exc:  # refused: nothing changed; the refusal is recorded
            audit.append("admin", "adapter.promote", principal=actor,
                         payload={"adapter": served_name, "forced": force, "refused": str(exc)})
            raise
        if self._on_promote is not None:
            self._on_promote(result.previous.served_name if result.previous else None)
        try:  # the promotion is recorded already; this row adds where the old version was unloaded
            audit.append("admin", "adapter.promote.done", principal=actor, team=result.adapter.team,
                         payload={**result.as_dict(), "forced": force})
        except AuditError as exc:
            log.warning("adapter %s was promoted (audited) but its completion row could not be written: %s",
                        served_name, exc)
        return result

    def record_evaluation(self, served_name: str, *, actor: str) -> AdapterVersion:
        """Record a registered adapter's new evaluation (its stored copy's report) in the registry, audited."""
        with audited(self._db, self._audit) as (conn, audit):
            adapter = self._registry.record_evaluation(served_name, conn=conn)
            audit.append_in(conn, "admin", "adapter.evaluate", principal=actor, team=adapter.team,
                            payload={"adapter": served_name, "metrics": dict(adapter.metrics)})
        return adapter

    def retire(self, served_name: str, *, actor: str) -> AdapterVersion:
        """Withdraw an adapter; its team falls back to the base model. :meth:`sync` unloads it."""
        with audited(self._db, self._audit) as (conn, audit):
            adapter = self._registry.retire(served_name, conn=conn)
            audit.append_in(conn, "admin", "adapter.retire", principal=actor, team=adapter.team,
                            payload={"adapter": served_name})
        self.router.invalidate()
        return adapter

    def sync(self, *, actor: str) -> builtins.list[HostReport]:
        """Make every model server serve exactly the active adapters (after a restart, a retire, ...)."""
        reports = reconcile(self._registry, self.hosts(), base_model_dir=self.base_model_dir(),
                            max_rank=self.settings.adapters.max_rank)
        self._audit().append("admin", "adapter.sync", principal=actor,
                             payload={"hosts": [r.as_dict() for r in reports]})
        return reports
