"""Per-item helpers the API connectors share (private: not part of the connector contract).

* :func:`fetch_item` runs the requests for one item and sorts what can go wrong into the contract's
  values: the item as built, ``GONE`` (404/410: the caller yields a Delete), or a :class:`Failure` for a
  problem of that item alone (a 5xx that outlasted the retries, an item that does not parse). Anything
  that concerns the whole source (credentials, budget, rate limit, network) is raised and ends the run.
* :func:`grants` turns configured entries (``public``, ``user:NAME``, group names) into one Access;
  :data:`AccessMapping` is the config type of a mapping from a source's names to such entries, checked
  when the config loads.
* :func:`as_change` turns what :func:`fetch_item` returned into the Change to yield; :func:`change_id`
  is the external id of any Change but a Checkpoint.
* :func:`retry_ids` reads the ids a cursor carries to retry: items that failed in an earlier sync
  although the source's change feed has already moved past them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator

from citeline.connectors._common import ItemError, access_from_entries
from citeline.connectors._http import ApiError, NotFound
from citeline.contracts.connector import Change, Delete, Failure, Upsert
from citeline.domain import Access, Document
from citeline.errors import ConnectorError

__all__ = ["GONE", "AccessMapping", "Gone", "as_change", "change_id", "fetch_item", "grants", "retry_ids"]

T = TypeVar("T")


class Gone:
    """The item answered 404/410: deleted at the source, or moved where these credentials cannot see it."""


GONE: Final = Gone()


def fetch_item(external_id: str, build: Callable[[], T]) -> T | Gone | Failure:
    """``build()``, or GONE, or a Failure for ``external_id``; whole-source errors propagate."""
    try:
        return build()
    except NotFound:
        return GONE
    except ItemError as exc:
        return Failure(external_id, str(exc))
    except ApiError as exc:
        if exc.status is not None and 500 <= exc.status < 600 and exc.status != 503:
            return Failure(external_id, f"{exc} (retried next sync)")
        raise


def grants(entries: Iterable[str], where: str) -> Access:
    """``public``, ``user:NAME`` and group names as one Access (an ItemError when a name is invalid)."""
    return access_from_entries(entries, where)


def _check_mapping(value: dict[str, list[str]]) -> dict[str, list[str]]:
    for key, entries in value.items():
        try:
            access_from_entries(entries, key)
        except ItemError as exc:
            raise ValueError(str(exc)) from None
    return value


AccessMapping = Annotated[dict[str, list[str]], AfterValidator(_check_mapping)]
"""``{source name: ["public" | "user:NAME" | group, ...]}``, every entry checked at load time."""


def retry_ids(cursor: Mapping[str, Any], kind: type = str) -> list[Any]:
    """The ``retry`` list of a cursor this connector wrote (empty when absent)."""
    value = cursor.get("retry", [])
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConnectorError(f"cursor retry list {value!r} was not written by this connector: reset the "
                             "source's sync state to start over")
    return list(value)


def as_change(external_id: str, result: Document | Delete | Gone | Failure) -> Change:
    """A built document as an Upsert, GONE as a Delete; Deletes and Failures as they are."""
    if isinstance(result, Gone):
        return Delete(external_id)
    if isinstance(result, Document):
        return Upsert(result)
    return result


def change_id(change: Change) -> str:
    """The external id an Upsert, Delete or Failure is about."""
    if isinstance(change, Upsert):
        return change.document.external_id
    if isinstance(change, Delete | Failure):
        return change.external_id
    raise TypeError(f"{type(change).__name__} has no external id")
