"""What the Confluence and Jira connectors share (private: not part of the connector contract).

* Config: :class:`AtlassianConfig` holds what both connectors' configs have (credentials, the API user's
  time zone, the overlap); :data:`AccessMap` is a ``{name: ["public" | "user:NAME" | group, ...]}`` field
  checked at load time, :func:`access_by_name` turns it into Access values.
* Credentials: Atlassian Cloud takes HTTP Basic ``email:API-token``; Data Center / Server takes a
  personal access token as ``Authorization: Bearer``. :func:`auth_headers` picks by whether an email is
  configured; :func:`atlassian_client` builds the sync's :class:`ApiClient` with them.
* :func:`require_visible`: ``validate()``'s check that each configured space or project exists and the
  credentials may see it.
* Time: both query languages compare dates at *minute* precision (CQL ``"yyyy-MM-dd HH:mm"``, JQL
  ``"yyyy/MM/dd HH:mm"``) in the *API user's profile time zone*; items carry exact timestamps.
  :class:`Position` keeps the exact timestamp and queries from its minute (minus an overlap); what was
  already yielded is skipped exactly, what is yielded twice is skipped by ingest's content hash.
* :func:`changed_items`: walks a query ordered by last change, ascending. After each page it re-anchors
  the query at the minute of the last item instead of paging deeper by offset, so an item edited during
  the walk (it moves to the end) cannot shift another one past the reader.

Cursors (JSON): ``{"after": ISO, "ids": [...]}`` — exactly after the item(s) last modified at ``after``
(mid-run checkpoints); ``{"since": ISO}`` — the next sync, which reads again from ``since - overlap``
(late-indexed items are not lost; the repeats cost nothing). Connectors may add their own keys.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, SecretStr, ValidationInfo

from citeline.connectors._common import ItemError, access_from_entries, parse_datetime
from citeline.connectors._http import ApiClient, ApiConfig, NotFound, Secret
from citeline.domain import Access
from citeline.errors import ConnectorError

__all__ = [
    "AccessMap",
    "AtlassianConfig",
    "Position",
    "Stamped",
    "TimeZoneName",
    "access_by_name",
    "atlassian_client",
    "auth_headers",
    "changed_items",
    "overlap_field",
    "parse_instant",
    "query_time",
    "read_position",
    "require_visible",
]

T = TypeVar("T")


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone, e.g. 'UTC' or 'Europe/Berlin'") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_zone)]
"""The API user's profile time zone: CQL and JQL read query dates in it."""


def overlap_field() -> Any:
    return Field(5, ge=0, le=24 * 60, description="minutes re-read before the cursor (late indexing, clock skew)")


class AtlassianConfig(ApiConfig):
    """The fields the Confluence and Jira configs share; each adds its scope and access mappings."""

    email: str | None = Field(None, description="Cloud: the account's email (Basic auth); unset: Bearer PAT")
    token: Secret = Field(description="API token (Cloud) or personal access token (Data Center)")
    time_zone: TimeZoneName = "UTC"
    overlap_minutes: int = overlap_field()


def _access_entries(value: dict[str, tuple[str, ...]], info: ValidationInfo) -> dict[str, tuple[str, ...]]:
    for key, entries in value.items():
        try:
            access_from_entries(entries, f"{info.field_name}.{key}")
        except ItemError as exc:
            raise ValueError(str(exc)) from None
    return value


AccessMap = Annotated[dict[str, tuple[str, ...]], AfterValidator(_access_entries)]
"""``{space, project or level name: ["public" | "user:NAME" | group, ...]}``, every entry checked at load."""


def access_by_name(mapping: Mapping[str, tuple[str, ...]], field_name: str) -> dict[str, Access]:
    """An :data:`AccessMap` field's value as one Access per name."""
    return {key: access_from_entries(entries, f"{field_name}.{key}") for key, entries in mapping.items()}


def atlassian_client(config: AtlassianConfig, product: str, may: str) -> ApiClient:
    """The HTTP client of one sync; ``may``: what the API user must be allowed, for the credentials fix."""
    fix = ("create a new API token at id.atlassian.com (Cloud, with config.email) or a personal access token "
           f"(Data Center, without email), put it in config.token, and check the user may {may}")
    return ApiClient(config, source=f"{product} {config.base_url}", headers=auth_headers(config.email, config.token),
                     fix_credentials=fix)


def require_visible(api: ApiClient, product: str, kind: str, keys: Iterable[str], path: Callable[[str], str],
                    fix: str) -> None:
    """Each key's ``path`` answers; a 404 is a ConnectorError naming the key and ``fix``."""
    for key in keys:
        try:
            api.get_json(path(key))
        except NotFound:
            raise ConnectorError(f"{product}: {kind} {key} does not exist or is not visible to these credentials: "
                                 f"{fix}") from None


def auth_headers(email: str | None, token: SecretStr) -> dict[str, str]:
    """Basic ``email:token`` (Cloud API token) with an email, else Bearer (Data Center personal access token)."""
    secret = token.get_secret_value()
    if email:
        basic = base64.b64encode(f"{email}:{secret}".encode()).decode("ascii")
        return {"Authorization": f"Basic {basic}"}
    return {"Authorization": f"Bearer {secret}"}


def parse_instant(value: object, where: str) -> datetime:
    """An Atlassian timestamp (``2024-05-01T09:30:00.000Z`` or ``...+0000``) as an aware UTC datetime."""
    return parse_datetime(value, where).astimezone(UTC)


def query_time(instant: datetime, zone: str, fmt: str) -> str:
    """``instant`` in the API user's zone, formatted for CQL/JQL (minute precision: rounded down)."""
    return instant.astimezone(ZoneInfo(zone)).strftime(fmt)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class Position:
    """Where an incremental read stands: nothing yet, ``since`` an instant, or exactly ``after`` items."""

    modified: datetime | None = None
    ids: frozenset[str] = frozenset()
    exact: bool = False  # True: "after" (skip what is at or before it); False: "since" (re-read the overlap)

    def lower_bound(self, overlap: timedelta) -> datetime | None:
        """The instant the query starts at (its minute is what CQL/JQL compare)."""
        if self.modified is None:
            return None
        return _minute(self.modified if self.exact else self.modified - overlap)

    def covers(self, modified: datetime, item_id: str, overlap: timedelta) -> bool:
        """Whether the item was read before this position (so it is skipped)."""
        if self.modified is None:
            return False
        if not self.exact:
            return modified < self.modified - overlap
        return modified < self.modified or (modified == self.modified and item_id in self.ids)

    def advance(self, modified: datetime, item_id: str) -> Position:
        if self.exact and modified == self.modified:
            return Position(modified, self.ids | {item_id}, True)
        return Position(modified, frozenset({item_id}), True)

    def final(self) -> Position:
        """The position the next sync starts from: ``since`` the last change (it re-reads the overlap)."""
        return Position(self.modified, frozenset(), False)

    def cursor(self) -> dict[str, Any]:
        if self.modified is None:
            return {}
        if self.exact:
            return {"after": _iso(self.modified), "ids": sorted(self.ids)}
        return {"since": _iso(self.modified)}


def read_position(cursor: Mapping[str, Any] | None, own_keys: frozenset[str] = frozenset()) -> Position:
    """The position in a cursor this connector wrote (``own_keys``: the connector's extra keys)."""
    if not cursor:
        return Position()
    keys = set(cursor) - own_keys
    try:
        if keys == {"after", "ids"} and isinstance(cursor["ids"], list):
            ids = cursor["ids"]
            if not all(isinstance(i, str) for i in ids):
                raise ItemError("ids must be strings")
            return Position(parse_instant(cursor["after"], "after"), frozenset(ids), True)
        if keys == {"since"}:
            return Position(parse_instant(cursor["since"], "since"), frozenset(), False)
        if not keys:
            return Position()
    except ItemError:
        pass
    raise ConnectorError(f"cursor {dict(cursor)!r} was not written by this connector (expected "
                         "{'since': ISO} or {'after': ISO, 'ids': [...]}): reset the source's sync state")


@dataclass(frozen=True)
class Stamped(Generic[T]):
    """One item of a change query: its id, exact last-change instant and the raw item."""

    id: str
    modified: datetime
    item: T = field(compare=False)


Fetch = Callable[[datetime | None, Any], tuple[list[Stamped[T]], Any]]
"""``fetch(lower, token)``: one page of the query from ``lower`` (``None``: everything), ordered by last
change ascending; ``token`` is ``None`` for the first page, else what the previous page returned. Returns
the page's items and the next token (``None`` on the last page)."""


def changed_items(fetch: Fetch[T], start: Position, overlap: timedelta) -> Iterator[tuple[Position, Stamped[T]]]:
    """Every item after ``start``, each with the position just after it (for checkpoints)."""
    position = start
    lower = start.lower_bound(overlap)
    token: Any = None
    while True:
        items, token = fetch(lower, token)
        for stamped in items:
            if position.covers(stamped.modified, stamped.id, overlap):
                continue
            position = position.advance(stamped.modified, stamped.id)
            yield position, stamped
        if token is None:
            return
        anchor = position.lower_bound(overlap) if position.exact else lower
        if anchor is not None and (lower is None or anchor > lower):
            lower, token = anchor, None  # re-anchor: a fresh query from the last item's minute
