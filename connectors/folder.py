"""Folder connector: a directory of Markdown, HTML and plain-text files (a wiki export).

* **Ids** are file paths relative to the folder, POSIX style (``guides/deploy.md``).
* **Walk**: sorted by id; hidden files and folders are skipped; symlinked folders are not entered and
  symlinked files count only when they resolve inside the folder (nothing outside it is ever read).
* **Front matter** (``.md``, ``.markdown``, ``.txt``): a YAML block between ``---`` lines at the top may
  set ``title`` and ``access: {groups: [...], users: [...], public: true|false}``; access keys it sets
  replace the source's default access, keys it leaves out keep the default's. Other scalar keys
  become metadata.
* **HTML** is converted to Markdown-ish text; ``<meta name="citeline-access" content='{"groups": ["hr"]}'>``
  sets its access the same way.
* **Title**: front matter ``title``, else the first ``# heading``, else ``<title>`` / first ``<h1>``, else the
  file name without its suffix.
* **Cursor**: ``{"after": "<id>"}`` resumes with the files sorted after that id; the final checkpoint is
  ``{}`` (the next sync reads every file again; ingest skips unchanged ones by content hash).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import Field

from citeline.connectors._common import (
    ItemError,
    access_from_mapping,
    checkpoint_every_field,
    coerce_config,
    join_url,
    resume_position,
    with_checkpoints,
)
from citeline.connectors._html import parse_html
from citeline.connectors.interfaces import Change, ConnectorConfig, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["DEFAULT_INCLUDE", "FolderConnector"]

DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.html", "*.htm", "*.txt")
_MARKDOWN_SUFFIXES = {".md", ".markdown"}
_HTML_SUFFIXES = {".html", ".htm"}
_H1 = re.compile(r"^#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")


@dataclass(frozen=True)
class _Entry:
    """One listed path: a file, or a folder that could not be listed (``error`` set)."""

    rel: str
    error: str | None = None


class FolderConnector:
    """Reads a folder of ``.md``, ``.html`` and ``.txt`` files; see the module docstring."""

    class Config(ConnectorConfig):
        path: Path = Field(description="the folder to read")
        base_url: str | None = Field(None, description="page URL = base_url/<relative path without suffix>")
        include: list[str] = Field(
            default_factory=lambda: list(DEFAULT_INCLUDE),
            description="globs matched against the file name, or the relative path if they contain '/'",
        )
        max_bytes: int = Field(5_000_000, ge=1, description="larger files are reported as failures")
        checkpoint_every: int = checkpoint_every_field()

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self._root = Path(self.config.path)

    def validate(self) -> None:
        root = self._root
        if not root.exists():
            raise ConnectorError(f"folder {root} does not exist: fix config.path or create the folder")
        if not root.is_dir():
            raise ConnectorError(f"{root} is not a folder: point config.path at the folder of pages")
        try:
            with os.scandir(root) as it:
                next(it, None)
        except OSError as exc:
            raise ConnectorError(f"folder {root} cannot be read ({exc.strerror}): fix its permissions") from exc

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        after = resume_position(cursor, "after", str)
        self.validate()
        entries = [e for e in self._walk() if after is None or e.rel > after]
        items = (({"after": e.rel}, self._change(e)) for e in entries)
        yield from with_checkpoints(items, self.config.checkpoint_every)

    def list_ids(self) -> list[str]:
        self.validate()
        entries = self._walk()
        for entry in entries:
            if entry.error:
                raise ConnectorError(f"cannot list the whole folder {self._root}: {entry.error}")
        return [e.rel for e in entries]

    # -- walking ---------------------------------------------------------------------------------

    def _walk(self) -> list[_Entry]:
        root, real_root = self._root, self._root.resolve()
        entries: list[_Entry] = []

        def unreadable(exc: OSError) -> None:
            rel = Path(exc.filename or root).relative_to(root).as_posix()
            entries.append(_Entry(rel, f"folder {rel!r} cannot be listed ({exc.strerror}): fix its permissions"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                full = Path(dirpath, name)
                rel = full.relative_to(root).as_posix()
                if name.startswith(".") or not _included(rel, self.config.include):
                    continue
                if full.is_symlink() and not _resolves_inside(full, real_root):
                    continue
                entries.append(_Entry(rel))
        return sorted(entries, key=lambda e: e.rel)

    # -- reading ---------------------------------------------------------------------------------

    def _change(self, entry: _Entry) -> Change:
        if entry.error:
            return Failure(entry.rel, entry.error)
        try:
            return Upsert(self._document(entry.rel))
        except ItemError as exc:
            return Failure(entry.rel, f"{entry.rel}: {exc}")

    def _document(self, rel: str) -> Document:
        full = self._root / rel
        try:
            stat = full.stat()
            if stat.st_size > self.config.max_bytes:
                raise ItemError(
                    f"file is {stat.st_size} bytes, over max_bytes={self.config.max_bytes}: "
                    "split it, exclude it with config.include, or raise config.max_bytes"
                )
            raw = full.read_bytes()
        except OSError as exc:
            raise ItemError(f"cannot be read ({exc.strerror}): fix its permissions") from None
        text = _decode(raw).replace("\r\n", "\n")
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix in _HTML_SUFFIXES:
            title, body, access, meta = self._from_html(text)
        else:
            title, body, access, meta = self._from_text(text)
        if not body.strip():
            raise ItemError("has no text: add content, or exclude the file with config.include")
        plain = suffix not in _MARKDOWN_SUFFIXES | _HTML_SUFFIXES
        return Document(
            external_id=rel,
            title=title or PurePosixPath(rel).stem,
            text=body,
            access=access,
            url=join_url(self.config.base_url, PurePosixPath(rel).with_suffix("").as_posix()),
            content_type=ContentType.PLAIN if plain else ContentType.MARKDOWN,
            updated_at=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
            metadata=meta,
        )

    def _from_text(self, text: str) -> tuple[str | None, str, Access, dict[str, str]]:
        front, body = _split_front_matter(text)
        title = front.get("title")
        if title is not None and not isinstance(title, str | int | float):
            raise ItemError("front matter title must be a string: write title: Some Title")
        access = self.default_access
        if front.get("access") is not None:
            access = access_from_mapping(front["access"], self.default_access, "front matter access")
        meta: dict[str, str] = {}
        for key, value in front.items():
            if key not in ("title", "access") and (rendered := _meta_value(value)) is not None:
                meta[str(key)] = rendered
        title_text = str(title).strip() if title is not None else ""
        return title_text or _first_heading(body), body.lstrip("\n"), access, meta

    def _from_html(self, text: str) -> tuple[str | None, str, Access, dict[str, str]]:
        try:
            page = parse_html(text)
        except ValueError as exc:
            raise ItemError(f'{exc}: write it as JSON like {{"groups": ["hr"]}}') from None
        access = self.default_access
        if page.access is not None:
            access = access_from_mapping(page.access, self.default_access, "citeline-access meta")
        return page.title, page.text, access, {}


def _included(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1].lower()
    for raw in patterns:
        pattern = raw.lower().removeprefix("**/")
        if fnmatchcase(rel.lower() if "/" in pattern else name, pattern):
            return True
    return False


def _resolves_inside(path: Path, real_root: Path) -> bool:
    target = Path(os.path.realpath(path))
    return target.is_file() and target.is_relative_to(real_root)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ItemError(
            f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}): re-save the file as UTF-8"
        ) from None


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)``; a file without a leading ``---`` line has none."""
    lines = text.split("\n")
    if lines[0].rstrip() != "---":
        return {}, text
    for i in range(1, len(lines)):
        if lines[i].rstrip() in ("---", "..."):
            block, body = "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
            break
    else:
        raise ItemError("front matter opens with --- on line 1 but never closes: add a closing --- line")
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" on line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ItemError(
            f"front matter is not valid YAML ({problem}{where}): fix the YAML between the --- lines"
        ) from None
    if data is None:
        return {}, body
    if not isinstance(data, dict):
        raise ItemError(
            f"front matter is a YAML {type(data).__name__}, not a mapping: write key: value lines such as title: ..."
        )
    return data, body


def _meta_value(value: object) -> str | None:
    if isinstance(value, list | tuple) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list | tuple) or value is None:
        return None
    return str(value)


def _first_heading(text: str) -> str | None:
    """The first ATX level-1 heading outside fenced code blocks."""
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := _H1.match(line)):
            return match.group(1).strip()
    return None
