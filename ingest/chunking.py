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
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from citeline.contracts.chunker import Chunker, Tokenize
from citeline.domain import Chunk, ContentType, Document

if TYPE_CHECKING:
    from llama_index.core.node_parser import SentenceSplitter

__all__ = ["Chunker", "StructuredChunker"]

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*)$")
_MARK = re.compile("\x00([0-9]+)\x01")  # a split's number in the merge (see _pieces)


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

        # header_path: the parent headings, joined by a newline (a heading never holds one; it may hold "/")
        self._markdown = MarkdownNodeParser(include_metadata=True, include_prev_next_rel=False,
                                            header_path_separator="\n")
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
        sections = self._sections(text) if document.content_type is ContentType.MARKDOWN else [("", text, 0)]
        chunks: list[Chunk] = []
        cursor = 0  # only for a section the parser rewrote: its pieces are looked up as before
        for heading, section, origin in sections:
            for piece, at in _pieces(self._splitter, section):
                if origin is not None and at is not None:
                    start: int | None = origin + at
                else:
                    start = _find(text, piece, cursor)
                if start is not None:
                    cursor = start + 1
                parts = [(piece, start or 0)] if len(piece) <= self.max_chars else \
                    _bounded(piece, start or 0, self.max_chars)
                for part, where in parts:  # no span when the splitter rewrote the piece
                    known = start is not None
                    chunks.append(Chunk(len(chunks), part, where if known else None,
                                        where + len(part) if known else None, heading))
        return chunks

    def _sections(self, text: str) -> list[tuple[str, str, int | None]]:
        """Markdown sections: (heading path, text, where the text starts in ``text``; None if rewritten).

        The parser's ``header_path`` names the parent headings; its ``start_char_idx`` is checked (the
        library finds it with ``str.find``) and a section is otherwise looked up after the one before it.
        """
        from llama_index.core import Document as LlamaDocument

        out: list[tuple[str, str, int | None]] = []
        after = 0
        for node in self._markdown.get_nodes_from_documents([LlamaDocument(text=text)]):
            body = node.get_content()
            at = getattr(node, "start_char_idx", None)
            if at is None or at < after or text[at:at + len(body)] != body:
                at = _find(text, body, after)
            if at is not None:
                after = at + len(body)
            first = body.lstrip().splitlines()[0] if body.strip() else ""
            match = _HEADING.match(first)
            path = [h for h in str(node.metadata.get("header_path", "")).split("\n") if h]
            out.append((" / ".join([*path, match.group(1).strip()] if match else path), body, at))
        return out or [("", text, 0)]


def _pieces(splitter: SentenceSplitter, text: str) -> list[tuple[str, int | None]]:
    """``splitter.split_text(text)`` (the same texts), each with where it starts in ``text``.

    The splitter joins consecutive splits of the text into chunks (with overlap) and strips them; its
    output carries no positions, and ``str.find`` picks the wrong copy of a repeated passage. So the
    splitter's own merge runs over numbered markers in place of the splits (same token sizes): each
    chunk comes back as the list of splits it joined, whose places in ``text`` are known. A chunk whose
    splits are not contiguous in ``text`` (the splitter dropped characters between them) gets None.
    """
    from llama_index.core.node_parser.text.sentence import _Split

    if not text:
        return []
    splits = splitter._split(text, splitter.chunk_size)
    places: list[int | None] = []
    at = 0
    for split in splits:  # in order, never overlapping: each is found after the one before
        found = text.find(split.text, at)
        places.append(found if found >= 0 else None)
        at = found + len(split.text) if found >= 0 else at
    marked = [_Split(f"\x00{n}\x01", is_sentence=s.is_sentence, token_size=s.token_size) for n, s in enumerate(splits)]
    out: list[tuple[str, int | None]] = []
    for merged in splitter._merge(marked, splitter.chunk_size):
        ids = [int(n) for n in _MARK.findall(merged)]
        raw = "".join(splits[n].text for n in ids)
        if not raw.strip():
            continue
        start = places[ids[0]]
        joined = all(places[a] is not None and places[b] == places[a] + len(splits[a].text)  # type: ignore[operator]
                     for a, b in zip(ids, ids[1:]))
        lead = len(raw) - len(raw.lstrip())
        out.append((raw.strip(), start + lead if start is not None and joined else None))
    return out


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


def _find(text: str, piece: str, cursor: int) -> int | None:
    """Where ``piece`` starts in ``text`` at or after ``cursor`` (else anywhere; None if it is not there)."""
    at = text.find(piece, cursor)
    if at < 0:
        at = text.find(piece)
    return at if at >= 0 else None
