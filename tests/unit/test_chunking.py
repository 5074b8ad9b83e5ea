from __future__ import annotations

from pathlib import Path

import pytest

from citeline.connectors.folder import FolderConnector
from citeline.contracts.connector import Upsert
from citeline.domain import Access, ContentType, Document
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
    # the heading path from the parser's header_path metadata
    assert [c.heading for c in chunks] == ["Guide", "Guide / Install", "Guide / Remove"]
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


ACME = Path(__file__).resolve().parents[2] / "examples" / "acme"


def acme_documents() -> list[Document]:
    connector = FolderConnector(FolderConnector.Config(path=ACME / "wiki"), Access())
    return [change.document for change in connector.sync(None) if isinstance(change, Upsert)]


def assert_exact_spans(document: Document, chunks) -> None:
    for c in chunks:
        assert c.span_start is not None, f"{document.external_id} chunk {c.ordinal} lost its span"
        assert document.text[c.span_start:c.span_end] == c.text


@pytest.mark.parametrize(("size", "overlap"), [(200, 20), (40, 5), (24, 8)])
def test_fixture_chunks_are_the_splitters_texts_with_exact_spans(size, overlap):
    """The chunk texts are what llama-index's parsers give (as before spans came from the nodes), spans exact."""
    from llama_index.core.node_parser import SentenceSplitter

    chunker = StructuredChunker(StructuredChunker.Config(chunk_tokens=size, overlap_tokens=overlap), tokenize=words)
    splitter = SentenceSplitter(chunk_size=size, chunk_overlap=overlap, tokenizer=words)
    documents = acme_documents()
    assert len(documents) >= 10
    for document in documents:
        chunks = chunker.chunk(document)
        assert_exact_spans(document, chunks)
        sections = chunker._sections(document.text) if document.content_type is ContentType.MARKDOWN \
            else [("", document.text, 0)]
        expected = [piece for _, body, _ in sections for piece in splitter.split_text(body) if piece.strip()]
        assert [c.text for c in chunks] == expected


def test_repeated_sentences_get_their_own_spans_not_the_first_copy():
    """str.find put the second chunk of a run of identical sentences inside the first (a wrong citation)."""
    text = "# Notes\n\nIntro here. " + "Yes. " * 40 + "The end."
    chunker = StructuredChunker(StructuredChunker.Config(chunk_tokens=16, overlap_tokens=4), tokenize=words)
    chunks = chunker.chunk(Document("d", "D", text))
    assert len(chunks) == 4
    assert_exact_spans(Document("d", "D", text), chunks)
    starts = [c.span_start for c in chunks]
    assert starts == sorted(set(starts)), starts
    for before, after in zip(chunks, chunks[1:]):  # consecutive chunks share at most the overlap
        assert len(text[after.span_start:before.span_end].split()) <= 4
    covered = set().union(*(range(c.span_start, c.span_end) for c in chunks))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace()), "a part of the text is in no chunk"
    assert [(c.span_start, c.span_end) for c in chunks] == [(0, 80), (61, 140), (121, 200), (181, 229)]


def test_repeated_sections_and_plain_text_keep_exact_spans():
    same = "## Steps\n\nRestart the router. Wait a minute. Restart the router.\n\n"
    text = "# Guide\n\n" + same * 3 + "## CI/CD\n\nShip it."
    chunker = StructuredChunker(StructuredChunker.Config(chunk_tokens=16, overlap_tokens=4), tokenize=words)
    chunks = chunker.chunk(Document("r", "R", text))
    assert_exact_spans(Document("r", "R", text), chunks)
    steps = [c.span_start for c in chunks if c.text.startswith("## Steps")]
    assert len(steps) == 3 and len(set(steps)) == 3  # each copy of the section cites its own place
    assert chunks[-1].heading == "Guide / CI/CD"  # a "/" in a heading is not a path separator
    plain = "Ping. " * 30
    plain_chunks = chunker.chunk(Document("p", "P", plain, content_type=ContentType.PLAIN))
    assert_exact_spans(Document("p", "P", plain), plain_chunks)
    assert plain_chunks[-1].span_end == len(plain.rstrip())
