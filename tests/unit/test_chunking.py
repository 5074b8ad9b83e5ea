from __future__ import annotations

import pytest

from citeline.domain import ContentType, Document
from citeline.ingest.chunking import StructuredChunker

pytestmark = pytest.mark.unit


def words(text: str) -> list[str]:
    return text.split()


@pytest.fixture
def chunker() -> StructuredChunker:
    return StructuredChunker(StructuredChunker.Config(chunk_tokens=40, overlap_tokens=5), tokenize=words)


def test_markdown_is_split_at_headings_with_exact_spans(chunker):
    text = "# Guide\n\nIntro line.\n\n## Install\n\nRun the installer.\n\n## Remove\n\nDelete the folder."
    chunks = chunker.chunk(Document("g", "Guide", text))
    assert [c.heading for c in chunks] == ["Guide", "Install", "Remove"]
    for c in chunks:
        assert text[c.span_start:c.span_end] == c.text
    assert [c.ordinal for c in chunks] == [0, 1, 2]


def test_long_sections_respect_the_token_budget(chunker):
    body = " ".join(f"Fact number {i} is true." for i in range(80))
    chunks = chunker.chunk(Document("l", "Long", f"# Long\n\n{body}"))
    assert len(chunks) > 3
    assert all(len(words(c.text)) <= 40 for c in chunks)
    covered = " ".join(c.text for c in chunks)
    assert "Fact number 0 is" in covered and "Fact number 79 is true." in covered


def test_records_are_one_chunk_and_empty_text_none(chunker):
    # over the token budget (40) but within the character bound (16 x 40): still one chunk
    record = Document("r", "Widget", "Widget\nPrice: 10\n" + "word " * 100, content_type=ContentType.RECORD)
    assert len(chunker.chunk(record)) == 1
    assert chunker.chunk(Document("e", "Empty", "   ")) == []
