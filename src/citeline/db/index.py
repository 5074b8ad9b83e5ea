"""The index in PostgreSQL: sources, documents, chunks, and the lexicon statistics (the sync's writes).

Functions here take an open connection so callers decide the transaction (the sync runner writes a
whole batch in one). All SQL is parameterized; row-level security does the access filtering for
reads (see :mod:`citeline.db`). Rows are read by column name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from citeline.domain import Chunk, Document

__all__ = [
    "LexiconStats",
    "PreparedDocument",
    "StoredDocument",
    "delete_documents",
    "ensure_source",
    "existing_documents",
    "lexicon_is_stale",
    "prune_documents",
    "refresh_lexicon",
    "replace_documents",
    "update_document_access",
]


@dataclass(frozen=True)
class StoredDocument:
    id: int
    external_id: str
    content_hash: str
    access: Mapping[str, Any]
    url: str | None
    title: str
    metadata: Mapping[str, Any]

    def same_attributes(self, doc: Document) -> bool:
        """True if access, URL, title and metadata equal the document's (content compared by hash)."""
        return (
            dict(self.access) == doc.access.as_dict()
            and self.url == doc.url
            and self.title == doc.title
            and dict(self.metadata) == dict(doc.metadata)
        )


@dataclass(frozen=True)
class PreparedDocument:
    """A document with its content hash, chunks and one vector per chunk, ready to write."""

    document: Document
    content_hash: str
    chunks: Sequence[Chunk]
    vectors: np.ndarray


def ensure_source(conn: psycopg.Connection, name: str, connector: str) -> tuple[int, dict[str, Any] | None]:
    """The source's id and its last committed cursor, creating the row on first use."""
    row = conn.cursor(row_factory=dict_row).execute(
        "INSERT INTO sources (name, connector) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET connector = EXCLUDED.connector"
        " RETURNING id, cursor",
        (name, connector),
    ).fetchone()
    assert row is not None
    return row["id"], row["cursor"]


def existing_documents(conn: psycopg.Connection, source_id: int,
                       external_ids: Iterable[str]) -> dict[str, StoredDocument]:
    rows = conn.cursor(row_factory=class_row(StoredDocument)).execute(
        "SELECT id, external_id, content_hash, access, url, title, metadata FROM documents"
        " WHERE source_id = %s AND external_id = ANY(%s)",
        (source_id, list(external_ids)),
    ).fetchall()
    return {r.external_id: r for r in rows}


def _doc_params(source_id: int, prepared: PreparedDocument) -> dict[str, Any]:
    doc = prepared.document
    return {
        "source_id": source_id,
        "external_id": doc.external_id,
        "url": doc.url,
        "title": doc.title,
        "content_hash": prepared.content_hash,
        "acl": list(doc.access.tokens),
        "public": doc.access.public,
        "access": Jsonb(doc.access.as_dict()),
        "metadata": Jsonb(dict(doc.metadata)),
        "updated": doc.updated_at,
    }


def replace_documents(conn: psycopg.Connection, source_id: int, batch: Sequence[PreparedDocument],
                      ts_config: str) -> int:
    """Insert or replace documents with all their chunks; returns the number of chunks written.

    Call inside one transaction: readers see each document either as it was or as it is now, never
    absent and never doubled (MVCC), and a crash leaves the previous version in place.
    """
    chunk_rows: list[tuple[Any, ...]] = []
    with conn.cursor(row_factory=dict_row) as cur:
        for prepared in batch:
            row = cur.execute(
                "INSERT INTO documents (source_id, external_id, url, title, content_hash, acl, public, access,"
                " metadata, source_updated_at) VALUES (%(source_id)s, %(external_id)s, %(url)s, %(title)s,"
                " %(content_hash)s, %(acl)s, %(public)s, %(access)s, %(metadata)s, %(updated)s)"
                " ON CONFLICT (source_id, external_id) DO UPDATE SET url = EXCLUDED.url, title = EXCLUDED.title,"
                " content_hash = EXCLUDED.content_hash, acl = EXCLUDED.acl, public = EXCLUDED.public,"
                " access = EXCLUDED.access, metadata = EXCLUDED.metadata,"
                " source_updated_at = EXCLUDED.source_updated_at, indexed_at = now()"
                " RETURNING id",
                _doc_params(source_id, prepared),
            ).fetchone()
            assert row is not None
            doc_id = row["id"]
            cur.execute("DELETE FROM chunks WHERE document_id = %s", (doc_id,))
            doc = prepared.document
            acl = list(doc.access.tokens)
            for chunk, vector in zip(prepared.chunks, prepared.vectors, strict=True):
                chunk_rows.append((
                    doc_id, chunk.ordinal, chunk.heading, chunk.text, chunk.span_start, chunk.span_end,
                    acl, doc.access.public, vector, ts_config, f"{doc.title}\n{chunk.text}",
                ))
        if chunk_rows:
            cur.executemany(
                "INSERT INTO chunks (document_id, ordinal, heading, text, span_start, span_end, acl, public,"
                " embedding, tsv) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, to_tsvector(%s::regconfig, %s))",
                chunk_rows,
            )
    return len(chunk_rows)


def update_document_access(conn: psycopg.Connection, doc_id: int, doc: Document) -> None:
    """Apply new access/URL/title/metadata to a document whose content did not change."""
    acl = list(doc.access.tokens)
    conn.execute(
        "UPDATE documents SET url = %s, title = %s, acl = %s, public = %s, access = %s, metadata = %s,"
        " source_updated_at = %s, indexed_at = now() WHERE id = %s",
        (doc.url, doc.title, acl, doc.access.public, Jsonb(doc.access.as_dict()), Jsonb(dict(doc.metadata)),
         doc.updated_at, doc_id),
    )
    conn.execute("UPDATE chunks SET acl = %s, public = %s WHERE document_id = %s", (acl, doc.access.public, doc_id))


def delete_documents(conn: psycopg.Connection, source_id: int, external_ids: Sequence[str]) -> int:
    if not external_ids:
        return 0
    cur = conn.execute(
        "DELETE FROM documents WHERE source_id = %s AND external_id = ANY(%s)", (source_id, list(external_ids))
    )
    return cur.rowcount


def prune_documents(conn: psycopg.Connection, source_id: int, keep: Iterable[str]) -> int:
    """Delete this source's documents whose ids are not in ``keep`` (a complete listing)."""
    cur = conn.execute(
        "DELETE FROM documents WHERE source_id = %s AND NOT (external_id = ANY(%s))", (source_id, list(keep))
    )
    return cur.rowcount


@dataclass(frozen=True)
class LexiconStats:
    """What :func:`refresh_lexicon` computed (the statistics BM25 ranking reads)."""

    chunks: int
    avg_length: float
    lexemes: int
    changed_lexemes: int
    seconds: float


_LEXICON_LOCK = 0x6C657869  # "lexi"; second key: the namespace
_ACCESS_CHANGES = ("SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n"
                   " FROM lexicon_access_changes")


def lexicon_is_stale(conn: psycopg.Connection) -> bool:
    """True if the lexicon statistics are missing or the chunk set or its access changed since they were computed.

    Chunk ids only grow (a re-indexed document gets new chunk rows), so the pair (count, largest id)
    changes whenever chunks are added, replaced or deleted. An access change rewrites chunks in place; a
    trigger counts those (migration 0006), and they move chunks between the per-class statistics.
    """
    row = conn.cursor(row_factory=dict_row).execute(
        "SELECT s.chunks = c.n AND s.max_chunk_id IS NOT DISTINCT FROM c.max_id AND s.access_changes = a.n"
        " AS current FROM (SELECT count(*) AS n, max(id) AS max_id FROM chunks) c"
        f" CROSS JOIN ({_ACCESS_CHANGES}) a"
        " LEFT JOIN lexicon_stats s ON true"
    ).fetchone()
    return not (row and row["current"])


@overload
def refresh_lexicon(conn: psycopg.Connection, *, if_stale: Literal[False] = False) -> LexiconStats: ...
@overload
def refresh_lexicon(conn: psycopg.Connection, *, if_stale: bool) -> LexiconStats | None: ...


def refresh_lexicon(conn: psycopg.Connection, *, if_stale: bool = False) -> LexiconStats | None:
    """Recompute per-lexeme document frequencies and corpus statistics from all chunks.

    Both kinds are computed: over every chunk (``lexemes``, ``lexicon_stats``: the ``global`` option) and
    per visibility class (``lexicon_classes``, ``class_lexemes``: what a principal's ``visible``
    statistics are summed from; ``lexicon_refresh_classes()`` of migration 0006).
    Run as ``citeline_writer`` (it reads every chunk, whatever its ACL). Refreshes of one namespace are
    serialised by a transaction-level advisory lock; with ``if_stale`` a refresh that finds the
    statistics current (e.g. another process just refreshed them) does nothing and returns ``None``.
    Only lexemes whose frequency changed are written, so a refresh after a small sync writes little;
    the cost is one ``ts_stat`` pass over the chunks (about 1 s per 100k chunks).
    Readers keep using the previous statistics until this transaction commits.
    """
    started = time.perf_counter()
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LEXICON_LOCK,))
    if if_stale and not lexicon_is_stale(conn):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        # the chunk set first: if a sync commits while ts_stat runs, the statistics look stale (and are
        # refreshed again next time) rather than current
        row = cur.execute(
            f"SELECT count(*) AS chunks, coalesce(avg(length(tsv)), 0)::float8 AS avg_length, max(id) AS max_id,"
            f" ({_ACCESS_CHANGES}) AS access_changes FROM chunks"
        ).fetchone()
        assert row is not None
        # one statement: the new frequencies, written only where they changed, and vanished lexemes deleted
        # (the two modifications touch disjoint rows: lexemes in the new set, lexemes not in it)
        counts = cur.execute(
            "WITH fresh AS MATERIALIZED (SELECT word, ndoc FROM ts_stat('SELECT tsv FROM chunks')),"
            " upserted AS (INSERT INTO lexemes (lexeme, ndoc) SELECT word, ndoc FROM fresh"
            "   ON CONFLICT (lexeme) DO UPDATE SET ndoc = EXCLUDED.ndoc WHERE lexemes.ndoc <> EXCLUDED.ndoc"
            "   RETURNING 1),"
            " removed AS (DELETE FROM lexemes l WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.word = l.lexeme)"
            "   RETURNING 1)"
            " SELECT (SELECT count(*) FROM fresh) AS total,"
            " (SELECT count(*) FROM upserted) + (SELECT count(*) FROM removed) AS changed"
        ).fetchone()
        assert counts is not None
        total, changed = int(counts["total"]), int(counts["changed"])
        classes = cur.execute("SELECT lexicon_refresh_classes() AS changed").fetchone()
        assert classes is not None
        changed += int(classes["changed"])
        seconds = time.perf_counter() - started
        cur.execute(
            "INSERT INTO lexicon_stats (chunks, avg_length, max_chunk_id, lexemes, refresh_ms, refreshed_at,"
            " access_changes) VALUES (%s, %s, %s, %s, %s, now(), %s) ON CONFLICT (singleton) DO UPDATE SET"
            " chunks = EXCLUDED.chunks, avg_length = EXCLUDED.avg_length, max_chunk_id = EXCLUDED.max_chunk_id,"
            " lexemes = EXCLUDED.lexemes, refresh_ms = EXCLUDED.refresh_ms, refreshed_at = EXCLUDED.refreshed_at,"
            " access_changes = EXCLUDED.access_changes",
            (row["chunks"], row["avg_length"], row["max_id"], total, seconds * 1000, row["access_changes"]),
        )
    return LexiconStats(int(row["chunks"]), float(row["avg_length"]), total, changed, seconds)
