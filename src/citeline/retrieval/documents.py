"""One indexed document read back as the asking user: its title, URL, source and text, or nothing.

Access is decided by PostgreSQL, as for search: the statements run in :meth:`citeline.db.Database.reader`
on behalf of ``user``, so the row-level policies on ``documents`` and ``chunks`` filter them. A document the
user may not see and a document that does not exist give the same answer (``None``): a caller cannot tell
them apart, so reading by id reveals nothing about what exists.

The index keeps chunks, not whole files: the text is stitched back from the chunks in order, using their
character spans to drop the overlap between neighbours (chunks without spans are joined with a blank line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from citeline.db import Database

__all__ = ["DocumentText", "read_document", "stitch"]

_DOCUMENT = ("SELECT d.id, d.external_id, d.title, d.url, s.name AS source FROM documents d"
             " JOIN sources s ON s.id = d.source_id WHERE d.id = %s")
_CHUNKS = "SELECT text, span_start, span_end FROM chunks WHERE document_id = %s ORDER BY ordinal"


@dataclass(frozen=True)
class DocumentText:
    document_id: int
    source: str
    external_id: str
    title: str
    url: str | None
    text: str


def read_document(db: Database, document_id: int, *, user: str | None) -> DocumentText | None:
    """The document ``document_id`` as ``user`` may see it (``None``: public documents only), else ``None``."""
    with db.reader(user) as conn:
        cur = conn.cursor(row_factory=dict_row)
        doc = cur.execute(_DOCUMENT, (document_id,)).fetchone()
        if doc is None:
            return None
        chunks = cur.execute(_CHUNKS, (document_id,)).fetchall()
    return DocumentText(doc["id"], doc["source"], doc["external_id"], doc["title"], doc["url"], stitch(chunks))


def stitch(chunks: list[dict[str, Any]]) -> str:
    """The chunks' texts in order, each overlap with the text before it dropped where both spans are known and
    a chunk's text is exactly its span."""
    out: list[str] = []
    end: int | None = None  # where the text stitched so far ends in the document, when known
    for c in chunks:
        text, start, stop = c["text"], c["span_start"], c["span_end"]
        exact = start is not None and stop is not None and stop - start == len(text)
        if exact and end is not None and start <= end:
            out.append(text[min(end - start, len(text)):])
        else:
            out.append(text if not out else "\n\n" + text)
        end = max(end or 0, stop) if exact else None
    return "".join(out)
