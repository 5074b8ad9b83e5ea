"""Which embedder made the index: recorded once in ``index_meta`` (key ``embedder``), then enforced.

Vectors of two embedders are not comparable even where their dimensions agree, so an index built by one
is refused to another (:class:`SchemaMismatchError`). An index created before the name was recorded
holds none: the first embedder that opens it is adopted silently (migration 0007 lets
``citeline_writer`` insert the row; nothing may update it).
"""

from __future__ import annotations

from psycopg.rows import dict_row

from citeline.db import Database
from citeline.errors import SchemaMismatchError

__all__ = ["check_embedder"]

_RECORDED = "SELECT value FROM index_meta WHERE key = 'embedder'"
_ADOPT = "INSERT INTO index_meta (key, value) VALUES ('embedder', %s) ON CONFLICT (key) DO NOTHING"


def check_embedder(db: Database, name: str) -> None:
    """Record ``name`` as the index's embedder if it has none; refuse another one with the fix."""
    with db.writer() as conn:
        conn.execute(_ADOPT, (name,))  # a no-op where one is recorded (also one written concurrently)
        row = conn.cursor(row_factory=dict_row).execute(_RECORDED).fetchone()
    recorded = row["value"] if row else name
    if recorded != name:
        raise SchemaMismatchError(
            f"namespace {db.namespace!r} was indexed by the embedder {recorded!r} but the configured embedder is "
            f"{name!r}: their vectors are not comparable. Configure {recorded!r} again ([embedding] provider and "
            f"options), or re-index with the new one into a new namespace (database.namespace) and switch once it "
            f"is synced (then `citeline db drop-namespace {db.namespace} --yes`)"
        )
