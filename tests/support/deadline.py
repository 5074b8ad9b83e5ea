"""The deletion deadline, measured the same way for every connector.

A document deleted or made private at the source must stop being retrievable within one sync of its
source. :func:`syncs_until_gone` indexes a source, checks the user can retrieve the document, applies the
change at the source (``change()``), then syncs again (from the saved cursor, as the scheduler would) until
the document is no longer retrievable for that user; it returns how many syncs that took (the deadline
holds when it is 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citeline.access.principals import PrincipalStore
from citeline.domain import Principal, SearchMode
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever

__all__ = ["syncs_until_gone"]


def _visible(retriever: Retriever, query: str, user: str, external_id: str) -> bool:
    hits = retriever.search(query, user=user, k=20, mode=SearchMode.HYBRID).hits
    return any(h.external_id == external_id for h in hits)


def syncs_until_gone(db: Any, embedder: Any, chunker: Any, *, source: str, kind: str,
                     make_connector: Callable[[], Any], principal: Principal, query: str, external_id: str,
                     change: Callable[[], None], max_syncs: int = 3) -> int:
    """Syncs after ``change()`` until ``external_id`` is not retrievable by ``principal`` (``max_syncs + 1``: never)."""
    PrincipalStore(db).put(principal)
    runner = SyncRunner(db, embedder, chunker)
    retriever = Retriever(db, embedder)
    runner.run(source, kind, make_connector())
    if not _visible(retriever, query, principal.user, external_id):
        raise AssertionError(f"{external_id} is not retrievable by {principal.user} before the change: "
                             "fix the test's query or access")
    change()
    for count in range(1, max_syncs + 1):
        report = runner.run(source, kind, make_connector())
        if report.failed or report.status != "succeeded":
            raise AssertionError(f"sync {count} after the change reported failures: {report}")
        if not _visible(retriever, query, principal.user, external_id):
            return count
    return max_syncs + 1
