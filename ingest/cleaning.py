"""The one cleaning boundary every connector's changes pass through before ingest touches them.

PostgreSQL cannot store a NUL byte in ``text`` or a ``\\u0000`` in ``jsonb``, and psycopg cannot
encode a lone UTF-16 surrogate (``"\\ud800"``, or the ``"\\udcff"`` that ``os.fsdecode`` makes of a
file name that is not UTF-8) as UTF-8. Either used to crash the whole sync at the same document on
every run. :func:`clean_change` is applied by the sync runner to each change a connector yields:

* **Text is cleaned** (title, text, URL, metadata keys and values): NUL and the other C0 control
  characters except tab, newline and carriage return are removed; each lone surrogate becomes U+FFFD.
  A cleaned document is stored; it differs from the source only in characters no reader can see.
* **What cannot be cleaned is refused**: an external id with a NUL or a lone surrogate, or an access
  name (user or group) with a lone surrogate (:class:`~citeline.domain.Access` already refuses control
  characters). Changing either would name a different item or a different
  person, so the document becomes a :class:`Failure` naming it (its previous version, if any, stays).
* A ``Delete`` of an id that could never have been stored is dropped; a ``Failure``'s id and reason are
  made printable; a ``Checkpoint`` that cannot be stored is skipped (the next one supersedes it; a
  resumed sync starts from the one before, so nothing is lost).

Documents that pass here and are still refused by the database (an id too long for its index, say) are
found by the sync runner's bisection and recorded as per-document failures: see
:mod:`citeline.ingest.sync`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from citeline.contracts.connector import Change, Checkpoint, Delete, Failure, Upsert
from citeline.domain import Document

__all__ = ["clean_change", "clean_text", "printable", "storable"]

# C0 controls except \t \n \r; lone surrogates are handled separately (a valid pair never reaches a str
# decoded from UTF-8 or JSON as two code points, so every surrogate code point is a lone one)
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_ID_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\ud800-\udfff]")
_MAX_NAMED = 1000  # an id quoted in a failure record is cut to this many characters


def clean_text(value: str) -> str:
    """``value`` without NUL/C0 controls (tab, newline, CR kept) and with lone surrogates as U+FFFD."""
    if not _UNSTORABLE.search(value):
        return value
    return _SURROGATES.sub("\ufffd", _CONTROLS.sub("", value))


def storable(value: str) -> bool:
    """True if ``value`` can be stored as an id as it is (no NUL, no lone surrogate)."""
    return not _ID_UNSTORABLE.search(value)


def printable(value: str) -> str:
    """``value`` with control characters and lone surrogates written as escapes (for failure records)."""
    out = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() < " " else f"\\u{ord(m.group()):04x}",
                             value)
    return out if len(out) <= _MAX_NAMED else out[:_MAX_NAMED] + f"… ({len(out)} characters)"


def clean_change(change: Change) -> Change | None:
    """The change as ingest may store it, a Failure if its document cannot be, or None to drop it."""
    if isinstance(change, Upsert):
        refusal = _refusal(change.document)
        if refusal is not None:
            return Failure(printable(change.document.external_id), refusal)
        return Upsert(_clean_document(change.document))
    if isinstance(change, Delete):
        return change if storable(change.external_id) else None
    if isinstance(change, Failure):
        return Failure(printable(change.external_id), clean_text(change.reason))
    if isinstance(change, Checkpoint):
        return change if _storable_json(change.cursor) else None
    return change


def _refusal(doc: Document) -> str | None:
    if not storable(doc.external_id):
        return (f"the source's id {printable(doc.external_id)!r} contains a NUL or an invalid (surrogate) "
                "character, which cannot be stored and would name a different item if changed: "
                "rename the item in the source")
    bad = [n for n in (*doc.access.users, *doc.access.groups) if not storable(n)]
    if bad:
        return (f"its access names {', '.join(printable(n) for n in bad)} contain an invalid (surrogate) character; "
                "changing them would grant access to someone else, so the document is not stored: fix the "
                "names in the source (its previous version, if any, stays indexed)")
    return None


def _clean_document(doc: Document) -> Document:
    metadata = _clean_metadata(doc.metadata)
    url = clean_text(doc.url) if doc.url is not None else None
    title, text = clean_text(doc.title), clean_text(doc.text)
    if (title, text, url) == (doc.title, doc.text, doc.url) and metadata is doc.metadata:
        return doc
    return replace(doc, title=title, text=text, url=url, metadata=metadata)


def _clean_metadata(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    if all(_clean_value(k) == k and _clean_value(v) == v for k, v in metadata.items()):
        return metadata
    return {_clean_value(k): _clean_value(v) for k, v in metadata.items()}


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {_clean_value(k): _clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_value(v) for v in value]
    return value


def _storable_json(value: Any) -> bool:
    """False if a NUL or a lone surrogate hides anywhere in a JSON-like value (jsonb refuses both)."""
    if isinstance(value, str):
        return "\x00" not in value and not _SURROGATES.search(value)
    if isinstance(value, Mapping):
        return all(_storable_json(k) and _storable_json(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_storable_json(v) for v in value)
    return True
