"""Folder connector: a directory of Markdown, HTML and plain-text files (a wiki export), and PDF, DOCX, PPTX, XLSX.

* **Ids** are file paths relative to the folder, POSIX style (``guides/deploy.md``).
* **Walk**: sorted by id; hidden files and folders are skipped. The folder may be written by people who
  should not be able to read anything else, so nothing outside it is ever read:

  - symlinked folders are never entered; a symlinked file counts only when it resolves to a regular file
    inside the folder, and then that file is read (its id stays the link's path); a link that leads outside
    the folder, to a missing file or to anything but a regular file is a per-document :class:`Failure`
    naming it;
  - only regular files are read: a named pipe, socket or device is a :class:`Failure` naming it (never
    opened for a blocking read, so it cannot hang the sync);
  - every read re-checks at read time: each path component is opened with ``O_NOFOLLOW`` relative to its
    parent's descriptor (``openat``), the file with ``O_NOFOLLOW | O_NONBLOCK``, and the opened descriptor
    must be a regular file (``fstat``). A file or folder swapped for a symlink (or a pipe) after the listing
    is a :class:`Failure` naming it, not followed. Reads stop at ``max_bytes``.

  Hard links are regular files and are read: on Linux (``fs.protected_hardlinks=1``, the default) only a
  file's owner or someone who may already read and write it can link it into the folder.
  Which folders sources may read at all is the admins' ``source_policy.allowed_roots`` (checked by
  :func:`citeline.build_connector`).
* **Front matter** (``.md``, ``.markdown``, ``.txt``): a YAML block between ``---`` lines at the top may
  set ``title`` and ``access: {groups: [...], users: [...], public: true|false}``; access keys it sets
  replace the source's default access, keys it leaves out keep the default's. Other scalar keys
  become metadata. A key given twice (at any level) fails closed: the file is a per-document failure
  naming the key, not indexed with either value; so is an HTML page with two ``citeline-access`` metas
  or a key repeated in one.
* **HTML** is converted to Markdown-ish text; ``<meta name="citeline-access" content='{"groups": ["hr"]}'>``
  sets its access the same way.
* **Documents** (``.pdf``, ``.docx``, ``.pptx``, ``.xlsx``; the ``[documents]`` extra) are converted to
  Markdown by :mod:`citeline.connectors._documents` in a worker process with a time budget
  (``convert_timeout_s``) and a memory limit (``convert_memory_mb``): a PDF gets one ``## Page N`` heading per
  page, a slide ``## Slide N: title``, so a chunk and its citation name the page. They take the source's
  default access. A file that cannot be converted (damaged, encrypted, truncated, a zip bomb, not what its
  name says, or the extra missing) is a per-document :class:`Failure` naming the reason; the sync goes on.
* **Title**: front matter ``title``, else the first ``# heading``, else ``<title>`` / first ``<h1>``, else the
  file name without its suffix (a DOCX: its first heading).
* **Cursor**: ``{"after": "<id>"}`` resumes with the files sorted after that id; the final checkpoint is
  ``{}`` (the next sync reads every file again; ingest skips unchanged ones by content hash).
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

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
from citeline.connectors._documents import DOCUMENT_SUFFIXES, ConversionError, Converter
from citeline.connectors._front_matter import first_heading, meta_value, split_front_matter
from citeline.connectors._html import parse_html
from citeline.contracts.connector import Change, ConnectorConfig, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["DEFAULT_INCLUDE", "FolderConnector"]

DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.html", "*.htm", "*.txt", "*.pdf", "*.docx", "*.pptx", "*.xlsx")
_MARKDOWN_SUFFIXES = {".md", ".markdown"}
_HTML_SUFFIXES = {".html", ".htm"}


_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_REGULAR_ONLY = "citeline reads regular files only: remove it, or exclude it with config.include"


@dataclass(frozen=True)
class _Entry:
    """One listed path.

    ``error``: a folder that could not be listed (the listing is incomplete); ``skip``: a path that is listed
    as a per-document failure and is not a document (a special file, a link leading outside); ``target``: the
    file inside the folder that a symlinked file resolves to (read instead of the link).
    """

    rel: str
    error: str | None = None
    skip: str | None = None
    target: str | None = None


class FolderConnector:
    """Reads a folder of ``.md``, ``.html``, ``.txt`` files and office documents; see the module docstring."""

    class Config(ConnectorConfig):
        path: Path = Field(description="the folder to read")
        base_url: str | None = Field(None, description="page URL = base_url/<relative path without suffix>")
        include: list[str] = Field(
            default_factory=lambda: list(DEFAULT_INCLUDE),
            description="globs matched against the file name, or the relative path if they contain '/'",
        )
        max_bytes: int = Field(5_000_000, ge=1, description="larger files are reported as failures")
        checkpoint_every: int = checkpoint_every_field()
        convert_timeout_s: float = Field(60.0, gt=0, le=3600, description="time budget to convert one document")
        convert_memory_mb: int = Field(2048, ge=256, description="address space limit of the converter process")

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self._root = Path(self.config.path)
        self._converter: Converter | None = None

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
        try:
            yield from with_checkpoints(items, self.config.checkpoint_every)
        finally:
            if self._converter is not None:
                self._converter.close()
                self._converter = None

    def list_ids(self) -> list[str]:
        self.validate()
        entries = self._walk()
        for entry in entries:
            if entry.error:
                raise ConnectorError(f"cannot list the whole folder {self._root}: {entry.error}")
        return [e.rel for e in entries if e.skip is None]

    # -- walking ---------------------------------------------------------------------------------

    def _walk(self) -> list[_Entry]:
        """Every included path, listed through directory descriptors without following any link."""
        real_root = Path(os.path.realpath(self._root))
        entries: list[_Entry] = []
        try:
            root_fd = os.open(self._root, _ROOT_FLAGS)
        except OSError as exc:
            raise ConnectorError(f"folder {self._root} cannot be opened ({exc.strerror}): fix config.path or "
                                 "its permissions") from None
        try:
            self._walk_dir(root_fd, "", real_root, entries)
        finally:
            os.close(root_fd)
        return sorted(entries, key=lambda e: e.rel)

    def _walk_dir(self, fd: int, prefix: str, real_root: Path, entries: list[_Entry]) -> None:
        try:
            with os.scandir(fd) as it:
                found = sorted(it, key=lambda item: item.name)
        except OSError as exc:
            rel = prefix.rstrip("/") or "."
            entries.append(_Entry(rel, f"folder {rel!r} cannot be listed ({exc.strerror}): fix its permissions"))
            return
        for item in found:
            rel = prefix + item.name
            if item.name.startswith("."):
                continue
            if item.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(item.name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    entries.append(_Entry(rel, f"folder {rel!r} cannot be listed ({_why(exc, fd, item.name)}): "
                                               "fix its permissions, or run the sync again"))
                    continue
                try:
                    self._walk_dir(sub, rel + "/", real_root, entries)
                finally:
                    os.close(sub)
            elif _included(rel, self.config.include):
                if item.is_symlink():
                    entries.append(self._link_entry(rel, real_root))
                elif item.is_file(follow_symlinks=False):
                    entries.append(_Entry(rel))
                else:
                    mode = item.stat(follow_symlinks=False).st_mode
                    entries.append(_Entry(rel, skip=f"is {_kind(mode)}, not a regular file: {_REGULAR_ONLY}"))

    def _link_entry(self, rel: str, real_root: Path) -> _Entry:
        """A symlinked file: read as the regular file inside the folder it resolves to, or a failure."""
        target = Path(os.path.realpath(self._root / rel))
        if not target.is_relative_to(real_root):
            return _Entry(rel, skip="is a symbolic link to outside the folder: not read (nothing outside "
                          "config.path is); replace the link with the file itself, or remove it")
        try:
            mode = target.stat().st_mode
        except OSError:
            return _Entry(rel, skip="is a symbolic link to a missing file: fix or remove the link")
        if not st.S_ISREG(mode):
            return _Entry(rel, skip=f"is a symbolic link to {_kind(mode)}, not a regular file: {_REGULAR_ONLY}")
        return _Entry(rel, target=target.relative_to(real_root).as_posix())

    # -- reading ---------------------------------------------------------------------------------

    def _change(self, entry: _Entry) -> Change:
        if entry.error:
            return Failure(entry.rel, entry.error)
        if entry.skip:
            return Failure(entry.rel, f"{entry.rel}: {entry.skip}")
        try:
            return Upsert(self._document(entry.rel, entry.target or entry.rel))
        except ItemError as exc:
            return Failure(entry.rel, f"{entry.rel}: {exc}")

    def _open(self, rel: str) -> int:
        """A descriptor of ``rel`` opened component by component with ``O_NOFOLLOW`` (``openat``)."""
        *folders, name = rel.split("/")
        fd = os.open(self._root, _ROOT_FLAGS)
        try:
            for i, folder in enumerate(folders):
                try:
                    sub = os.open(folder, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    where = "/".join(folders[: i + 1])
                    raise ItemError(f"folder {where!r} cannot be opened ({_why(exc, fd, folder)}): not followed; "
                                    "nothing outside config.path is read") from None
                os.close(fd)
                fd = sub
            try:
                return os.open(name, _FILE_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise ItemError(f"cannot be read ({_why(exc, fd, name)}): not followed; nothing outside "
                                "config.path is read") from None
        finally:
            os.close(fd)

    def _read(self, rel: str) -> tuple[bytes, os.stat_result]:
        """The bytes of the regular file ``rel`` (checked on the opened descriptor) and its stat."""
        fd = self._open(rel)
        try:
            stat = os.fstat(fd)
            if not st.S_ISREG(stat.st_mode):
                raise ItemError(f"is {_kind(stat.st_mode)}, not a regular file: {_REGULAR_ONLY}")
            limit = self.config.max_bytes
            too_big = (f"over max_bytes={limit}: split it, exclude it with config.include, or raise "
                       "config.max_bytes")
            if stat.st_size > limit:
                raise ItemError(f"file is {stat.st_size} bytes, {too_big}")
            chunks, size = [], 0
            while block := os.read(fd, min(1 << 20, limit + 1 - size)):
                chunks.append(block)
                size += len(block)
                if size > limit:
                    raise ItemError(f"file grew while it was read, {too_big}")
        except OSError as exc:
            raise ItemError(f"cannot be read ({exc.strerror}): fix its permissions") from None
        finally:
            os.close(fd)
        return b"".join(chunks), stat

    def _document(self, rel: str, target: str) -> Document:
        raw, stat = self._read(target)
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix in DOCUMENT_SUFFIXES:
            title, body, access, meta = self._from_document(DOCUMENT_SUFFIXES[suffix], raw)
        elif suffix in _HTML_SUFFIXES:
            title, body, access, meta = self._from_html(_decode(raw).replace("\r\n", "\n"))
        else:
            title, body, access, meta = self._from_text(_decode(raw).replace("\r\n", "\n"))
        if not body.strip():
            raise ItemError("has no text: add content, or exclude the file with config.include")
        plain = suffix not in _MARKDOWN_SUFFIXES | _HTML_SUFFIXES | DOCUMENT_SUFFIXES.keys()
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
        front, body = split_front_matter(text)
        title = front.get("title")
        if title is not None and not isinstance(title, str | int | float):
            raise ItemError("front matter title must be a string: write title: Some Title")
        access = self.default_access
        if front.get("access") is not None:
            access = access_from_mapping(front["access"], self.default_access, "front matter access")
        meta: dict[str, str] = {}
        for key, value in front.items():
            if key not in ("title", "access") and (rendered := meta_value(value)) is not None:
                meta[str(key)] = rendered
        title_text = str(title).strip() if title is not None else ""
        return title_text or first_heading(body), body.lstrip("\n"), access, meta

    def _from_document(self, kind: str, raw: bytes) -> tuple[str | None, str, Access, dict[str, str]]:
        if self._converter is None:
            self._converter = Converter(timeout_s=self.config.convert_timeout_s,
                                        memory_mb=self.config.convert_memory_mb,
                                        max_unpacked=20 * self.config.max_bytes)
        try:
            converted = self._converter.convert(kind, raw)
        except ConversionError as exc:
            raise ItemError(str(exc)) from None
        return converted.title, converted.text, self.default_access, {"format": kind}

    def _from_html(self, text: str) -> tuple[str | None, str, Access, dict[str, str]]:
        try:
            page = parse_html(text, access_meta=True)
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


_KINDS = ((st.S_ISLNK, "a symbolic link"), (st.S_ISFIFO, "a named pipe"), (st.S_ISSOCK, "a socket"),
          (st.S_ISCHR, "a character device"), (st.S_ISBLK, "a block device"), (st.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _why(exc: OSError, dir_fd: int, name: str) -> str:
    """Why opening ``name`` failed: what it is now when that is the reason (a link swapped in), else strerror."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
        try:
            return f"it is {_kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)} now"
        except OSError:
            pass
    return exc.strerror or str(exc)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ItemError(
            f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}): re-save the file as UTF-8"
        ) from None
