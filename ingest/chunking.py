"""Chunkers: a document → ordered chunks with character spans.

The contract (group ``citeline.chunkers``) is the :class:`Chunker` protocol: ``name`` (recorded in
the content hash, so changing the chunker re-indexes) and ``chunk(document)``. Factories take the
:class:`citeline.settings.ChunkingSettings` and the embedder's ``tokenize`` function, so chunk sizes
are counted in the tokens of the model that will embed them.

:class:`StructuredChunker` follows the document's structure with llama-index node parsers:
Markdown is split at headings (wiki sections, ticket comments) and long sections by sentences;
plain text by sentences; a record (a catalog row) is one chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from citeline.domain import Chunk, ContentType, Document
from citeline.settings import ChunkingSettings

__all__ = ["Chunker", "StructuredChunker"]

Tokenize = Callable[[str], list[str]]
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*)$")


@runtime_checkable
class Chunker(Protocol):
    name: str

    def chunk(self, document: Document) -> list[Chunk]: ...


class StructuredChunker:
    """Markdown sections → sentence-bounded pieces of at most ``chunk_tokens`` tokens."""

    def __init__(self, settings: ChunkingSettings, tokenize: Tokenize) -> None:
        from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter

        self._markdown = MarkdownNodeParser(include_metadata=False, include_prev_next_rel=False)
        self._splitter = SentenceSplitter(
            chunk_size=settings.chunk_tokens,
            chunk_overlap=settings.overlap_tokens,
            tokenizer=tokenize,
            include_metadata=False,
            include_prev_next_rel=False,
        )
        self.name = f"structured:{settings.chunk_tokens}:{settings.overlap_tokens}"

    def chunk(self, document: Document) -> list[Chunk]:
        text = document.text
        if not text.strip():
            return []
        if document.content_type is ContentType.RECORD:
            return [Chunk(0, text.strip(), *_span(text, text.strip(), 0))]
        if document.content_type is ContentType.MARKDOWN:
            sections = self._sections(text)
        else:
            sections = [("", text)]
        chunks: list[Chunk] = []
        cursor = 0
        for heading, section in sections:
            for piece in self._splitter.split_text(section):
                if not piece.strip():
                    continue
                start, end = _span(text, piece, cursor)
                if start is not None:
                    cursor = start + 1
                chunks.append(Chunk(len(chunks), piece, start, end, heading))
        return chunks

    def _sections(self, text: str) -> list[tuple[str, str]]:
        from llama_index.core import Document as LlamaDocument

        nodes = self._markdown.get_nodes_from_documents([LlamaDocument(text=text)])
        out = []
        for node in nodes:
            body = node.get_content()
            first = body.lstrip().splitlines()[0] if body.strip() else ""
            match = _HEADING.match(first)
            out.append((match.group(1).strip() if match else "", body))
        return out or [("", text)]


def _span(text: str, piece: str, cursor: int) -> tuple[int | None, int | None]:
    """Where ``piece`` starts in ``text`` at or after ``cursor`` (None if the splitter rewrote it)."""
    at = text.find(piece, cursor)
    if at < 0:
        at = text.find(piece)
    if at < 0:
        return None, None
    return at, at + len(piece)
