"""The chunker contract: a document → its ordered chunks with character spans.

A chunker is a class registered under the entry-point group ``citeline.chunkers`` (the built-in
``structured`` is registered in citeline's own ``pyproject.toml`` the same way). It is built by
:func:`citeline.plugins.create` as ``cls(config, tokenize=tokenize)``: ``config`` is the class's own
pydantic ``Config`` validated from ``[chunking.options]``, ``tokenize`` is the embedder's tokenizer
(``str -> list[str]``), so chunk sizes are counted in the tokens of the model that embeds them.

A chunker must guarantee:

- ``name``: a short string that changes whenever the chunking would; it is recorded in every document's
  content hash, so changing the chunker (or its options) re-indexes;
- ``chunk(document)`` returns :class:`citeline.domain.Chunk` objects whose ``ordinal`` runs ``0, 1, 2, ...``
  in document order, each ``text`` non-blank; when a chunk carries a span (``span_start``/``span_end`` not
  ``None``), ``document.text[span_start:span_end] == text`` exactly (citations highlight that span);
- a document whose text is empty or only whitespace gives ``[]``;
- the same document gives the same chunks (deterministic: ids and hashes depend on it).

``citeline.testing.chunkers.ChunkerContract`` checks these; built-ins and plugins run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from citeline.domain import Chunk, Document

__all__ = ["Chunker", "Tokenize"]

Tokenize = Callable[[str], list[str]]


@runtime_checkable
class Chunker(Protocol):
    """What ingest consumes. See the module docstring for the full contract."""

    name: str

    def chunk(self, document: Document) -> list[Chunk]: ...
