"""A PDF and a DOCX from examples/acme/documents answered with a citation that names the page / section: the real
converter, the real embedded PostgreSQL and embedder, the extractive backend (no model)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from citeline.facade import Citeline
from citeline.settings import Settings
from tests.conftest import REPO

pytestmark = pytest.mark.integration

CONFIG = """
[[sources]]
name = "documents"
connector = "folder"
config = { path = "documents", base_url = "https://files.acme.example" }
access = { groups = ["staff"] }

[generation]
backend = "extractive"
"""


@pytest.fixture(scope="module")
def acme(tmp_path_factory, pg_url, embedder) -> Iterator[tuple[Settings, Path]]:
    root = tmp_path_factory.mktemp("documents")
    shutil.copytree(REPO / "examples" / "acme" / "documents", root / "documents")
    (root / "documents" / "bad.pdf").write_bytes(b"%PDF-1.4 cut off")
    (root / "citeline.toml").write_text(CONFIG)
    namespace = f"d_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(root / "citeline.toml", database_url=pg_url, database={"namespace": namespace})
    try:
        yield settings, root / "documents"
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def test_pdf_and_docx_answers_cite_the_page_and_the_section(acme: tuple[Settings, Path], embedder) -> None:
    settings, folder = acme
    with Citeline(settings, embedder=embedder) as cl:
        (report,) = cl.sync()
        assert (report.added, report.failed) == (2, 1)
        assert report.failures[0][0] == "bad.pdf" and "truncated PDF" in report.failures[0][1]
        cl.admin.import_principals(REPO / "examples" / "acme" / "principals.toml", actor="test")

        hotel = cl.ask("What is the hotel limit per night in Europe?", user="bob")
        assert not hotel.refused and "160 EUR" in hotel.text, hotel.text
        cited = [c for c in hotel.citations if c.external_id == "travel-expenses.pdf"]
        assert cited and cited[0].snippet.startswith("Page 2 "), [c.snippet for c in hotel.citations]
        assert cited[0].section.endswith("Page 2"), cited[0].section  # the citation names the page itself
        assert cited[0].url == "https://files.acme.example/travel-expenses"

        merge = cl.ask("How many approvals are needed to merge into fleet-backend?", user="bob")
        assert not merge.refused and "Two approvals" in merge.text, merge.text
        cited = [c for c in merge.citations if c.external_id == "code-review-guide.docx"]
        assert cited and cited[0].snippet.startswith("Merging "), [c.snippet for c in merge.citations]
        assert cited[0].section.endswith("Merging"), cited[0].section
        assert cited[0].title == "Code review guide"

        (again,) = cl.sync()  # unchanged files are skipped; the failing one is still reported
        assert (again.added, again.unchanged, again.failed) == (0, 2, 1)

        # the indexed PDF is replaced by a damaged copy: a failure, and what was indexed for it stays answerable
        pdf = folder / "travel-expenses.pdf"
        pdf.write_bytes(pdf.read_bytes()[:600])
        (damaged,) = cl.sync()
        assert damaged.failed == 2 and damaged.deleted == 0
        assert ("travel-expenses.pdf", "travel-expenses.pdf: is a truncated PDF (no %%EOF trailer at its end): "
                "copy the whole file again") in damaged.failures
        kept = cl.ask("What is the hotel limit per night in Europe?", user="bob")
        assert "160 EUR" in kept.text and kept.citations[0].external_id == "travel-expenses.pdf"


def test_every_chunk_of_a_long_page_names_its_page(tmp_path, pg_url, embedder) -> None:
    """A page long enough for several chunks: the later chunks hold no "Page N" text, their citations still
    name the page (the chunk's heading path travels with the hit)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_documents", REPO / "examples" / "make_documents.py")
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    filler = [f"Section {i} of the handbook describes the routine checks for depot number {i}." for i in range(90)]
    pages = [["Fleet handbook", "Read this first."], [*filler, "The spare key for the blue van hangs in locker 77."]]
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "handbook.pdf").write_bytes(make.pdf(pages))
    (tmp_path / "citeline.toml").write_text(CONFIG)
    namespace = f"d_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(tmp_path / "citeline.toml", database_url=pg_url, database={"namespace": namespace},
                             answer={"min_score": -1.0})  # the filler makes the chunk a weak match: no refusal
    try:
        with Citeline(settings, embedder=embedder) as cl:
            (report,) = cl.sync()
            assert report.added == 1 and report.chunks >= 4, report
            cl.admin.import_principals(REPO / "examples" / "acme" / "principals.toml", actor="test")
            hits = cl.search("spare key for the blue van locker", user="bob", k=3).hits
            assert "locker 77" in hits[0].text and "Page 2" not in hits[0].text  # a later chunk of page 2
            assert hits[0].heading.endswith("Page 2"), hits[0].heading
            answer = cl.ask("Where is the spare key for the blue van?", user="bob")
            assert "locker 77" in answer.text, answer.text
            cited = [c for c in answer.citations if c.chunk_id == hits[0].chunk_id]
            assert cited and cited[0].section.endswith("Page 2"), [(c.section, c.snippet) for c in answer.citations]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))
