"""Helpers the built-in file connectors share (private: not part of the connector contract).

One place for the things every file-based connector does the same way: turning a config table into
its typed model, checking the source file, reading cursors, emitting checkpoints, parsing dates,
access lists and JSON Lines. A per-item problem is raised here as :class:`ItemError` and turned into a
:class:`~citeline.contracts.connector.Failure` by the connector; a whole-source problem is a
:class:`~citeline.errors.ConnectorError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import Field, ValidationError

from citeline.contracts.connector import Change, Checkpoint, ConnectorConfig, Failure, Upsert
from citeline.domain import Access, Document
from citeline.errors import ConfigError, ConnectorError

__all__ = [
    "ItemError",
    "Record",
    "access_from_entries",
    "access_from_mapping",
    "checkpoint_every_field",
    "coerce_config",
    "iter_jsonl",
    "join_url",
    "optional_str",
    "parse_datetime",
    "record_change",
    "require_file",
    "resume_position",
    "with_checkpoints",
]

C = TypeVar("C", bound=ConnectorConfig)


class ItemError(ValueError):
    """One item cannot be read; the message names the problem and the fix (becomes a Failure)."""


def checkpoint_every_field() -> Any:
    return Field(100, ge=1, description="yield a resume checkpoint after this many items")


def coerce_config(model: type[C], config: C | Mapping[str, Any]) -> C:
    """Accept the typed config (what ingest passes) or a plain mapping (handy in tests and scripts)."""
    if isinstance(config, model):
        return config
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(f"invalid connector config: {exc}") from exc


def require_file(path: Path, what: str) -> None:
    """Raise ConnectorError unless ``path`` is a readable regular file."""
    if not path.exists():
        raise ConnectorError(f"{what} {path} does not exist: fix config.path or create the file")
    if not path.is_file():
        raise ConnectorError(f"{what} {path} is not a file: point config.path at the export file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConnectorError(f"{what} {path} cannot be read ({exc.strerror}): fix its permissions") from exc


def resume_position(cursor: Mapping[str, Any] | None, key: str, kind: type) -> Any:
    """The value under ``key`` in a cursor this connector wrote; ``None`` for a fresh start."""
    if not cursor:
        return None
    value = cursor.get(key)
    if set(cursor) != {key} or not isinstance(value, kind) or isinstance(value, bool):
        raise ConnectorError(
            f"cursor {dict(cursor)!r} was not written by this connector (expected {{{key!r}: {kind.__name__}}}): "
            "reset the source's sync state to start over"
        )
    if isinstance(value, int) and value < 0:
        raise ConnectorError(f"cursor {dict(cursor)!r} has a negative position: reset the source's sync state")
    return value


def with_checkpoints(items: Iterable[tuple[Mapping[str, Any], Change]], every: int) -> Iterator[Change]:
    """Yield each item's change, a Checkpoint of its position every ``every`` items, and a final ``{}``.

    The final empty cursor means "start from the beginning": these sources report no changes, so the
    next sync reads everything again and ingest skips the unchanged documents by content hash.
    """
    for count, (position, change) in enumerate(items, start=1):
        yield change
        if count % every == 0:
            yield Checkpoint(dict(position))
    yield Checkpoint({})


def parse_datetime(value: object, field: str) -> datetime:
    """An ISO 8601 timestamp (``Z`` allowed); naive values are taken as UTC."""
    if not isinstance(value, str):
        raise ItemError(f"{field} must be an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ItemError(f"{field} {value!r} is not an ISO 8601 date: use e.g. 2024-05-01T09:30:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def optional_str(data: Mapping[str, Any], key: str) -> str | None:
    """A string field that may be absent or null; any other type is an ItemError."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ItemError(f"{key} must be a string, got {type(value).__name__} {value!r}")
    return value


def access_from_mapping(data: object, default: Access, where: str) -> Access:
    """An explicit access object: it replaces the default as a whole (keys it leaves out are empty)."""
    if not isinstance(data, Mapping):
        raise ItemError(f"{where} must be a mapping like {{groups: [...], users: [...], public: false}}")
    try:
        return Access.from_mapping(data, default)
    except ValueError as exc:
        raise ItemError(f"{where} is invalid: {exc}") from None


def access_from_entries(entries: Iterable[str], where: str) -> Access:
    """``public``, ``user:NAME`` and group names, as one explicit Access (nothing from the default)."""
    users: list[str] = []
    groups: list[str] = []
    public = False
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        if entry.lower() == "public":
            public = True
        elif entry.lower().startswith("user:"):
            users.append(entry[5:].strip())
        else:
            groups.append(entry)
    try:
        return Access(users=tuple(users), groups=tuple(groups), public=public)
    except ValueError as exc:
        raise ItemError(f"{where} is invalid: {exc}") from None


def join_url(base_url: str | None, tail: str) -> str | None:
    """``base_url`` + ``/`` + the URL-quoted tail; ``None`` without a base URL."""
    if not base_url:
        return None
    return f"{base_url.rstrip('/')}/{quote(tail, safe='/')}"


@dataclass(frozen=True)
class Record:
    """One row of a source file: its 1-based number and its fields, or why it has none (``error``)."""

    number: int
    data: dict[str, Any] | None
    error: str | None = None


def record_change(record: Record, read_id: Callable[[Record], str], build: Callable[[str, Any], Document],
                  unit: str, noun: str) -> Change:
    """One record as an Upsert, or a Failure named by its id (or ``unit:N`` when the id is unreadable)."""
    try:
        item_id = read_id(record)
    except ItemError as exc:
        return Failure(f"{unit}:{record.number}", str(exc))
    try:
        return Upsert(build(item_id, record.data or {}))
    except ItemError as exc:
        return Failure(item_id, f"{unit} {record.number}: {noun} {item_id}: {exc}")


def iter_jsonl(path: Path, after_line: int = 0) -> Iterator[Record]:
    """The non-blank lines after ``after_line``, each parsed as one JSON object (errors as data)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number <= after_line or not raw.strip():
                continue
            yield _parse_line(number, raw)


def _parse_line(number: int, raw: bytes) -> Record:
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return Record(number, None, f"line {number} is not valid UTF-8 ({exc.reason}): re-export the file as UTF-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(
            number, None, f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}): fix or remove the line"
        )
    if not isinstance(data, dict):
        return Record(
            number, None, f"line {number} is a JSON {type(data).__name__}, not an object: write one object per line"
        )
    return Record(number, data)
