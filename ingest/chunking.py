"""Chunkers: a document → ordered chunks with character spans.

The contract (group ``citeline.chunkers``) is the :class:`Chunker` protocol: ``name`` (recorded in
the content hash, so changing the chunker re-indexes) and ``chunk(document)``. Each chunker is built as
``cls(config, tokenize=)``: its own ``Config`` (``[chunking.options]``) and the embedder's ``tokenize``
function, so chunk sizes are counted in the tokens of the model that will embed them.

:class:`StructuredChunker` follows the document's structure with llama-index node parsers:
Markdown is split at headings (wiki sections, ticket comments) and long sections by sentences;
plain text by sentences; a record (a catalog row) is one chunk. Every chunk is also bounded by
characters (``StructuredChunker.Config.char_budget``): a piece over it, such as a whitespace-free blob the
tokenizer counts as one token, is cut at the last whitespace in the window's second half, or hard at
the bound. Spans still point at the exact text.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from citeline.contracts.chunker import Chunker, Tokenize
from citeline.domain import Chunk, ContentType, Document

__all__ = ["Chunker", "StructuredChunker"]

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*)$")


class StructuredChunker:
    """Markdown sections → sentence-bounded pieces of at most ``chunk_tokens`` tokens."""

    class Config(BaseModel):
        """``[chunking.options]`` of ``chunker = "structured"``."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        chunk_tokens: int = Field(200, ge=16, le=4096)
        overlap_tokens: int = Field(20, ge=0)
        # a chunk is also cut at this many characters (a whitespace-free blob counts as one token, so the token
        # budget alone let a 4.9 MB line become one chunk); None: 16 characters per token of chunk_tokens,
        # which ordinary prose (about 5 per token) never reaches
        max_chars: int | None = Field(None, ge=100, le=1_000_000, description="most characters in one chunk; "
                                      "default 16 x chunk_tokens")

        @model_validator(mode="after")
        def _overlap(self) -> StructuredChunker.Config:
            if self.overlap_tokens >= self.chunk_tokens:
                raise ValueError("overlap_tokens must be smaller than chunk_tokens")
            return self

        @property
        def char_budget(self) -> int:
            """The character bound in force: ``max_chars``, or 16 characters per token of ``chunk_tokens``."""
            return self.max_chars if self.max_chars is not None else 16 * self.chunk_tokens

    def __init__(self, config: Config | None = None, *, tokenize: Tokenize) -> None:
        settings = config or self.Config()
        from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter

        self._markdown = MarkdownNodeParser(include_metadata=False, include_prev_next_rel=False)
        self._splitter = SentenceSplitter(
            chunk_size=settings.chunk_tokens,
            chunk_overlap=settings.overlap_tokens,
            tokenizer=tokenize,
            include_metadata=False,
            include_prev_next_rel=False,
        )
        self.max_chars = settings.char_budget
        # the default bound leaves the name (and so every stored content hash) as it was: it only changes
        # pieces no ordinary text produces; an explicit max_chars re-indexes like any other chunking change
        suffix = f":c{settings.max_chars}" if settings.max_chars is not None else ""
        self.name = f"structured:{settings.chunk_tokens}:{settings.overlap_tokens}{suffix}"

    def chunk(self, document: Document) -> list[Chunk]:
        text = document.text
        if not text.strip():
            return []
        if document.content_type is ContentType.RECORD:
            offset = len(text) - len(text.lstrip())
            return [Chunk(n, piece, at, at + len(piece))
                    for n, (piece, at) in enumerate(_bounded(text.strip(), offset, self.max_chars))]
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
                if len(piece) <= self.max_chars:
                    chunks.append(Chunk(len(chunks), piece, start, end, heading))
                    continue
                for part, at in _bounded(piece, start or 0, self.max_chars):
                    if start is None:  # the splitter rewrote the piece: no span in the source text
                        chunks.append(Chunk(len(chunks), part, None, None, heading))
                    else:
                        chunks.append(Chunk(len(chunks), part, at, at + len(part), heading))
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


def _bounded(piece: str, offset: int, limit: int) -> list[tuple[str, int]]:
    """``piece`` cut into stripped parts of at most ``limit`` characters, each with its start (+ ``offset``).

    A cut goes after the last whitespace in the second half of the window, else hard at the limit.
    """
    parts: list[tuple[str, int]] = []
    at = 0
    while at < len(piece):
        end = min(at + limit, len(piece))
        if end < len(piece):
            space = max(piece.rfind(" ", at + limit // 2, end), piece.rfind("\n", at + limit // 2, end))
            end = space + 1 if space > at else end
        raw = piece[at:end]
        lead = len(raw) - len(raw.lstrip())
        if raw.strip():
            parts.append((raw.strip(), offset + at + lead))
        at = end
    return parts


def _span(text: str, piece: str, cursor: int) -> tuple[int | None, int | None]:
    """Where ``piece`` starts in ``text`` at or after ``cursor`` (None if the splitter rewrote it)."""
    at = text.find(piece, cursor)
    if at < 0:
        at = text.find(piece)
    if at < 0:
        return None, None
    return at, at + len(piece)
