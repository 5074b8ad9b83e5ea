"""Catalog connector: a product table as CSV (with a header row) or JSON Lines, one product per row.

* **Format**: from the file suffix (``.csv``; ``.jsonl``/``.ndjson``) or ``config.format``.
* **Id** and **title** come from ``id_column`` and ``title_column``; the text is the title followed by one
  ``Column: value`` line per ``text_columns`` entry (empty cells are left out). One row is one chunk
  (``ContentType.RECORD``).
* **Access** (``access_column``): ``public``, or group names separated by ``;``, where ``user:NAME`` names
  a user (``public;partners;user:dana``). In JSON Lines the value may also be a list of such entries or
  an access object (keys it leaves out keep the default's). An empty cell takes the source's default.
* **URL**: ``url_column`` if set and non-empty, else ``base_url/<id>``.
* **Validation**: a configured column the file does not have is a ConnectorError naming the columns
  it does have. Per-row problems are Failures (the row's id, or ``row:N``); the sync goes on.
* **Cursor**: ``{"row": N}`` resumes after row N (CSV: N-th data row, blank rows not counted;
  JSON Lines: line N); the final checkpoint is ``{}``.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from citeline.connectors._common import (
    ItemError,
    Record,
    access_from_entries,
    access_from_mapping,
    checkpoint_every_field,
    coerce_config,
    iter_jsonl,
    join_url,
    record_change,
    require_file,
    resume_position,
    with_checkpoints,
)
from citeline.contracts.connector import Change, ConnectorConfig
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["CatalogConnector", "CatalogFormat"]


class CatalogFormat(str, enum.Enum):
    CSV = "csv"
    JSONL = "jsonl"


_SUFFIXES = {".csv": CatalogFormat.CSV, ".jsonl": CatalogFormat.JSONL, ".ndjson": CatalogFormat.JSONL}


class CatalogConnector:
    """Reads a CSV or JSON Lines product catalog; see the module docstring."""

    class Config(ConnectorConfig):
        path: Path = Field(description="the .csv or .jsonl file")
        format: CatalogFormat | None = Field(None, description="csv or jsonl; default: from the file suffix")
        id_column: str
        title_column: str
        text_columns: list[str] = Field(default_factory=list, description="rendered as 'Column: value' lines")
        access_column: str | None = None
        url_column: str | None = None
        base_url: str | None = Field(None, description="product URL = base_url/<id> when there is no url_column value")
        metadata_columns: list[str] = Field(default_factory=list)
        delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator")
        checkpoint_every: int = checkpoint_every_field()

        @model_validator(mode="after")
        def _known_format(self) -> CatalogConnector.Config:
            if self.format is None and Path(self.path).suffix.lower() not in _SUFFIXES:
                raise ValueError(
                    f"cannot tell the format of {self.path} from its suffix: set format = 'csv' or 'jsonl'"
                )
            return self

        @property
        def file_format(self) -> CatalogFormat:
            return self.format or _SUFFIXES[Path(self.path).suffix.lower()]

        def named_columns(self) -> list[tuple[str, str]]:
            """``(config key, column)`` for every column the config names."""
            single = [("id_column", self.id_column), ("title_column", self.title_column)]
            single += [(k, v) for k in ("access_column", "url_column") if (v := getattr(self, k))]
            return (
                single
                + [("text_columns", c) for c in self.text_columns]
                + [("metadata_columns", c) for c in self.metadata_columns]
            )

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self._path = Path(self.config.path)

    def validate(self) -> None:
        require_file(self._path, "catalog file")
        columns = self._columns()
        if not columns:
            raise ConnectorError(f"catalog {self._path} has no columns: export it with a header row / objects per line")
        for key, column in self.config.named_columns():
            if column not in columns:
                raise ConnectorError(
                    f"config.{key} names column {column!r}, which {self._path.name} does not have; "
                    f"its columns are: {', '.join(sorted(columns))}"
                )

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        after = resume_position(cursor, "row", int) or 0
        self.validate()
        items = (({"row": row.number}, self._change(row)) for row in self._rows(after))
        yield from with_checkpoints(items, self.config.checkpoint_every)

    def list_ids(self) -> list[str]:
        self.validate()
        ids = []
        for row in self._rows(0):
            try:
                ids.append(self._row_id(row))
            except ItemError as exc:
                raise ConnectorError(
                    f"cannot list every product in {self._path}: {exc}; fix that row (nothing is pruned until then)"
                ) from None
        return ids

    # -- reading ---------------------------------------------------------------------------------

    def _rows(self, after: int) -> Iterator[Record]:
        if self.config.file_format is CatalogFormat.JSONL:
            return iter_jsonl(self._path, after)
        return self._csv_rows(after)

    def _columns(self) -> set[str]:
        if self.config.file_format is CatalogFormat.JSONL:
            return {key for row in iter_jsonl(self._path) if row.data for key in row.data}
        return set(self._csv_header())

    def _csv_header(self) -> list[str]:
        try:
            with self._path.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh, delimiter=self.config.delimiter), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConnectorError(f"cannot read the header of {self._path} ({exc}): save it as UTF-8 CSV") from None
        header = [name.strip() for name in header]
        dupes = sorted({name for name in header if header.count(name) > 1})
        if dupes:
            raise ConnectorError(f"{self._path} repeats the columns {dupes}: give every column its own name")
        return header

    def _csv_rows(self, after: int) -> Iterator[Record]:
        header = self._csv_header()
        with self._path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=self.config.delimiter)
            number = 0
            try:
                next(reader, None)
                for cells in reader:
                    if not any(cell.strip() for cell in cells):
                        continue
                    number += 1
                    if number > after:
                        yield _csv_record(number, reader.line_num, header, cells)
            except (UnicodeDecodeError, csv.Error) as exc:
                raise ConnectorError(
                    f"{self._path} cannot be parsed after row {number} (line {reader.line_num}): {exc}; "
                    "save it as UTF-8 CSV with balanced quotes"
                ) from None

    def _row_id(self, row: Record) -> str:
        if row.data is None:
            raise ItemError(row.error or f"row {row.number} cannot be read")
        value = _cell(row.data, self.config.id_column)
        if not value:
            raise ItemError(f"row {row.number} has no {self.config.id_column!r}: every product needs an id")
        return value

    def _change(self, row: Record) -> Change:
        return record_change(row, self._row_id, self._document, "row", "product")

    def _document(self, product_id: str, data: Mapping[str, Any]) -> Document:
        cfg = self.config
        title = _cell(data, cfg.title_column)
        if not title:
            raise ItemError(f"has no {cfg.title_column!r}: fill in the title column")
        lines = [title] + [f"{_label(c)}: {v}" for c in cfg.text_columns if (v := _cell(data, c))]
        url = (_cell(data, cfg.url_column) if cfg.url_column else "") or join_url(cfg.base_url, product_id)
        return Document(
            external_id=product_id,
            title=title,
            text="\n".join(lines),
            access=self._access(data),
            url=url,
            content_type=ContentType.RECORD,
            metadata={c: v for c in cfg.metadata_columns if (v := _cell(data, c))},
        )

    def _access(self, data: Mapping[str, Any]) -> Access:
        column = self.config.access_column
        value = data.get(column) if column else None
        if value is None or value == [] or (isinstance(value, str) and not value.strip()):
            return self.default_access
        where = f"access column {column!r}"
        if isinstance(value, Mapping):
            return access_from_mapping(value, self.default_access, where)
        if isinstance(value, str):
            return access_from_entries(value.split(";"), where)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return access_from_entries(value, where)
        raise ItemError(f"{where} must be 'public', groups separated by ';', or an access object; got {value!r}")


def _csv_record(number: int, line: int, header: list[str], cells: list[str]) -> Record:
    if len(cells) != len(header):
        return Record(
            number,
            None,
            f"row {number} (line {line}) has {len(cells)} cells but the header has {len(header)}: "
            "fix the quoting or the delimiter",
        )
    return Record(number, dict(zip(header, cells, strict=True)))


def _cell(data: Mapping[str, Any], column: str) -> str:
    """A cell as text ("" when absent or empty); JSON numbers and lists of scalars are rendered."""
    value = data.get(column)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value).strip()
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    raise ItemError(f"column {column!r} holds a {type(value).__name__}; expected text, a number or a list of them")


def _label(column: str) -> str:
    text = column.replace("_", " ").strip()
    return text[:1].upper() + text[1:]
