"""Tickets connector: a support-desk export in JSON Lines, one ticket per line.

Each line is an object::

    {"id": 1042, "subject": "...", "body": "...", "status": "open",
     "group": "support", "organization": "globex", "requester": "dana",
     "updated_at": "2024-05-01T09:30:00Z", "url": "https://...",
     "comments": [{"author": "sam", "body": "...", "created_at": "...", "public": false}],
     "access": {"groups": ["billing"]}}

* **Id**: ``id`` (string or integer) as a string; stable across runs.
* **Text** is Markdown so the chunker splits per comment: ``# subject``, ``Status: ...``, the body, then
  one ``## Comment by author (created_at)`` section per comment. Comments with ``"public": false`` are
  internal notes and are left out unless ``include_private_comments`` is set.
* **Access**: ``group`` and ``organization`` become groups, ``requester`` a user; a ticket with none of
  them gets the source's default access. An explicit ``access`` object replaces all that (keys it leaves
  out keep the default's). Names may not contain spaces.
* **Failures**: a line that cannot be read is a Failure with the ticket id (or ``line:N`` when even the
  id cannot be read) and the line number; the sync goes on.
* **Cursor**: ``{"line": N}`` resumes after line N; the final checkpoint is ``{}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from citeline.connectors._common import (
    ItemError,
    Record,
    access_from_mapping,
    checkpoint_every_field,
    coerce_config,
    iter_jsonl,
    join_url,
    optional_str,
    parse_datetime,
    record_change,
    require_file,
    resume_position,
    with_checkpoints,
)
from citeline.contracts.connector import Change, ConnectorConfig
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["TicketsConnector"]

_METADATA_FIELDS = ("status", "group", "organization", "requester")


@dataclass(frozen=True)
class _Comment:
    author: str
    body: str
    created_at: str | None
    public: bool


class TicketsConnector:
    """Reads a JSON Lines export of support tickets; see the module docstring."""

    class Config(ConnectorConfig):
        path: Path = Field(description="the .jsonl export")
        base_url: str | None = Field(None, description="ticket URL = base_url/<id> when a line has no url")
        include_private_comments: bool = Field(False, description='index comments marked "public": false')
        checkpoint_every: int = checkpoint_every_field()

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()

    def validate(self) -> None:
        require_file(Path(self.config.path), "tickets file")

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        after = resume_position(cursor, "line", int) or 0
        self.validate()
        items = (({"line": line.number}, self._change(line)) for line in iter_jsonl(Path(self.config.path), after))
        yield from with_checkpoints(items, self.config.checkpoint_every)

    def list_ids(self) -> list[str]:
        self.validate()
        ids = []
        for line in iter_jsonl(Path(self.config.path)):
            try:
                ids.append(_line_id(line))
            except ItemError as exc:
                raise ConnectorError(
                    f"cannot list every ticket in {self.config.path}: {exc}; "
                    "fix that line (nothing is pruned until then)"
                ) from None
        return ids

    def _change(self, line: Record) -> Change:
        return record_change(line, _line_id, self._document, "line", "ticket")

    def _document(self, ticket_id: str, data: dict[str, Any]) -> Document:
        subject = (optional_str(data, "subject") or "").strip()
        if not subject:
            raise ItemError('has no subject: add a non-empty "subject" string')
        status = optional_str(data, "status")
        body = optional_str(data, "body") or ""
        comments = [c for c in _comments(data.get("comments")) if c.public or self.config.include_private_comments]
        updated = data.get("updated_at")
        return Document(
            external_id=ticket_id,
            title=subject,
            text=_render(subject, status, body, comments),
            access=_access(data, self.default_access),
            url=optional_str(data, "url") or join_url(self.config.base_url, ticket_id),
            content_type=ContentType.MARKDOWN,
            updated_at=parse_datetime(updated, "updated_at") if updated is not None else None,
            metadata={k: v for k in _METADATA_FIELDS if (v := optional_str(data, k))},
        )


def _line_id(line: Record) -> str:
    if line.data is None:
        raise ItemError(line.error or f"line {line.number} cannot be read")
    value = line.data.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ItemError(f'line {line.number} has no ticket id: add an "id" (a string or an integer)')
    return str(value).strip()


def _comments(value: object) -> list[_Comment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ItemError("comments must be a list of {author, body, created_at, public} objects")
    out = []
    for number, item in enumerate(value, start=1):
        try:
            out.append(_comment(item))
        except ItemError as exc:
            raise ItemError(f"comment {number}: {exc}") from None
    return out


def _comment(item: object) -> _Comment:
    if not isinstance(item, dict):
        raise ItemError(f"is a {type(item).__name__}, not an object with author, body, created_at")
    created = optional_str(item, "created_at")
    if created is not None:
        parse_datetime(created, "created_at")
    public = item.get("public", True)
    if not isinstance(public, bool):
        raise ItemError(f"public must be true or false, got {public!r}")
    author = (optional_str(item, "author") or "").strip() or "unknown"
    return _Comment(author=author, body=optional_str(item, "body") or "", created_at=created, public=public)


def _access(data: Mapping[str, Any], default: Access) -> Access:
    if data.get("access") is not None:
        return access_from_mapping(data["access"], default, "access")
    groups = [g.strip() for key in ("group", "organization") if (g := optional_str(data, key)) and g.strip()]
    requester = (optional_str(data, "requester") or "").strip()
    if not groups and not requester:
        return default
    try:
        return Access(users=(requester,) if requester else (), groups=tuple(groups))
    except ValueError as exc:
        raise ItemError(f"group/organization/requester: {exc}") from None


def _render(subject: str, status: str | None, body: str, comments: list[_Comment]) -> str:
    parts = [f"# {subject}"]
    if status:
        parts.append(f"Status: {status}")
    if body.strip():
        parts.append(body.strip())
    for comment in comments:
        if not comment.body.strip():
            continue
        kind = "Comment" if comment.public else "Internal note"
        when = f" ({comment.created_at})" if comment.created_at else ""
        parts.append(f"## {kind} by {comment.author}{when}\n\n{comment.body.strip()}")
    return "\n\n".join(parts) + "\n"
