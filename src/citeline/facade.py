"""The :class:`Citeline` facade: settings → database, embedder, chunker → sync, search, ask; the rest by concern.

Serving and the CLI reach the core through this object: the query path is a method here, and each other
concern is an object it hands out (:mod:`citeline.operations`): ``cl.admin`` (principals and keys, every
change audited), ``cl.adapters`` (the team adapters' lifecycle), ``cl.feedback`` (feedback on answers),
``cl.sources`` (status, scheduler), ``cl.database`` (migrations, dropping a namespace)::

    from citeline import Citeline
    with Citeline.open("examples/acme/citeline.toml") as cl:
        cl.sync()                                   # every configured source
        cl.admin.add_principal(Principal("alice", ("engineering",)), actor="setup")
        for hit in cl.search("how do I roll back a deploy", user="alice").hits:
            print(hit.title, hit.url)

Heavy parts (the embedding model, the database pool) start on first use, not at construction.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from citeline import plugins
from citeline.access.audit import AuditLog, AuditRecord, load_key
from citeline.access.audit_search import AuditFilter, AuditPage
from citeline.access.keys import ApiKey, Authenticated, KeyDirectory
from citeline.access.principals import PrincipalDirectory
from citeline.answers.assistant import Answer, AnswerStream, Assistant
from citeline.answers.cache import AnswerCache
from citeline.contracts.chunker import Chunker
from citeline.contracts.embedder import Embedder
from citeline.contracts.generator import ChatMessage, GenerationBackend
from citeline.contracts.verifier import Verifier
from citeline.db import Database
from citeline.db.embedder_record import check_embedder
from citeline.db.migrations import dimension_mismatch
from citeline.domain import SearchMode
from citeline.errors import ConfigError
from citeline.ingest.sync import ProgressCallback, SyncReport, SyncRunner
from citeline.lora.routing import AdapterRouter
from citeline.operations.adapters import Adapters
from citeline.operations.admin import Admin
from citeline.operations.database import DatabaseLifecycle
from citeline.operations.feedback import Feedback, FeedbackEntry, FeedbackSummary
from citeline.operations.inspect import Inspect, Replay
from citeline.operations.principal_sources import PrincipalSources
from citeline.operations.scim import Scim
from citeline.operations.sources import Sources, SourceStatus, build_connector
from citeline.operations.sync_jobs import RunStatus, SyncJobs
from citeline.retrieval.documents import DocumentText, read_document
from citeline.retrieval.search import Retriever, SearchResult
from citeline.settings import Settings
from citeline.tracing import span

_SYNC_COUNTS = ("run_id", "status", "added", "updated", "unchanged", "deleted", "failed", "chunks", "seconds")

# Answer, AnswerStream, Authenticated and DocumentText: for serving, which reaches the core only through this module
# ApiKey, AuditFilter, AuditPage, AuditRecord, FeedbackEntry, FeedbackSummary, Replay, RunStatus: for the admin API
# (serving) and the CLI
__all__ = ["Answer", "AnswerStream", "ApiKey", "AuditFilter", "AuditPage", "AuditRecord", "Authenticated", "Citeline",
           "DocumentText", "FeedbackEntry", "FeedbackSummary", "Replay", "RunStatus", "SourceStatus", "build_connector"]


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
            embedder: Embedder = plugins.create(plugins.EMBEDDERS, e.provider, e.options, section="embedding.options",
                                                resolve_path=self.settings.resolve_path, home=self.settings.home)
            if self._db is not None and self._db.embedding_dim != embedder.dimension:  # opened without the model
                raise dimension_mismatch(self.namespace, self._db.embedding_dim, embedder.dimension)
            self._embedder = embedder
        return self._embedder

    @functools.cached_property
    def chunker(self) -> Chunker:
        c = self.settings.chunking
        return plugins.create(plugins.CHUNKERS, c.chunker, c.options, section="chunking.options",
                              resolve_path=self.settings.resolve_path, tokenize=self.embedder.tokenize)

    @property
    def db(self) -> Database:
        if self._db is None:
            # an existing namespace opens with its recorded dimension: admin commands never load the model
            dimension = self._embedder.dimension if self._embedder is not None else lambda: self.embedder.dimension
            self._db = Database.from_settings(self.settings, dimension, namespace=self.namespace)
        return self._db

    @functools.cached_property
    def principals(self) -> PrincipalDirectory:
        """Look principals up (read-only: changes go through :attr:`admin`, audited)."""
        return PrincipalDirectory(self.db)

    @functools.cached_property
    def _embedder_checked(self) -> bool:
        """The index's recorded embedder is the configured one (recorded here on first use): checked once,
        before anything searches or writes vectors."""
        check_embedder(self.db, self.embedder.name)
        return True

    @functools.cached_property
    def retriever(self) -> Retriever:
        self._embedder_checked  # noqa: B018 - refuse an index built by another embedder
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
    def keys(self) -> KeyDirectory:
        """List and authenticate API keys (read-only: changes go through :attr:`admin`, audited)."""
        return KeyDirectory(self.db)

    @property
    def router(self) -> AdapterRouter:
        """Each request's model: its team's active adapter, else the base model."""
        return self.adapters.router

    # -- concerns, handed out (citeline.operations) ---------------------------------------------------
    @functools.cached_property
    def admin(self) -> Admin:
        """Principals and API keys: every change takes ``actor`` and commits with its audit row."""
        return Admin(self.db, lambda: self.audit)

    @functools.cached_property
    def principal_sources(self) -> PrincipalSources:
        """``[[principal_sources]]`` (LDAP, SCIM, plugins): sync one, each sync audited with what it changed."""
        return PrincipalSources(self.settings, self.db, lambda: self.audit)

    @functools.cached_property
    def scim(self) -> Scim:
        """SCIM 2.0 provisioning (the ``scim`` principal source): each change audited with the principals it
        implies; ConfigError unless exactly one ``[[principal_sources]]`` has ``kind = "scim"``."""
        return Scim(self.db, lambda: self.audit, self.principal_sources)

    @functools.cached_property
    def adapters(self) -> Adapters:
        """Team adapters: the registry's listings and the audited lifecycle (register, promote, retire, sync)."""
        return Adapters(self.settings, self.db, audit=lambda: self.audit, backend=lambda: self.backend,
                        on_promote=self._promoted)

    def _promoted(self, previous: str | None) -> None:
        """An adapter was promoted here: drop the old version's cached answers (its successor's served name
        is in the key, so it misses anyway; other replicas miss by the key alone)."""
        cache = self.__dict__.get("answer_cache")  # only if this process made one
        if cache is not None and previous is not None:
            cache.clear(previous)

    @functools.cached_property
    def feedback(self) -> Feedback:
        """Feedback on answers: given by the asker against the answer's audit row (audited), reported per
        team and model, read back as training data (:func:`citeline.workflows.feedback_training_data`)."""
        return Feedback(self.db, lambda: self.audit)

    @functools.cached_property
    def answer_cache(self) -> AnswerCache | None:
        """Generated answers by what decided them (``answer.cache``; None when disabled)."""
        return AnswerCache.from_settings(self.settings.answer.cache)

    @functools.cached_property
    def database(self) -> DatabaseLifecycle:
        """The index's database: migrations' status, migrate, drop a namespace (``citeline db``)."""
        return DatabaseLifecycle(self.settings, self.namespace, lambda: self.embedder.dimension)

    @functools.cached_property
    def sources(self) -> Sources:
        """Each source's status and the scheduler."""
        return Sources(self, jobs=lambda: self.principal_sources.jobs() if self.settings.principal_sources else [])

    @functools.cached_property
    def sync_jobs(self) -> SyncJobs:
        """Sync now, in the background (the admin API's sync button): audited, returns the run id."""
        return SyncJobs(self, lambda: self.audit)

    @functools.cached_property
    def inspect(self) -> Inspect:
        """View as a principal (audited as an impersonation), replay an audited answer, search the audit log."""
        return Inspect(self.db, audit=lambda: self.audit, principals=self.principals, search=self.search,
                       assistant=lambda: self.assistant)

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
                         verifier=self.verifier if self.settings.answer.verify != "off" else None,
                         cache=self.answer_cache)

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
        self._embedder_checked  # noqa: B018 - refuse an index built by another embedder
        reports = []
        for src, connector in connectors:
            if stop is not None and stop.is_set():
                break
            runner = SyncRunner(self.db, self.embedder, self.chunker, batch_size=src.batch_size,
                                on_progress=on_progress, stop=stop)
            with span("sync", source=src.name, connector=src.connector, full=full) as s:  # batches: its children
                report = runner.run(src.name, src.connector, connector, full=full)
                s.set_attributes({f"citeline.{k}": getattr(report, k) for k in _SYNC_COUNTS})
            reports.append(report)
        return reports

    def search(self, query: str, *, user: str | None, k: int | None = None,
               mode: SearchMode = SearchMode.HYBRID) -> SearchResult:
        """Top-k chunks that ``user`` may see. An unknown user sees public documents only."""
        return self.retriever.search(query, user=user, k=k, mode=mode)

    def document(self, document_id: int, *, user: str | None) -> DocumentText | None:
        """One document's title, URL, source and text as ``user`` may see it; ``None`` when it does not exist
        *or* the user may not see it (the same answer: reading by id reveals nothing). Not audited here."""
        return read_document(self.db, document_id, user=user)

    def ask(self, question: str, *, user: str, model: str | None = None,
            history: Sequence[ChatMessage] = ()) -> Answer:
        """A grounded, cited (or refused) answer for ``user``; audited before it is returned.

        ``history``: the conversation's earlier turns (a follow-up is rewritten for retrieval with them).
        """
        return self.assistant.ask(question, self.principals.get(user), model=model, history=history)

    def ask_stream(self, question: str, *, user: str, model: str | None = None,
                   history: Sequence[ChatMessage] = ()) -> AnswerStream:
        return self.assistant.stream(question, self.principals.get(user), model=model, history=history)

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
