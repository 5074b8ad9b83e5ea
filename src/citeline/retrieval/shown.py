"""Chunks shown in the past, read back today: their text, and whether a given user may still see them.

A chunk's text never changes under its id: re-indexing a document deletes its chunks and inserts new rows
(:func:`citeline.db.index.write_documents`); only the access columns are ever updated in place. So a chunk
id that still exists still holds exactly the text that was shown, and one that is gone was replaced or its
document removed. Whether ``user`` may see it today is decided by PostgreSQL (the reader's row-level
policy, as for search), never in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg.rows import dict_row

from citeline.db import Database

__all__ = ["ChunkToday", "chunks_today"]

# as the writer: every chunk, whoever may read it (the admin replaying needs the text and the facts)
_ALL = ("SELECT c.id, c.document_id, c.text, c.heading, d.title, d.url, d.external_id, s.name AS source"
        " FROM chunks c JOIN documents d ON d.id = c.document_id JOIN sources s ON s.id = d.source_id"
        " WHERE c.id = ANY(%s)")
# as the reader on behalf of the user: the policy leaves only what that user may see today
_VISIBLE = "SELECT id FROM chunks WHERE id = ANY(%s)"


@dataclass(frozen=True)
class ChunkToday:
    chunk_id: int
    exists: bool
    visible: bool  # to the user asked about, today
    document_id: int | None = None
    title: str | None = None
    url: str | None = None
    source: str | None = None
    external_id: str | None = None
    heading: str | None = None
    text: str | None = None


def chunks_today(db: Database, chunk_ids: Sequence[int], *, user: str | None) -> dict[int, ChunkToday]:
    """Each of ``chunk_ids`` as it is now, and whether ``user`` (None: nobody, public only) may see it."""
    ids = sorted({int(i) for i in chunk_ids})
    if not ids:
        return {}
    with db.writer() as conn:
        rows = {r["id"]: r for r in conn.cursor(row_factory=dict_row).execute(_ALL, (ids,)).fetchall()}
    with db.reader(user) as conn:
        visible = {r["id"] for r in conn.cursor(row_factory=dict_row).execute(_VISIBLE, (ids,)).fetchall()}
    out = {}
    for i in ids:
        r = rows.get(i)
        out[i] = ChunkToday(i, False, False) if r is None else ChunkToday(
            i, True, i in visible, r["document_id"], r["title"], r["url"], r["source"], r["external_id"],
            r["heading"], r["text"])
    return out
