"""A contract test suite every chunker runs (built-in or third-party).

Inherit :class:`ChunkerContract` in a pytest test class and provide a ``chunker`` fixture: a ready chunker
(built as ``cls(config, tokenize=...)``) with chunk sizes small enough that :data:`LONG_TEXT` gives more
than one chunk::

    from citeline.testing.chunkers import ChunkerContract

    class TestMyChunker(ChunkerContract):
        @pytest.fixture
        def chunker(self):
            return MyChunker(MyChunker.Config(max_words=40), tokenize=str.split)

It checks the promises of :mod:`citeline.contracts.chunker`. Nothing here imports pytest.
"""

from __future__ import annotations

from typing import Any

from citeline.contracts.chunker import Chunker
from citeline.domain import Chunk, ContentType, Document

__all__ = ["LONG_TEXT", "ChunkerContract", "check_chunks", "sample_documents"]

_PARAGRAPH = ("The deploy tool rolls a release back with `acme-deploy rollback fleet`. It redeploys the previous "
              "build in under two minutes, and it keeps the database as it is. Run it from the bastion host. ")
LONG_TEXT = "# Runbook\n\n" + "\n\n".join(f"## Step {n}\n\n{_PARAGRAPH * 3}" for n in range(1, 7))


def sample_documents() -> list[Document]:
    """One document of each content type, the long one in several sections."""
    return [
        Document("md", "Runbook", LONG_TEXT, content_type=ContentType.MARKDOWN),
        Document("txt", "Notes", "Short plain note.\n\n" + _PARAGRAPH * 4, content_type=ContentType.PLAIN),
        Document("rec", "SKU-1", "  name: Blue kettle | price: 30 EUR | stock: 4  ", content_type=ContentType.RECORD),
    ]


def check_chunks(document: Document, chunks: Any) -> None:
    """Assert the shape every chunker promises for one document's chunks."""
    assert isinstance(chunks, list), f"chunk() returns a list, not {type(chunks).__name__}"
    assert all(isinstance(c, Chunk) for c in chunks), "chunk() returns citeline.domain.Chunk objects"
    assert [c.ordinal for c in chunks] == list(range(len(chunks))), "ordinals run 0, 1, 2, ... in order"
    for c in chunks:
        assert c.text.strip(), f"chunk {c.ordinal} is blank"
        if c.span_start is not None or c.span_end is not None:
            assert c.span_start is not None and c.span_end is not None, "a span has both ends"
            assert document.text[c.span_start:c.span_end] == c.text, f"chunk {c.ordinal}'s span is not its text"


class ChunkerContract:
    """Checks the promises of :mod:`citeline.contracts.chunker`. Needs a ``chunker`` fixture."""

    def test_is_a_chunker_with_a_name(self, chunker: Any) -> None:
        assert isinstance(chunker, Chunker), "the class implements citeline.contracts.chunker.Chunker"
        assert isinstance(chunker.name, str) and chunker.name, "name is a non-empty string"

    def test_chunks_have_ordinals_and_exact_spans(self, chunker: Any) -> None:
        for document in sample_documents():
            chunks = chunker.chunk(document)
            assert chunks, f"a document with text ({document.content_type}) gives at least one chunk"
            check_chunks(document, chunks)

    def test_long_document_is_split_and_covered(self, chunker: Any) -> None:
        document = sample_documents()[0]
        chunks = chunker.chunk(document)
        assert len(chunks) > 1, "a long document gives several chunks (make the fixture's sizes small)"
        words = set(document.text.split()) - {"#", "##"}
        covered = set(" ".join(c.text for c in chunks).split())
        assert len(words & covered) >= 0.9 * len(words), "the chunks carry the document's text"

    def test_empty_and_blank_documents_give_no_chunks(self, chunker: Any) -> None:
        for text in ("", "   \n\t \n"):
            for kind in ContentType:
                assert chunker.chunk(Document("empty", "Empty", text, content_type=kind)) == [], \
                    f"a blank {kind} document gives []"

    def test_deterministic(self, chunker: Any) -> None:
        for document in sample_documents():
            assert chunker.chunk(document) == chunker.chunk(document), "the same document gives the same chunks"

    def test_name_is_stable(self, chunker: Any) -> None:
        before = chunker.name
        chunker.chunk(sample_documents()[0])
        assert chunker.name == before, "name does not change by chunking (it is recorded in content hashes)"
