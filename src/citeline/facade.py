"""The :class:`Citeline` facade: settings → database, embedder, chunker → sync, search, principals.

Everything the CLI does is a method here; the CLI only parses arguments and prints::

    from citeline import Citeline
    with Citeline.open("examples/acme/citeline.toml") as cl:
        cl.sync()                                   # every configured source
        cl.principals.put(Principal("alice", ("engineering",)))
        for hit in cl.search("how do I roll back a deploy", user="alice").hits:
            print(hit.title, hit.url)

Heavy parts (the embedding model, the database pool) start on first use, not at construction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline import plugins
from citeline.answers.assistant import Answer, AnswerStream, Assistant
from citeline.access.audit import AuditLog, load_key
from citeline.contracts.connector import Connector
from citeline.db import Database
from citeline.domain import Access, Principal, SearchMode
from citeline.errors import AuditError, CitelineError, ConfigError
from citeline.contracts.chunker import Chunker
from citeline.contracts.embedder import Embedder
from citeline.ingest.scheduler import RetryPolicy, Scheduler, last_runs, next_run
from citeline.ingest.sync import ProgressCallback, SyncReport, SyncRunner
from citeline.access.keys import Authenticated, KeyStore, NewKey
from citeline.retrieval.search import Retriever, SearchResult
from citeline.lora.registry import AdapterRegistry, AdapterVersion
from citeline.lora.routing import AdapterRouter
from citeline.contracts.generator import AdapterHost, ChatMessage, GenerationBackend
from citeline.settings import Settings, SourceSettings
from citeline.access.principals import PrincipalStore
from citeline.contracts.verifier import Verifier

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from citeline.lora.rollout import HostReport, Promotion

# Answer, AnswerStream and Authenticated: for serving, which reaches the core only through this module
__all__ = ["Answer", "AnswerStream", "Authenticated", "Citeline", "SourceStatus", "build_connector"]


@dataclass(frozen=True)
class SourceStatus:
    name: str
    connector: str
    documents: int
    last_run_status: str | None
    last_run_started: datetime | None
    last_run_finished: datetime | None
    last_success: datetime | None
    counts: dict[str, int]
    error: str | None
    schedule: str | None = None
    next_run: datetime | None = None  # from the cron schedule (and retry backoff); None: not scheduled


def build_connector(source: SourceSettings, settings: Settings) -> Connector:
    """Instantiate the source's connector with its typed config (relative paths resolved)."""
    cls = plugins.load(plugins.CONNECTORS, source.connector)
    try:
        config = cls.Config.model_validate(source.config)
    except ValueError as exc:
        raise ConfigError(f"invalid config for source {source.name!r} ({source.connector}):\n{exc}") from exc
    resolved = {name: settings.resolve_path(value) for name, value in config if isinstance(value, Path)}
    if resolved:
        config = config.model_copy(update=resolved)
    _check_allowed_roots(source, settings, resolved)
    try:
        default = Access.from_mapping(source.access)
    except ValueError as exc:
        raise ConfigError(f"invalid access for source {source.name!r}: {exc}") from exc
    return cls(config, default)


def _check_allowed_roots(source: SourceSettings, settings: Settings, paths: dict[str, Path]) -> None:
    """Refuse a source whose local paths (symlinks resolved) are under none of ``source_policy.allowed_roots``."""
    allowed = settings.source_policy.allowed_roots
    if allowed is None:
        return
    roots = [Path(os.path.realpath(settings.resolve_path(r))) for r in allowed]
    for field_name, path in paths.items():
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in roots):
            shown = f"{path}" if real == path else f"{path} (resolves to {real})"
            raise ConfigError(
                f"source {source.name!r}: config.{field_name} {shown} is outside every allowed root "
                f"({', '.join(map(str, roots)) or 'none'}) in source_policy.allowed_roots: move it under one "
                "of them, or ask an admin to add its folder to source_policy.allowed_roots")


class Citeline:
    """One configured citeline: its index namespace, embedder and sources."""

    def __init__(self, settings: Settings, *, namespace: str | None = None, embedder: Embedder | None = None,
                 backend: GenerationBackend | None = None) -> None:
        self.settings = settings
        self.namespace = namespace or settings.database.namespace
        self._embedder = embedder
        self._backend = backend
        self._db: Database | None = None

    @classmethod
    def open(cls, config: str | Path | None = None, **overrides: Any) -> Citeline:
        return cls(Settings.load(config, **overrides))

    # -- parts, built on first use ------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            e = self.settings.embedding  # Path options: relative to the config file
            self._embedder = plugins.create(plugins.EMBEDDERS, e.provider, e.options, section="embedding.options",
                                            resolve_path=self.settings.resolve_path, home=self.settings.home)
        return self._embedder

    @functools.cached_property
    def chunker(self) -> Chunker:
        c = self.settings.chunking
        return plugins.create(plugins.CHUNKERS, c.chunker, c.options, section="chunking.options",
                              resolve_path=self.settings.resolve_path, tokenize=self.embedder.tokenize)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database.from_settings(self.settings, self.embedder.dimension, namespace=self.namespace)
        return self._db

    @functools.cached_property
    def principals(self) -> PrincipalStore:
        return PrincipalStore(self.db)

    @functools.cached_property
    def retriever(self) -> Retriever:
        return Retriever(self.db, self.embedder, self.settings.retrieval)

    @property
    def backend(self) -> GenerationBackend:
        """The generation backend named by ``generation.backend`` (group citeline.generators), built with its
        ``[generation.options]`` and the core ``[generation]`` section."""
        if self._backend is None:
            g = self.settings.generation
            self._backend = plugins.create(plugins.GENERATORS, g.backend, g.options, section="generation.options",
                                           resolve_path=self.settings.resolve_path, home=self.settings.home,
                                           generation=g)
        return self._backend

    @functools.cached_property
    def audit(self) -> AuditLog:
        """The audit chain, keyed with ``audit.key`` or the key in ``audit.key_file`` (default <home>/audit.key,
        generated on first use)."""
        a = self.settings.audit
        if a.key is not None:
            key = a.key.get_secret_value().strip().encode()
        else:
            key = load_key(self.settings.resolve_path(a.key_file) if a.key_file else self.settings.home / "audit.key")
        return AuditLog(self.db, key)

    @functools.cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.db)

    @functools.cached_property
    def registry(self) -> AdapterRegistry:
        """Versioned team adapters (``adapters`` table; files under ``adapters.store``)."""
        store = self.settings.adapters.store
        return AdapterRegistry(self.db, self.settings.resolve_path(store) if store else self.settings.home / "adapters")

    @functools.cached_property
    def router(self) -> AdapterRouter:
        return AdapterRouter(self.registry, ttl_s=self.settings.adapters.cache_s)

    @functools.cached_property
    def verifier(self) -> Verifier:
        """The answer verifier named by ``answer.verifier`` (group ``citeline.verifiers``), with its options."""
        a = self.settings.answer
        return plugins.create(plugins.VERIFIERS, a.verifier, a.verifier_options, section="answer.verifier_options",
                              resolve_path=self.settings.resolve_path, embedder=self.embedder)

    @functools.cached_property
    def assistant(self) -> Assistant:
        return Assistant(self.retriever, self.backend, self.audit, answer=self.settings.answer,
                         generation=self.settings.generation, router=self.router,
                         verifier=self.verifier if self.settings.answer.verify != "off" else None)

    # -- operations ---------------------------------------------------------------------------------
    def sync(self, source: str | None = None, *, full: bool = False,
             on_progress: ProgressCallback | None = None, stop: threading.Event | None = None) -> list[SyncReport]:
        """Sync one source (or all, in config order). A failing source does not stop the others.

        ``stop``, once set, ends the run after its current batch (status ``interrupted``, resumable).
        """
        chosen = [self.settings.source(source)] if source else list(self.settings.sources)
        if not chosen:
            raise ConfigError("no sources configured: add [[sources]] tables to citeline.toml")
        connectors = [(s, build_connector(s, self.settings)) for s in chosen]  # config errors before any work
        reports = []
        for src, connector in connectors:
            if stop is not None and stop.is_set():
                break
            runner = SyncRunner(self.db, self.embedder, self.chunker, batch_size=src.batch_size,
                                on_progress=on_progress, stop=stop)
            reports.append(runner.run(src.name, src.connector, connector, full=full))
        return reports

    def search(self, query: str, *, user: str | None, k: int | None = None,
               mode: SearchMode = SearchMode.HYBRID) -> SearchResult:
        """Top-k chunks that ``user`` may see. An unknown user sees public documents only."""
        return self.retriever.search(query, user=user, k=k, mode=mode)

    def ask(self, question: str, *, user: str, model: str | None = None,
            history: Sequence[ChatMessage] = ()) -> Answer:
        """A grounded, cited (or refused) answer for ``user``; audited before it is returned.

        ``history``: the conversation's earlier turns (a follow-up is rewritten for retrieval with them).
        """
        return self.assistant.ask(question, self.principals.get(user), model=model, history=history)

    def ask_stream(self, question: str, *, user: str, model: str | None = None,
                   history: Sequence[ChatMessage] = ()) -> AnswerStream:
        return self.assistant.stream(question, self.principals.get(user), model=model, history=history)

    # -- admin actions: each one commits together with its audit row (acting identity), or not at all ----
    @contextlib.contextmanager
    def _admin(self) -> Iterator[Any]:
        """One transaction for an admin change and its audit row (the audit key is loaded before it opens)."""
        audit = self.audit
        with self.db.writer() as conn:
            yield conn, audit

    def add_principal(self, principal: Principal, *, actor: str) -> Principal:
        with self._admin() as (conn, audit):
            done = self.principals.put(principal, conn=conn)
            audit.append_in(conn, "admin", "principal.put", principal=actor, payload={
                "user": principal.user, "groups": list(principal.groups), "team": principal.team})
        return done

    def delete_principal(self, user: str, *, actor: str) -> list[str] | None:
        """Remove a principal and revoke its keys; the revoked key ids (None: there was no such principal)."""
        with self._admin() as (conn, audit):
            revoked = self.principals.delete(user, conn=conn)
            audit.append_in(conn, "admin", "principal.remove", principal=actor,
                            payload={"user": user, "removed": revoked is not None, "revoked_keys": revoked or []})
        return revoked

    def remove_principal(self, user: str, *, actor: str) -> bool:
        return self.delete_principal(user, actor=actor) is not None

    def import_principals(self, path: Path, *, actor: str) -> list[Principal]:
        with self._admin() as (conn, audit):
            done = self.principals.import_file(path, conn=conn)
            audit.append_in(conn, "admin", "principal.import", principal=actor,
                            payload={"file": str(path), "users": [p.user for p in done]})
        return done

    def create_key(self, user: str, *, actor: str, admin: bool = False, label: str = "") -> NewKey:
        with self._admin() as (conn, audit):
            new = self.keys.create(user, admin=admin, label=label, conn=conn)
            audit.append_in(conn, "admin", "key.create", principal=actor,
                            payload={"key_id": new.key.key_id, "user": user, "admin": admin, "label": label})
        return new

    def revoke_key(self, key_id: str, *, actor: str) -> bool:
        with self._admin() as (conn, audit):
            done = self.keys.revoke(key_id, conn=conn)
            audit.append_in(conn, "admin", "key.revoke", principal=actor, payload={"key_id": key_id, "revoked": done})
        return done

    # -- adapters: registry and hot swap (admin actions, audited) ------------------------------------
    def base_model_dir(self) -> Path:
        """The local copy of the served base model that adapters are checked against."""
        configured = self.settings.adapters.base_model_path
        if configured is not None:
            path = self.settings.resolve_path(configured)
            if not (path / "config.json").is_file():
                raise ConfigError(f"adapters.base_model_path {path} has no config.json: point it at a local copy of "
                                  "the base model the servers run")
            return path
        from citeline.generation.local import ensure_base_model
        return ensure_base_model(self.settings.home)

    def adapter_hosts(self) -> list[Any]:
        """Where adapters are loaded: each configured replica, else the openai backend's server, else in process."""
        from citeline.lora.rollout import ReplicaClient
        gen = self.settings.generation
        urls = list(self.settings.adapters.replicas)
        if not urls and gen.backend == "openai" and gen.base_url:
            urls = [gen.base_url]
        key = gen.api_key.get_secret_value() if gen.api_key else None
        if urls:
            return [ReplicaClient(u, api_key=key, timeout_s=gen.timeout_s) for u in urls]
        return [self.backend] if isinstance(self.backend, AdapterHost) else []

    def register_adapter(self, path: Path, *, team: str, name: str | None = None, actor: str) -> AdapterVersion:
        """Preflight an adapter folder against the base model and record it as a new version."""
        base = self.base_model_dir()
        with self._admin() as (conn, audit):
            adapter, new = self.registry.register(path, team=team, name=name, base_model_dir=base,
                                                  max_rank=self.settings.adapters.max_rank, actor=actor, conn=conn)
            audit.append_in(conn, "admin", "adapter.register", principal=actor, team=team,
                            payload={"adapter": adapter.served_name, "path": str(path), "new": new})
        return adapter

    def promote_adapter(self, served_name: str, *, actor: str, force: bool = False,
                        drain_s: float | None = None) -> Promotion:
        """Load on every host, make it the team's adapter, unload the old version after the drain."""
        from citeline.lora.rollout import promote
        hosts = self.adapter_hosts()
        audit = self.audit
        drain = self.settings.adapters.drain_s if drain_s is None else drain_s

        def flipped(conn: Any, previous: AdapterVersion | None) -> None:  # in the flip's own transaction
            audit.append_in(conn, "admin", "adapter.promote", principal=actor, team=self.registry.require(
                served_name).team, payload={"adapter": served_name, "previous": previous.served_name if previous
                                            else None, "forced": force, "drain_s": drain})

        try:
            result = promote(self.registry, hosts, served_name, force=force, drain_s=drain,
                             base_model_dir=self.base_model_dir(), max_rank=self.settings.adapters.max_rank,
                             on_flip=self.router.invalidate, audit=flipped)
        except AuditError:
            raise
        except CitelineError as exc:  # refused: nothing changed; the refusal is recorded
            audit.append("admin", "adapter.promote", principal=actor,
                         payload={"adapter": served_name, "forced": force, "refused": str(exc)})
            raise
        try:  # the promotion is recorded already; this row adds where the old version was unloaded
            audit.append("admin", "adapter.promote.done", principal=actor, team=result.adapter.team,
                         payload={**result.as_dict(), "forced": force})
        except AuditError as exc:
            log.warning("adapter %s was promoted (audited) but its completion row could not be written: %s",
                        served_name, exc)
        return result

    def retire_adapter(self, served_name: str, *, actor: str) -> AdapterVersion:
        """Withdraw an adapter; its team falls back to the base model. ``sync_adapters`` unloads it."""
        with self._admin() as (conn, audit):
            adapter = self.registry.retire(served_name, conn=conn)
            audit.append_in(conn, "admin", "adapter.retire", principal=actor, team=adapter.team,
                            payload={"adapter": served_name})
        self.router.invalidate()
        return adapter

    def sync_adapters(self, *, actor: str) -> list[HostReport]:
        """Make every model server serve exactly the active adapters (after a restart, a retire, ...)."""
        from citeline.lora.rollout import reconcile
        reports = reconcile(self.registry, self.adapter_hosts(), base_model_dir=self.base_model_dir(),
                            max_rank=self.settings.adapters.max_rank)
        self.audit.append("admin", "adapter.sync", principal=actor, payload={"hosts": [r.as_dict() for r in reports]})
        return reports

    def retry_policy(self) -> RetryPolicy:
        """The ``[scheduler]`` settings' retry policy."""
        s = self.settings.scheduler
        return RetryPolicy(s.retries, s.backoff_s, s.max_backoff_s)

    def scheduler(self, *, retry: RetryPolicy | None = None, tick_s: float | None = None) -> Scheduler:
        """Runs the sources with a ``schedule`` when due (``citeline scheduler``); defaults from ``[scheduler]``."""
        return Scheduler(self, retry=retry or self.retry_policy(),
                         tick_s=self.settings.scheduler.tick_s if tick_s is None else tick_s)

    def source_status(self, *, retry: RetryPolicy | None = None) -> list[SourceStatus]:
        """Every configured or indexed source: last run, counts, error, and next scheduled run."""
        retry = retry or self.retry_policy()
        with self.db.writer() as conn:
            rows = conn.execute(
                "SELECT s.name, s.connector, (SELECT count(*) FROM documents d WHERE d.source_id = s.id),"
                " r.status, r.started_at, r.finished_at, s.last_success_at, r.added, r.updated, r.unchanged,"
                " r.deleted, r.failed, r.error"
                " FROM sources s LEFT JOIN LATERAL (SELECT * FROM sync_runs WHERE source_id = s.id"
                " ORDER BY id DESC LIMIT 1) r ON true ORDER BY s.name"
            ).fetchall()
            last = last_runs(conn)
        configured = {s.name: s for s in self.settings.sources}
        never = [(s.name, s.connector, 0, None, None, None, None, None, None, None, None, None, None)
                 for s in self.settings.sources if s.name not in {r[0] for r in rows}]
        now = datetime.now(UTC)
        out = []
        for r in sorted([*rows, *never], key=lambda row: row[0]):
            counts = dict(zip(("added", "updated", "unchanged", "deleted", "failed"), r[7:12], strict=True))
            src = configured.get(r[0])
            schedule = src.schedule if src else None
            out.append(SourceStatus(r[0], r[1], r[2], r[3], r[4], r[5], r[6],
                                    {k: v or 0 for k, v in counts.items()}, r[12], schedule,
                                    next_run(r[0], schedule, last.get(r[0]), now, retry)))
        return out

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Citeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
