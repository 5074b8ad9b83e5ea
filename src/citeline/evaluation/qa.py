"""The QA file of ``citeline eval answers``: its format, parsing (every problem reported at once) and keys files.

QA file format
--------------
JSON Lines, one object per line (blank lines and lines starting with ``#`` are skipped)::

    {"id": "deploy-rollback", "principal": "alice",
     "question": "How do I roll back a bad Fleet deploy?",
     "must_contain": ["acme-deploy rollback fleet"],
     "must_cite": ["wiki:engineering/deploy-process.md"]}
    {"id": "bob-rollback", "principal": "bob", "question": "How do I roll back a bad deploy?",
     "must_refuse": true, "must_never_reveal": ["acme-deploy rollback"]}
    {"id": "billing-refund", "groups": ["billing"], "question": "...", ...}
    {"id": "followup", "principal": "alice", "question": "And how long does the canary wait?",
     "conversation": [{"role": "user", "content": "How do we deploy the Fleet backend?"},
                      {"role": "assistant", "content": "Run acme-deploy fleet --version <tag> [1]."}],
     "must_contain": ["15 minutes"], "must_cite": ["wiki:engineering/deploy-process.md"]}

``id``
    unique in the file.
``question``
    what is asked.
``principal`` | ``groups``
    exactly one: a user of the principals table, or a list of groups for an ad-hoc principal. In process
    an ad-hoc principal is registered for the run as user ``eval:<group>+<group>...`` (sorted) and removed
    afterwards (both audited), because access is decided in SQL from the principals table; against a server
    it needs a key for that user name, or ``--admin-key`` (the principal and a key are created, the key is
    revoked afterwards).
``must_contain``
    strings that must all appear in the answer text, case-insensitively and with runs of whitespace
    treated as one space. An entry with alternatives: a list (``["15 minutes", "fifteen minutes"]``, taken
    literally) or a string with ``|`` between them (``"15 minutes|fifteen minutes"``); one alternative
    suffices.
``must_cite``
    documents as ``source:external_id`` (what :class:`citeline.answers.assistant.Citation` carries, e.g.
    ``wiki:engineering/deploy-process.md``, ``tickets:1004``, ``catalog:AT6-001``); the answer must cite at
    least one of them. Required for an answerable question (``must_refuse`` false).
``must_refuse``
    the assistant must decline: nothing in the corpus answers it, or only documents the principal may
    not see do (then list the secret facts in ``must_never_reveal``). ``must_contain`` and ``must_cite``
    must be empty.
``must_never_reveal``
    strings that must appear nowhere in the response: the answer text, and the titles, snippets, URLs and
    ids of its citations and sources. Same matching as ``must_contain`` (``|`` is not special here).
``conversation``
    earlier turns, ``[{"role": "user" | "assistant", "content": "..."}]``, oldest first; the question is
    the next user turn (in process passed as ``history``, against a server sent to
    ``/v1/chat/completions``).
``tags``, ``notes``
    optional, free form (tags are counted in the report).

"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from citeline.domain import Principal
from citeline.errors import EvaluationError

__all__ = ["QAError", "QAItem", "Turn", "adhoc_user", "kinds", "load_keys", "load_qa", "normalized", "parse_qa"]


class QAError(EvaluationError):
    """A QA file (or keys file) that cannot be used; the message names the line and field."""



class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)



def normalized(text: str) -> str:
    """Casefolded, runs of whitespace as one space: how answers and QA strings are compared."""
    return " ".join(text.casefold().split())


class QAItem(BaseModel):
    """One question of a QA file (see the module docstring for the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1, max_length=4000)
    principal: str | None = Field(None, min_length=1)
    groups: tuple[str, ...] | None = None
    must_contain: tuple[tuple[str, ...], ...] = ()
    must_cite: tuple[str, ...] = ()
    must_refuse: bool = False
    must_never_reveal: tuple[str, ...] = ()
    conversation: tuple[Turn, ...] = ()
    tags: tuple[str, ...] = ()
    notes: str | None = None

    @field_validator("must_contain", mode="before")
    @classmethod
    def _alternatives(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v  # pydantic reports the type error
        out: list[Any] = []
        for entry in v:
            if isinstance(entry, str):
                out.append([a.strip() for a in entry.split("|")])
            else:
                out.append(entry)
        return out

    @field_validator("must_contain")
    @classmethod
    def _no_empty(cls, v: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for alts in v:
            if not alts or any(not a.strip() for a in alts):
                raise ValueError("an entry (or one of its alternatives) is empty")
        return v

    @field_validator("must_cite")
    @classmethod
    def _doc_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for doc in v:
            src, sep, ext = doc.partition(":")
            if not sep or not src or not ext:
                raise ValueError(f"{doc!r} is not a document identifier: write source:external_id, "
                                 "e.g. wiki:engineering/deploy-process.md")
        return v

    @field_validator("must_never_reveal")
    @classmethod
    def _no_empty_secret(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s.strip() for s in v):
            raise ValueError("an entry is empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> QAItem:
        if (self.principal is None) == (self.groups is None):
            raise ValueError("give exactly one of principal (a user) or groups (an ad-hoc principal)")
        if self.groups is not None:
            Principal(adhoc_user(self.groups), self.groups)  # valid group names
        if self.must_refuse and (self.must_contain or self.must_cite):
            raise ValueError("a question that must be refused cannot also have must_contain or must_cite")
        if not self.must_refuse and not self.must_cite:
            raise ValueError("an answerable question (must_refuse false) needs must_cite: the documents that "
                             "answer it")
        if self.conversation and self.conversation[-1].role != "assistant":
            raise ValueError("conversation must end with an assistant turn (the question is the next user turn)")
        return self

    @property
    def answerable(self) -> bool:
        return not self.must_refuse

    @property
    def kind(self) -> str:
        """answerable, forbidden (must refuse, with secrets) or unanswerable (must refuse)."""
        if self.answerable:
            return "answerable"
        return "forbidden" if self.must_never_reveal else "unanswerable"

    @property
    def user(self) -> str:
        return self.principal if self.principal is not None else adhoc_user(self.groups or ())


def adhoc_user(groups: Iterable[str]) -> str:
    """The user name an ad-hoc ``groups`` principal is registered (and looked up in a keys file) as."""
    return "eval:" + "+".join(sorted(set(groups)))


def _field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_qa(lines: Iterable[str], *, name: str = "<qa>") -> list[QAItem]:
    """Parse QA lines; every problem is reported (``name:LINE: field: message``) in one :class:`QAError`."""
    items: list[QAItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{name}:{no}: not JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{name}:{no}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            item = QAItem.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                msg = err["msg"].removeprefix("Value error, ")
                where = f"{_field_path(err['loc'])}: " if err["loc"] else ""
                problems.append(f"{name}:{no}: {where}{msg}")
            continue
        if item.id in seen:
            problems.append(f"{name}:{no}: id: {item.id!r} is already used on line {seen[item.id]}")
            continue
        seen[item.id] = no
        items.append(item)
    if problems:
        raise QAError(f"{len(problems)} problem(s) in {name}:\n" + "\n".join(problems))
    if not items:
        raise QAError(f"{name} has no questions")
    return items


def load_qa(path: str | Path) -> list[QAItem]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QAError(f"cannot read QA file {p}: {exc}") from exc
    return parse_qa(text.splitlines(), name=str(p))


def load_keys(pairs: Sequence[str] = (), keys_file: str | Path | None = None) -> dict[str, str]:
    """User → API key from ``USER=KEY`` pairs and/or a TOML or JSON file (a table of user = key, at the top
    or under ``keys``). Pairs win over the file."""
    keys: dict[str, str] = {}
    if keys_file is not None:
        p = Path(keys_file)
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise QAError(f"cannot read keys file {p}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("keys"), dict):
            data = data["keys"]
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise QAError(f"keys file {p} must map user names to API keys (strings), e.g. alice = \"cl_...\"")
        keys.update(data)
    for pair in pairs:
        user, sep, key = pair.partition("=")
        if not sep or not user.strip() or not key.strip():
            raise QAError(f"--key {pair!r}: write USER=KEY")
        keys[user.strip()] = key.strip()
    return keys


def kinds(items: Sequence[QAItem]) -> Counter[str]:
    """How many questions of each kind (answerable, forbidden, unanswerable) and follow-ups a file has."""
    c = Counter(it.kind for it in items)
    c["follow-up"] = sum(1 for it in items if it.conversation)
    return c
