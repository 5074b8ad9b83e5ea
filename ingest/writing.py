"""Writing a batch's documents so that one the database refuses does not stop the rest.

:func:`write_documents` writes each group under a savepoint. A group the database refuses (a value it
cannot store, an id too long for its index) is rolled back and split in two until the refused document is
found: that document becomes a per-document :class:`~citeline.contracts.connector.Failure` (its previous
version stays) and the rest of the batch commits with its checkpoint as usual.
"""

from __future__ import annotations

import logging

import psycopg

from citeline.contracts.connector import Failure
from citeline.db import index as store
from citeline.domain import Document
from citeline.ingest.cleaning import printable

__all__ = ["Unit", "write_documents"]

log = logging.getLogger("citeline.ingest.sync")  # the sync's logger: what it reports is part of a sync run

Unit = store.PreparedDocument | tuple[int, Document]  # a document to write, or (its id, document): access only

# what the database says about one document's values (not about the connection or the server): the
# document is refused and the rest of its batch is written
_REFUSED = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)


def write_documents(conn: psycopg.Connection, source_id: int, units: list[Unit],
                    ts_config: str) -> tuple[int, dict[str, Failure]]:
    """Write ``units`` in the open transaction; returns (chunks written, refused: id → Failure)."""
    refused: dict[str, Failure] = {}
    written = 0

    def attempt(group: list[Unit]) -> None:
        nonlocal written
        try:
            with conn.transaction():
                ready = [u for u in group if isinstance(u, store.PreparedDocument)]
                n = store.replace_documents(conn, source_id, ready, ts_config)
                for unit in group:
                    if not isinstance(unit, store.PreparedDocument):
                        store.update_document_access(conn, *unit)
        except _REFUSED as exc:
            if len(group) > 1:
                attempt(group[:len(group) // 2])
                attempt(group[len(group) // 2:])
                return
            doc = group[0].document if isinstance(group[0], store.PreparedDocument) else group[0][1]
            log.warning("document %s refused by the database: %s", printable(doc.external_id), _first_line(exc))
            refused[doc.external_id] = Failure(printable(doc.external_id), _refusal(exc))
            return
        written += n

    if units:
        attempt(units)
    return written, refused


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _refusal(exc: psycopg.Error) -> str:
    code = f"SQLSTATE {exc.sqlstate}: " if exc.sqlstate else ""
    return (f"the database refused this document ({code}{_first_line(exc)}); the rest of the sync went on and "
            "its previous version, if any, stays indexed: fix the item in the source")
