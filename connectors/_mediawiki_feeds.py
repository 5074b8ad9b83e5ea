"""The MediaWiki connector's cursor and change feeds (private to :mod:`citeline.connectors.mediawiki`).

* **Cursor**: :class:`FullCursor` while the first sync lists ``allpages`` (resume after page ``after`` of
  namespace ``ns``), then :class:`ChangesCursor` (a position in each feed, and the page ids to retry).
* **Feeds**: :class:`ChangeFeeds` reads ``list=logevents`` (deletions, restores, moves, protections,
  imports, merges, content-model changes) and ``list=recentchanges`` (edits and new pages) from
  ``overlap_s`` before a position, and turns each row that concerns a page in the namespaces into a
  :data:`Row`: its position, its feed and the page it names.
* **Positions** are ``(timestamp, rcid or logid)``; :func:`positions_upto` gives, for each row of the merged
  feeds, how far each feed is done once that row's page is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from citeline.connectors._mediawiki import WikiSession
from citeline.errors import ConnectorError

__all__ = ["ChangeFeeds", "ChangesCursor", "FullCursor", "Position", "Ref", "Row", "format_ts", "parse_ts",
           "positions_upto", "read_cursor", "server_time"]

Position = tuple[str, int]  # (timestamp, rcid or logid)
Ref = tuple[str, Any]  # ("id", pageid) or ("title", title): a page a feed row names
Row = tuple[Position, str, Ref]  # (position, "rc" or "log", the page)

_LOG_TYPES = {"delete", "move", "protect", "import", "merge", "contentmodel", "pagelang", "suppress"}


class FullCursor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    phase: Literal["full"] = "full"
    since: str
    ns: int
    after: str | None = None
    failed: tuple[int, ...] = ()


class ChangesCursor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    phase: Literal["changes"] = "changes"
    log: Position
    rc: Position
    retry: tuple[int, ...] = ()


def read_cursor(cursor: Mapping[str, Any] | None, namespaces: tuple[int, ...]) -> FullCursor | ChangesCursor | None:
    """The cursor a sync resumes from (None: none, a full sync); :class:`ConnectorError` for a foreign one."""
    if not cursor:
        return None
    try:
        model = FullCursor if cursor.get("phase") == "full" else ChangesCursor
        state: FullCursor | ChangesCursor = model.model_validate(dict(cursor))
        for position in ((state.log, state.rc) if isinstance(state, ChangesCursor) else ((state.since, 0),)):
            parse_ts(position[0])
    except (ValidationError, ValueError):
        raise ConnectorError(f"cursor {dict(cursor)!r} was not written by this connector: reset the source's "
                             "sync state to start over") from None
    if isinstance(state, FullCursor) and state.ns not in namespaces:
        raise ConnectorError(f"cursor {dict(cursor)!r} resumes namespace {state.ns}, which config.namespaces no "
                             "longer has: reset the source's sync state to start over")
    return state


class ChangeFeeds:
    """The log and recent-changes rows of one wiki that concern the pages of ``namespaces``."""

    def __init__(self, wiki: WikiSession, *, namespaces: tuple[int, ...], page_size: int, overlap_s: float) -> None:
        self.wiki = wiki
        self.namespaces = namespaces
        self.page_size = page_size
        self.overlap_s = overlap_s

    def log_rows(self, since: Position) -> tuple[list[Row], Position]:
        """The log rows that concern a page in the namespaces, and the position of the last row read."""
        params = {"list": "logevents", "ledir": "newer", "lestart": self._from(since), "lelimit": self.page_size,
                  "leprop": "ids|title|type|timestamp|details"}
        rows, end = [], since
        for row in self.wiki.query_all(params, "logevents"):
            position = (row["timestamp"], int(row["logid"]))
            end = max(end, position)
            if self._seen(position, since) or row.get("type") not in _LOG_TYPES or "title" not in row:
                continue
            target_ns = (row.get("params") or {}).get("target_ns")
            if row.get("ns") not in self.namespaces and target_ns not in self.namespaces:
                continue
            ref: Ref = ("id", int(row["logpage"])) if row.get("logpage") else ("title", row["title"])
            rows.append((position, "log", ref))
        return rows, end

    def rc_rows(self, since: Position) -> tuple[list[Row], Position]:
        """Edits and new pages in the namespaces, and the position of the last row read."""
        params = {"list": "recentchanges", "rcdir": "newer", "rcstart": self._from(since), "rctype": "edit|new",
                  "rcnamespace": "|".join(map(str, self.namespaces)), "rcprop": "ids|timestamp|title",
                  "rclimit": self.page_size}
        rows: list[Row] = []
        end = since
        for row in self.wiki.query_all(params, "recentchanges"):
            position = (row["timestamp"], int(row["rcid"]))
            end = max(end, position)
            if row.get("pageid") and not self._seen(position, since):
                rows.append((position, "rc", ("id", int(row["pageid"]))))
        return rows, end

    def _seen(self, position: Position, since: Position) -> bool:
        """A row the cursor already covers; with ``overlap_s`` > 0 the whole window is read again."""
        return self.overlap_s == 0 and position <= since

    def _from(self, position: Position) -> str:
        return format_ts(parse_ts(position[0]) - timedelta(seconds=self.overlap_s))


def positions_upto(rows: list[Row], start: dict[str, Position]) -> list[dict[str, Position]]:
    """For each row, each feed's furthest position among the rows up to it (never behind ``start``)."""
    current = dict(start)
    out = []
    for position, feed, _ in rows:
        if position > current[feed]:
            current = {**current, feed: position}
        out.append(current)
    return out


def server_time(wiki: WikiSession) -> datetime:
    body = wiki.query({"meta": "userinfo", "curtimestamp": "1"})
    return parse_ts(body["curtimestamp"])


def parse_ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
