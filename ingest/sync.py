"""The sync runner: connector changes → chunk → embed → write, one transaction per batch.

Promises (tested in tests/integration/test_sync.py):

* unchanged documents (same content hash) are skipped; a change of access alone updates the ACL
  without re-embedding;
* a batch's documents, chunks, failures, counts and checkpoint commit in one transaction, and a
  checkpoint is stored only once everything yielded before it has been committed, so a sync killed
  mid-way resumes from its last checkpoint with nothing lost or doubled;
* a changed document is replaced atomically (readers never see it absent or doubled);
* deletions from a listing are applied only after the sync ran to its end and the listing completed;
* one sync per source at a time, across processes (a PostgreSQL advisory lock);
* every change a connector yields passes one cleaning boundary (:mod:`citeline.ingest.cleaning`): text
  PostgreSQL cannot store is cleaned, an id or access name that cannot be stored makes that document a
  per-document failure; a document the database still refuses is found by bisecting its batch under
  savepoints and recorded as a failure, and the rest of the batch commits with its checkpoint, so one
  dirty document never stops a source (tested in tests/security/test_dirty_documents.py);
* after a run that changed the chunks (or finds the lexicon statistics stale, e.g. after an earlier
  run failed part-way), the corpus statistics that BM25 ranking reads are recomputed
  (:func:`citeline.db.index.refresh_lexicon`); until then lexical ranking uses the previous ones.

A ``stop`` event (set by the scheduler on SIGTERM) is checked between batches: the batch in hand
commits with its checkpoint, then the run ends as ``interrupted`` without pruning, and the next run
resumes from that checkpoint.

Embedding (the slow stage) of batch N+1 overlaps with writing batch N on a background thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from citeline.contracts.chunker import Chunker
from citeline.contracts.connector import Checkpoint, Connector, Delete, Failure, Upsert
from citeline.contracts.embedder import Embedder
from citeline.db import Database
from citeline.db import index as store
from citeline.domain import Document
from citeline.errors import CitelineError, ConnectorError, SyncLockedError
from citeline.ingest.cleaning import clean_change, storable
from citeline.ingest.writing import write_documents
from citeline.tracing import capture, now_ns, record_span

__all__ = ["SyncReport", "SyncRunner", "content_hash"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[["SyncReport"], None]
STOPPED = "stopped on request after a batch; the next run resumes from its checkpoint"

# The sync's own SQL (the index's writes are in citeline.db.index); parameterized, rows read by name.
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s) AS locked"
_UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
_MARK_DEAD_RUNS = ("UPDATE sync_runs SET status = 'interrupted', finished_at = now(),"
                   " error = coalesce(error, 'process ended before the sync finished')"
                   " WHERE source_id = %s AND status = 'running'")
_START_RUN = ("INSERT INTO sync_runs (source_id, status, resumed_from, pid) VALUES (%s, 'running', %s, %s)"
              " RETURNING id")
_FINISH_RUN = "UPDATE sync_runs SET status = %s, finished_at = now(), error = %s WHERE id = %s"
_MARK_SUCCESS = ("UPDATE sources SET last_success_at = now() WHERE id = (SELECT source_id FROM sync_runs"
                 " WHERE id = %s)")
_ADD_FAILURE = "INSERT INTO sync_failures (run_id, external_id, reason) VALUES (%s, %s, %s)"
_COUNT_BATCH = ("UPDATE sync_runs SET added = added + %s, updated = updated + %s, unchanged = unchanged + %s,"
                " deleted = deleted + %s, failed = failed + %s, chunks = chunks + %s, cursor = coalesce(%s, cursor)"
                " WHERE id = %s")
_STORE_CHECKPOINT = "UPDATE sources SET cursor = %s WHERE id = %s"
_COUNT_DELETED = "UPDATE sync_runs SET deleted = deleted + %s WHERE id = %s"
_COUNT_FAILED = "UPDATE sync_runs SET failed = failed + 1 WHERE id = %s"


class _Stopped(Exception):
    """Raised between batches when the stop event is set."""


@dataclass
class SyncReport:
    """Counts of one sync run (mutable while it runs; handed to progress callbacks)."""

    source: str
    run_id: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    chunks: int = 0
    status: str = "running"
    resumed_from: Mapping[str, Any] | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    lexicon_seconds: float | None = None  # time spent refreshing the lexicon statistics (None: not needed)

    @property
    def seen(self) -> int:
        return self.added + self.updated + self.unchanged + self.failed


def content_hash(document: Document, chunker_name: str, embedder_name: str) -> str:
    """Hash of everything that decides a document's chunks and vectors."""
    h = hashlib.sha256()
    for part in (chunker_name, embedder_name, document.content_type.value, document.title, document.text):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class _Batch:
    upserts: list[Document] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    checkpoint: Mapping[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes) + len(self.failures)


@dataclass(frozen=True)
class _Prepared:
    """A batch after hashing, chunking and embedding: what to write (computed without writing)."""

    ready: list[store.PreparedDocument]
    access_only: list[tuple[int, Document]]
    unchanged: int
    new: frozenset[str]


class SyncRunner:
    """Runs connectors into one namespace of the index."""

    def __init__(self, db: Database, embedder: Embedder, chunker: Chunker, *, batch_size: int = 64,
                 on_progress: ProgressCallback | None = None, stop: threading.Event | None = None) -> None:
        self.db = db
        self.embedder = embedder
        self.chunker = chunker
        self.batch_size = batch_size
        self.on_progress = on_progress
        self.stop = stop  # checked between batches: see the module docstring
        self._lock_space = int.from_bytes(hashlib.sha256(f"sync:{db.namespace}".encode()).digest()[:4], "big",
                                          signed=True)

    def run(self, source: str, connector_name: str, connector: Connector, *, full: bool = False) -> SyncReport:
        """Sync one source. ``full`` ignores the stored cursor and starts from the beginning."""
        started = time.perf_counter()
        with self.db.writer() as conn:
            source_id, cursor = store.ensure_source(conn, source, connector_name)
        report = SyncReport(source=source)
        with self.db.session() as lock_conn:
            self._acquire(lock_conn, source, source_id)
            try:
                run_cursor = None if full else (cursor or None)
                report.resumed_from = run_cursor
                report.run_id = self._start_run(source_id, run_cursor)
                try:
                    connector.validate()
                    self._stream(source_id, connector, run_cursor, report)
                    self._prune(source_id, connector, report)
                    self._refresh_lexicon(report)
                    report.status = "succeeded"
                except _Stopped:
                    report.status = "interrupted"
                    log.info("source %s: %s", source, STOPPED)
                except BaseException as exc:
                    report.status = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
                    self._finish_run(report, error=_describe(exc))
                    raise
                report.seconds = time.perf_counter() - started
                self._finish_run(report, error=STOPPED if report.status == "interrupted" else None)
            finally:
                lock_conn.execute(_UNLOCK, (self._lock_space, source_id))
        return report

    # -- lock and run bookkeeping -------------------------------------------------------------------
    def _acquire(self, conn: psycopg.Connection, source: str, source_id: int) -> None:
        row = conn.cursor(row_factory=dict_row).execute(_TRY_LOCK, (self._lock_space, source_id)).fetchone()
        if not row or not row["locked"]:
            raise SyncLockedError(
                f"source {source!r} is being synced by another process; wait for it to finish "
                "(citeline sources status shows running syncs)"
            )

    def _start_run(self, source_id: int, cursor: Mapping[str, Any] | None) -> int:
        with self.db.writer() as conn:
            # we hold the lock, so any run still marked running died without finishing
            conn.execute(_MARK_DEAD_RUNS, (source_id,))
            row = conn.cursor(row_factory=dict_row).execute(
                _START_RUN, (source_id, Jsonb(cursor) if cursor else None, os.getpid())).fetchone()
        assert row is not None
        return int(row["id"])

    def _finish_run(self, report: SyncReport, error: str | None = None) -> None:
        with self.db.writer() as conn:
            conn.execute(_FINISH_RUN, (report.status, error, report.run_id))
            if report.status == "succeeded":
                conn.execute(_MARK_SUCCESS, (report.run_id,))

    def _refresh_lexicon(self, report: SyncReport) -> None:
        """Recompute BM25's corpus statistics if the chunks changed since they were last computed."""
        started = time.perf_counter()
        try:
            with self.db.writer() as conn:
                stats = store.refresh_lexicon(conn, if_stale=True)
        except psycopg.Error as exc:  # the sync's own writes are committed; ranking uses older statistics
            log.warning("source %s: lexicon statistics not refreshed (%s); lexical ranking uses the previous "
                        "ones until the next sync", report.source, exc)
            return
        if stats is not None:
            report.lexicon_seconds = time.perf_counter() - started
            log.info("source %s: lexicon statistics refreshed (%d chunks, %d lexemes, %d changed) in %.2f s",
                     report.source, stats.chunks, stats.lexemes, stats.changed_lexemes, report.lexicon_seconds)

    # -- the stream ---------------------------------------------------------------------------------
    def _stream(self, source_id: int, connector: Connector, cursor: Mapping[str, Any] | None,
                report: SyncReport) -> None:
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citeline-write")
        pending: Future[None] | None = None
        try:
            for batch in self._batches(connector.sync(cursor)):
                prepared = self._prepare(source_id, batch)
                if pending is not None:
                    pending.result()  # keep commits in order: one batch in flight at a time
                pending = writer.submit(capture().run, self._write, source_id, batch, prepared, report)  # in the trace
                if self.stop is not None and self.stop.is_set():
                    pending.result()  # the batch in hand commits with its checkpoint
                    raise _Stopped
            if pending is not None:
                pending.result()
        finally:
            writer.shutdown(wait=True)

    def _batches(self, changes: Iterator[Any]) -> Iterator[_Batch]:
        batch = _Batch()
        for raw in changes:
            change = clean_change(raw)  # the one cleaning boundary: see citeline.ingest.cleaning
            if change is None:
                continue
            if isinstance(change, Upsert):
                batch.upserts.append(change.document)
            elif isinstance(change, Delete):
                batch.deletes.append(change.external_id)
            elif isinstance(change, Failure):
                batch.failures.append(change)
            elif isinstance(change, Checkpoint):
                # everything before this checkpoint is in this batch or an earlier one
                batch.checkpoint = dict(change.cursor)
            else:
                raise ConnectorError(f"connector yielded {type(change).__name__}; expected Upsert, Delete, "
                                     "Failure or Checkpoint")
            if len(batch) >= self.batch_size:
                yield batch
                batch = _Batch()
        if len(batch) or batch.checkpoint is not None:
            yield batch

    def _prepare(self, source_id: int, batch: _Batch) -> _Prepared:
        """Hash, compare with the index, chunk and embed what changed (no writes)."""
        started = now_ns()
        latest: dict[str, Document] = {}
        for doc in batch.upserts:  # a later version of the same id in one batch wins
            latest[doc.external_id] = doc
        with self.db.writer() as conn:
            stored = store.existing_documents(conn, source_id, latest)
        to_embed: list[tuple[Document, str, list]] = []
        access_only: list[tuple[int, Document]] = []
        unchanged = 0
        for doc in latest.values():
            digest = content_hash(doc, self.chunker.name, self.embedder.name)
            old = stored.get(doc.external_id)
            if old is not None and old.content_hash == digest:
                if old.same_attributes(doc):
                    unchanged += 1
                else:
                    access_only.append((old.id, doc))
                continue
            to_embed.append((doc, digest, self.chunker.chunk(doc)))
        texts = [f"{doc.title}\n{c.text}" if doc.title and not c.text.startswith(doc.title) else c.text
                 for doc, _, chunks in to_embed for c in chunks]
        chunked = now_ns()
        unique = list(dict.fromkeys(texts))  # a text repeated in the batch (boilerplate, a copied page) embeds once
        vectors = self.embedder.embed_documents(unique)
        if len(unique) < len(texts):
            row = {text: i for i, text in enumerate(unique)}
            vectors = vectors[[row[text] for text in texts]]
        record_span("sync.chunk", started, chunked, documents=len(latest), changed=len(to_embed), chunks=len(texts))
        record_span("sync.embed", chunked, texts=len(unique))
        ready, at = [], 0
        for doc, digest, chunks in to_embed:
            ready.append(store.PreparedDocument(doc, digest, chunks, vectors[at:at + len(chunks)]))
            at += len(chunks)
        new = frozenset(d.external_id for d, _, _ in to_embed if d.external_id not in stored)
        return _Prepared(ready, access_only, unchanged, new)

    def _write(self, source_id: int, batch: _Batch, prepared: _Prepared, report: SyncReport) -> None:
        started = now_ns()
        with self.db.writer() as conn:
            chunks, refused = self._write_documents(conn, source_id, prepared)
            deleted = store.delete_documents(conn, source_id, batch.deletes)
            failures = [*batch.failures, *refused.values()]
            for failure in failures:
                conn.execute(_ADD_FAILURE, (report.run_id, failure.external_id, failure.reason))
            written = [p.document.external_id for p in prepared.ready if p.document.external_id not in refused]
            added = sum(1 for ext in written if ext in prepared.new)
            updated = len(written) - added + sum(1 for _, d in prepared.access_only if d.external_id not in refused)
            counts = (added, updated, prepared.unchanged, deleted, len(failures), chunks)
            conn.execute(_COUNT_BATCH,
                         (*counts, Jsonb(batch.checkpoint) if batch.checkpoint is not None else None, report.run_id))
            if batch.checkpoint is not None:
                conn.execute(_STORE_CHECKPOINT, (Jsonb(batch.checkpoint), source_id))
        report.added += counts[0]
        report.updated += counts[1]
        report.unchanged += counts[2]
        report.deleted += counts[3]
        report.failed += counts[4]
        report.chunks += counts[5]
        report.failures.extend((f.external_id, f.reason) for f in failures)
        record_span("sync.write", started, **dict(zip(("added", "updated", "unchanged", "deleted", "failed", "chunks"),
                                                      counts, strict=True)))
        if self.on_progress:
            self.on_progress(report)

    def _write_documents(self, conn: psycopg.Connection, source_id: int,
                         prepared: _Prepared) -> tuple[int, dict[str, Failure]]:
        """Write the batch's documents in the open transaction (see :func:`write_documents`)."""
        return write_documents(conn, source_id, [*prepared.ready, *prepared.access_only], self.db.ts_config)

    def _prune(self, source_id: int, connector: Connector, report: SyncReport) -> None:
        try:
            listing = connector.list_ids()
            keep = None if listing is None else list(listing)
        except CitelineError as exc:
            reason = f"deletions skipped: the source listing is incomplete ({exc})"
            self._record_failure(report, "*listing*", reason)
            return
        if keep is None:
            return
        keep = [ext for ext in keep if storable(ext)]  # an id that cannot be stored is held by no document
        with self.db.writer() as conn:
            deleted = store.prune_documents(conn, source_id, keep)
            conn.execute(_COUNT_DELETED, (deleted, report.run_id))
        report.deleted += deleted
        if self.on_progress:
            self.on_progress(report)

    def _record_failure(self, report: SyncReport, external_id: str, reason: str) -> None:
        with self.db.writer() as conn:
            conn.execute(_ADD_FAILURE, (report.run_id, external_id, reason))
            conn.execute(_COUNT_FAILED, (report.run_id,))
        report.failed += 1
        report.failures.append((external_id, reason))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, CitelineError) else f"{type(exc).__name__}: {text}"

