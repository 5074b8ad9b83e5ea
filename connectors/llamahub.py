"""LlamaHub reader bridge: any LlamaIndex ``BaseReader`` as a citeline source.

The reader is named ``"module:Class"`` and built with ``reader_options``; ``load_data`` gets ``load_options``::

    [[sources]]
    name = "handbook"
    connector = "llamahub"
    access = { groups = ["staff"] }
    config = { reader = "llama_index.core:SimpleDirectoryReader", path = "handbook",
               reader_options = { recursive = true }, access_keys = { groups = "allowed_groups" } }

* **Path**: a local folder or file the reader reads goes in ``path`` (resolved against citeline.toml's folder
  and checked against ``source_policy.allowed_roots`` like the folder connector's); the bridge passes it to the
  reader as the keyword ``path_option`` (``input_dir`` by default; ``input_files`` takes a one-item list).
  Giving the same keyword in ``reader_options`` is refused.
* **Ids** come from metadata, never from the reader's random ``doc_id``: ``id_keys`` (default ``file_path``)
  joined by ``#``; a path under ``path`` becomes relative (``guides/deploy.md``). ``doc_id`` in ``id_keys``
  means the document's own id (for readers that set a stable one). A reader that gives one file as several
  documents (pages) gets ``id``, ``id#2``, ``id#3`` in load order. A document without the keys is a
  :class:`Failure`, and the listing is then incomplete: nothing is pruned from it.
* **Access**: the source's default access unless ``access_keys`` names metadata keys (``users``, ``groups``,
  ``public``) that a document carries; then those keys alone decide (left-out parts are empty: fail closed).
  Names are a list or a comma-separated string; ``public`` is a boolean or ``"true"``/``"false"``. A bad value
  is a :class:`Failure` naming the key.
* **Title**: metadata ``title_key`` (``title``), else the first ``# heading``, else ``file_name``, else the
  first line; **URL**:
  ``url_key`` if set, else ``base_url`` + the id.
* **Sync**: every sync loads everything (ingest skips unchanged documents by content hash), sorted by id;
  checkpoints ``{"after": id}``, the last one ``{}``. ``list_ids`` is the ids of the last complete load (or a
  new load), so a document the reader no longer returns is deleted. A reader that skips files it cannot
  read (``SimpleDirectoryReader``'s default) makes them look deleted: set ``raise_on_error = true`` to stop
  the sync instead. A reader that raises fails the whole sync (:class:`ConnectorError`): nothing is pruned.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from citeline.connectors._common import (
    checkpoint_every_field,
    coerce_config,
    join_url,
    resume_position,
    with_checkpoints,
)
from citeline.contracts.connector import Change, ConnectorConfig, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConfigError, ConnectorError

__all__ = ["LlamaHubConnector"]

_TITLE = re.compile(r"^\s{0,3}#\s+(\S.*)$", re.MULTILINE)
_READER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class AccessKeys(BaseModel):
    """Which document metadata keys say who may see it (unset: that part is not read from metadata)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: str | None = None
    groups: str | None = None
    public: str | None = None


class LlamaHubConnector:
    """Documents from a LlamaHub reader (see the module docstring)."""

    class Config(ConnectorConfig):
        reader: str = Field(description="the reader, 'module:Class'")
        reader_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the class")
        load_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of load_data")
        path: Path | None = Field(None, description="a local folder or file the reader reads (passed as path_option)")
        path_option: str = Field("input_dir", description="the reader's keyword for path")
        id_keys: list[str] = Field(default_factory=lambda: ["file_path"], min_length=1,
                                   description="metadata keys that identify a document ('doc_id': the reader's)")
        access_keys: AccessKeys = AccessKeys()
        title_key: str = "title"
        url_key: str | None = None
        base_url: str | None = Field(None, description="document URL = base_url/<id> when url_key gives none")
        content_type: Literal["markdown", "plain"] = "markdown"
        checkpoint_every: int = checkpoint_every_field()

        @field_validator("reader")
        @classmethod
        def _module_class(cls, value: str) -> str:
            if not _READER.match(value):
                raise ValueError(f"reader {value!r} must be 'module:Class', e.g. "
                                 "'llama_index.core:SimpleDirectoryReader'")
            return value

        @model_validator(mode="after")
        def _path_once(self) -> LlamaHubConnector.Config:
            if self.path is not None and self.path_option in self.reader_options:
                raise ValueError(f"reader_options.{self.path_option} and path both name what to read: keep path "
                                 "(it is checked against source_policy.allowed_roots)")
            return self

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self._ids: list[str] | None = None  # of the last load
        self._unidentified = 0  # documents of the last load without an id: its listing is incomplete

    def validate(self) -> None:
        self._reader()

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        after = resume_position(cursor, "after", str)
        changes = self._load()
        items = (({"after": ext}, change) for ext, change in changes if after is None or ext > after)
        yield from with_checkpoints(items, self.config.checkpoint_every)

    def list_ids(self) -> list[str]:
        if self._ids is None:
            self._load()
        if self._unidentified:
            raise ConnectorError(f"reader {self.config.reader} returned {self._unidentified} document(s) without "
                                 f"{self.config.id_keys}: the listing is incomplete, nothing is deleted (fix id_keys)")
        return list(self._ids or ())

    # -- loading ------------------------------------------------------------------------------------

    def _reader(self) -> Any:
        module_name, _, class_name = self.config.reader.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"reader {self.config.reader!r} needs the module {exc.name!r}, which is not installed: "
                              "install the package that provides it (LlamaHub readers: pip install "
                              "llama-index-readers-...)") from exc
        cls = getattr(module, class_name, None)
        if cls is None or not callable(getattr(cls, "load_data", None)):
            raise ConfigError(f"{self.config.reader!r} is not a LlamaIndex reader (no class {class_name} with "
                              f"load_data in {module_name})")
        options = dict(self.config.reader_options)
        if self.config.path is not None:
            path = str(self.config.path)
            options[self.config.path_option] = [path] if self.config.path_option == "input_files" else path
        try:
            return cls(**options)
        except Exception as exc:  # the reader's own check of its options (a missing folder, a bad keyword)
            raise ConnectorError(f"reader {self.config.reader} cannot be built with {sorted(options)}: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _load(self) -> list[tuple[str, Change]]:
        reader = self._reader()
        try:
            loaded = list(reader.load_data(**self.config.load_options))
        except Exception as exc:
            raise ConnectorError(f"reader {self.config.reader} failed to load: {type(exc).__name__}: {exc}") from exc
        changes: list[tuple[str, Change]] = []
        seen: dict[str, int] = {}
        self._unidentified = 0
        for n, item in enumerate(loaded):
            metadata = dict(getattr(item, "metadata", None) or {})
            base = self._id(item, metadata)
            if base is None:
                self._unidentified += 1
                changes.append((f"#{n}", Failure(f"#{n}", f"document {n} of the reader has none of the id keys "
                                                 f"{self.config.id_keys}: set id_keys to metadata it carries")))
                continue
            seen[base] = seen.get(base, 0) + 1
            ext = base if seen[base] == 1 else f"{base}#{seen[base]}"
            changes.append((ext, self._change(ext, item, metadata)))
        changes.sort(key=lambda pair: pair[0])
        # a document that failed on its access still exists: listed, so what was indexed for it stays
        self._ids = [ext for ext, change in changes if not ext.startswith("#")]
        return changes

    def _id(self, item: Any, metadata: Mapping[str, Any]) -> str | None:
        parts = []
        for key in self.config.id_keys:
            value = getattr(item, "id_", None) if key == "doc_id" else metadata.get(key)
            if value is None or str(value) == "":
                return None
            parts.append(self._relative(str(value)))
        return "#".join(parts)

    def _relative(self, value: str) -> str:
        root = self.config.path
        if root is None or not Path(value).is_absolute():
            return value
        try:
            rel = Path(value).resolve().relative_to(Path(root).resolve())
        except ValueError:
            return value
        return rel.as_posix() if str(rel) != "." else Path(value).name

    def _change(self, ext: str, item: Any, metadata: Mapping[str, Any]) -> Change:
        try:
            access = self._access(metadata)
        except ValueError as exc:
            return Failure(ext, str(exc))
        text = str(getattr(item, "text", "") or "")
        c = self.config
        title = str(metadata.get(c.title_key) or _heading(text) or metadata.get("file_name") or _first_line(text)
                    or ext)
        url = str(metadata[c.url_key]) if c.url_key and metadata.get(c.url_key) else join_url(c.base_url, ext)
        hidden = {v for v in c.access_keys.model_dump().values() if v} | {"file_path"}
        kept = {k: str(v) for k, v in metadata.items() if k not in hidden and isinstance(v, str | int | float | bool)}
        return Upsert(Document(ext, title[:500], text, access=access, url=url, content_type=ContentType(c.content_type),
                               metadata=kept))

    def _access(self, metadata: Mapping[str, Any]) -> Access:
        keys = self.config.access_keys
        named = {part: key for part, key in keys.model_dump().items() if key and key in metadata}
        if not named:
            return self.default_access
        users = _names(metadata.get(named["users"]) if "users" in named else None, named.get("users"))
        groups = _names(metadata.get(named["groups"]) if "groups" in named else None, named.get("groups"))
        public = _flag(metadata.get(named["public"]), named["public"]) if "public" in named else False
        try:
            return Access(users=users, groups=groups, public=public)
        except ValueError as exc:
            raise ValueError(f"access from metadata {sorted(named.values())} is invalid: {exc}") from None


def _names(value: Any, key: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"metadata {key!r} must be a list of names or a comma-separated string, got {value!r}")


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"metadata {key!r} must be true or false, got {value!r}")


def _heading(text: str) -> str:
    """The first Markdown ``# heading``, if the text has one."""
    match = _TITLE.search(text)
    return match.group(1).strip() if match else ""


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()
    return ""
