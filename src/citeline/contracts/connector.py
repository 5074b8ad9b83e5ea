"""The connector contract: how a source hands documents to citeline.

A connector is a class registered under the entry-point group ``citeline.connectors``; built-ins
register the same way a third-party package would::

    [project.entry-points."citeline.connectors"]
    folder = "citeline.connectors.folder:FolderConnector"

It is built from the source's ``[[sources]]`` table: ``Connector(config, default_access)`` where
``config`` is an instance of the class's own pydantic ``Config`` model (validated from the table's
``config`` keys; relative paths already resolved against citeline.toml's folder) and
``default_access`` is the access a document gets when the source item carries none (private unless the
source says otherwise).

The three methods:

``validate()``
    Check that the source can be read at all (folder exists, credentials work). Raise
    :class:`citeline.errors.ConnectorError` with a message naming the problem and the fix.

``sync(cursor)``
    Yield the changes since ``cursor`` (``None``: from the beginning) as a stream of

    * :class:`Upsert` — a document that exists now (unchanged ones may be yielded too; ingest skips
      them by content hash),
    * :class:`Delete` — a document the source reports as deleted,
    * :class:`Failure` — one item that could not be read (with its id and a reason); the sync goes on,
      and whatever was indexed for that id before stays,
    * :class:`Checkpoint` — a cursor to resume from. Ingest stores it only after every change yielded
      before it has been committed, so a crashed sync resumes from the last checkpoint without losing
      or doubling anything. Yield one at least every few hundred items, and one last one at the end:
      the cursor the next sync should start from.

``list_ids()``
    Every external id the source holds now, a complete listing. Ingest calls it after a sync that ran
    to the end and deletes what the index holds for this source beyond it. A connector whose source
    reports deletions itself may return ``None`` to skip pruning. Raise if the listing cannot be
    completed: no deletions are applied from a partial listing.

Ids must be stable across runs: the same item always gets the same ``external_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from citeline.domain import Document

__all__ = [
    "Change",
    "Checkpoint",
    "Connector",
    "ConnectorConfig",
    "Delete",
    "Failure",
    "Upsert",
]


class ConnectorConfig(BaseModel):
    """Base of every connector's typed config (unknown keys are an error, values are frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Upsert:
    document: Document


@dataclass(frozen=True)
class Delete:
    external_id: str


@dataclass(frozen=True)
class Failure:
    external_id: str
    reason: str


@dataclass(frozen=True)
class Checkpoint:
    """An opaque, JSON-serialisable resume position."""

    cursor: Mapping[str, Any]


Change = Upsert | Delete | Failure | Checkpoint


@runtime_checkable
class Connector(Protocol):
    """What ingest consumes. See the module docstring for the full contract."""

    Config: ClassVar[type[ConnectorConfig]]

    def __init__(self, config: Any, default_access: Any) -> None: ...

    def validate(self) -> None: ...

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]: ...

    def list_ids(self) -> Iterable[str] | None: ...

