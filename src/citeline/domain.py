"""Frozen domain values that cross module boundaries.

``Access`` fails closed: ``Access()`` is private (nobody but an admin sees it). Principals and access
lists are matched in SQL through *tokens*: ``u:<user>`` for a user and ``g:<group>`` for a group.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Access",
    "Chunk",
    "ContentType",
    "Document",
    "Principal",
    "SearchHit",
    "SearchMode",
]

_NAME = re.compile(r"^[^\s\x00-\x1f]{1,200}$")


def _check_names(kind: str, names: Iterable[str]) -> tuple[str, ...]:
    out = []
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"invalid {kind} name {name!r}: use 1-200 characters without spaces or control characters")
        out.append(name)
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class Access:
    """Who may see a document. The default is private: no users, no groups, not public."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    public: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", _check_names("user", self.users))
        object.__setattr__(self, "groups", _check_names("group", self.groups))

    @classmethod
    def private(cls) -> Access:
        return cls()

    @classmethod
    def everyone(cls) -> Access:
        return cls(public=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None, default: Access | None = None) -> Access:
        """Build from ``{"users": [...], "groups": [...], "public": bool}``.

        A mapping replaces ``default`` as a whole (keys it leaves out are empty / false: fail closed);
        ``default`` (private if not given) applies only when there is no mapping at all.
        """
        if data is None:
            return default or cls()
        unknown = set(data) - {"users", "groups", "public"}
        if unknown:
            raise ValueError(f"unknown access keys {sorted(unknown)}: use users, groups, public")

        def names(key: str) -> tuple[str, ...]:
            value = data.get(key)
            if value is None:
                return ()
            if isinstance(value, str):
                return (value,)
            if not isinstance(value, list | tuple):
                raise ValueError(f"access.{key} must be a list of names, got {type(value).__name__}")
            return tuple(str(v) for v in value)

        public = data.get("public", False)
        if not isinstance(public, bool):
            raise ValueError(f"access.public must be true or false, got {public!r}")
        return cls(users=names("users"), groups=names("groups"), public=public)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The ACL tokens stored with every chunk (matched against the principal's tokens in SQL)."""
        return tuple([f"u:{u}" for u in self.users] + [f"g:{g}" for g in self.groups])

    def as_dict(self) -> dict[str, object]:
        return {"users": list(self.users), "groups": list(self.groups), "public": self.public}


class ContentType(str, enum.Enum):
    """How a document's text is structured; picks the chunking strategy."""

    MARKDOWN = "markdown"  # headings split sections (wiki pages, HTML converted by the connector, tickets)
    PLAIN = "plain"  # sentences and paragraphs only
    RECORD = "record"  # one record = one chunk (catalog rows)


@dataclass(frozen=True)
class Document:
    """One item from a source, as a connector yields it."""

    external_id: str
    title: str
    text: str
    access: Access = field(default_factory=Access)
    url: str | None = None
    content_type: ContentType = ContentType.MARKDOWN
    updated_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.external_id:
            raise ValueError("a document needs a non-empty external_id")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document ready to embed: its text and the character span it came from."""

    ordinal: int
    text: str
    span_start: int | None
    span_end: int | None
    heading: str = ""


@dataclass(frozen=True)
class Principal:
    """An identity that asks questions; its access is its user token plus its groups."""

    user: str
    groups: tuple[str, ...] = ()
    team: str | None = None

    def __post_init__(self) -> None:
        (user,) = _check_names("user", [self.user])
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "groups", _check_names("group", self.groups))

    @property
    def tokens(self) -> tuple[str, ...]:
        return Access(users=(self.user,), groups=self.groups).tokens


class SearchMode(str, enum.Enum):
    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk with where it came from and why it ranked."""

    chunk_id: int
    document_id: int
    source: str
    external_id: str
    title: str
    url: str | None
    text: str
    span_start: int | None
    span_end: int | None
    score: float
    dense_rank: int | None = None
    lexical_rank: int | None = None
    dense_distance: float | None = None
    lexical_score: float | None = None
    heading: str = ""  # the chunk's heading path in its document ("Guide / Install", "Travel expenses / Page 2")

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
