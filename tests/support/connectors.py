"""Small in-memory connectors for driving the real sync runner in tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from citeline.contracts.connector import Change, Checkpoint, ConnectorConfig, Delete, Failure, Upsert
from citeline.domain import Access, Document
from citeline.errors import ConnectorError


class ListConnector:
    """Yields the given documents in order with a checkpoint every ``every`` items.

    ``failures`` maps ids to reasons (yielded as Failure instead of Upsert); ``deleted`` ids are yielded
    as Delete; ``listing_fails`` makes ``list_ids`` raise like a source that cannot list completely.
    """

    class Config(ConnectorConfig):
        pass

    def __init__(self, docs: list[Document], *, every: int = 2, failures: Mapping[str, str] | None = None,
                 deleted: list[str] | None = None, listing_fails: bool = False, listing: bool = True) -> None:
        self.docs = docs
        self.every = every
        self.failures = dict(failures or {})
        self.deleted = list(deleted or [])
        self.listing_fails = listing_fails
        self.listing = listing
        self.yielded: list[str] = []

    def validate(self) -> None:
        return None

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        start = int((cursor or {}).get("pos", 0))
        for pos in range(start, len(self.docs)):
            doc = self.docs[pos]
            self.yielded.append(doc.external_id)
            if doc.external_id in self.failures:
                yield Failure(doc.external_id, self.failures[doc.external_id])
            else:
                yield Upsert(doc)
            if (pos + 1) % self.every == 0:
                yield Checkpoint({"pos": pos + 1})
        for ext in self.deleted:
            yield Delete(ext)
        yield Checkpoint({})

    def list_ids(self) -> list[str] | None:
        if self.listing_fails:
            raise ConnectorError("listing interrupted by the source")
        if not self.listing:
            return None
        return [d.external_id for d in self.docs]


def doc(ext: str, text: str, *, title: str | None = None, access: Access | None = None) -> Document:
    return Document(external_id=ext, title=title or ext, text=text, access=access or Access.everyone(),
                    url=f"https://example.test/{ext}")
