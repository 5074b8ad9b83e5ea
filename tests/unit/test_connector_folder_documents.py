"""The folder connector's office documents (PDF, DOCX, PPTX, XLSX) through the real converter (markitdown and
pdfminer in the worker process): pages and sections named, hostile files are per-document failures naming the
file and the reason, the sync goes on, the converter's limits hold."""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import pytest

from citeline.connectors import _documents
from citeline.connectors.folder import FolderConnector
from citeline.contracts.connector import Failure, Upsert
from citeline.domain import Access

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "acme" / "documents"
STAFF = Access(groups=("staff",))


def _generator():
    spec = importlib.util.spec_from_file_location("make_documents", REPO / "examples" / "make_documents.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def sync(folder: Path, **config) -> tuple[dict[str, Upsert], dict[str, Failure]]:
    connector = FolderConnector({"path": str(folder), **config}, STAFF)
    changes = list(connector.sync(None))
    ups = {c.document.external_id: c for c in changes if isinstance(c, Upsert)}
    fails = {c.external_id: c for c in changes if isinstance(c, Failure)}
    return ups, fails


def test_the_committed_examples_are_what_the_generator_writes() -> None:
    for name, data in gen.examples().items():
        assert (EXAMPLES / name).read_bytes() == data, f"{name}: run python examples/make_documents.py"


def test_a_pdf_gets_one_heading_per_page_and_a_docx_keeps_its_sections() -> None:
    ups, fails = sync(EXAMPLES, base_url="https://files.acme.example")
    assert not fails
    pdf = ups["travel-expenses.pdf"].document
    assert pdf.title == "travel-expenses" and pdf.access == STAFF and pdf.metadata["format"] == "pdf"
    assert pdf.url == "https://files.acme.example/travel-expenses"
    pages = pdf.text.split("## Page ")[1:]
    assert [p.split("\n", 1)[0] for p in pages] == ["1", "2", "3"]
    assert "160 EUR per night in Europe" in pages[1] and "160 EUR" not in pages[0] + pages[2]
    doc = ups["code-review-guide.docx"].document
    assert doc.title == "Code review guide"
    merging = doc.text.split("## Merging", 1)[1]
    assert "Two approvals are needed to merge" in merging and "## " not in merging


def test_slides_and_sheets_are_named(tmp_path: Path) -> None:
    pptx = pytest.importorskip("pptx")
    openpyxl = pytest.importorskip("openpyxl")
    deck = pptx.Presentation()
    for title, body in [("Roadmap", "Fleet v3 ships in March."), ("Risks", "Battery supply is the main risk.")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(tmp_path / "plan.pptx")
    book = openpyxl.Workbook()
    book.active.title = "Prices"
    book.active.append(["sku", "price"])
    book.active.append(["FL-100", "1200"])
    book.save(tmp_path / "prices.xlsx")
    ups, fails = sync(tmp_path)
    assert not fails
    deck_text = ups["plan.pptx"].document.text
    assert "## Slide 1: Roadmap" in deck_text and "## Slide 2: Risks" in deck_text
    assert deck_text.index("Battery supply") > deck_text.index("## Slide 2")
    sheet = ups["prices.xlsx"].document.text
    assert "## Prices" in sheet and "FL-100" in sheet and "1200" in sheet


def _bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("[Content_Types].xml", "<Types/>")
        package.writestr("word/document.xml", b"\0" * 60_000_000)  # 60 MB of zeros: ~60 KB compressed
    return buffer.getvalue()


HOSTILE = {
    "a-encrypted.pdf": (gen.pdf(gen.TRAVEL_PAGES, encrypt=True), "encrypted PDF"),
    "b-truncated.pdf": (gen.pdf(gen.TRAVEL_PAGES)[:400], "truncated PDF"),
    "c-really-text.pdf": (b"just some notes, not a PDF\n", "is not a PDF"),
    "d-bomb.docx": (_bomb(), "zip bomb"),
    "e-not-a-zip.docx": (b"PK\x03\x04 but nothing after", "damaged DOCX"),
    "f-broken.pptx": (gen.docx([("Normal", "a Word file named .pptx")]), "cannot be converted"),
    "g-scan.pdf": (gen.pdf([[""]]), "no text layer"),
}


def test_hostile_files_are_failures_naming_the_file_and_the_reason_and_the_sync_goes_on(tmp_path: Path) -> None:
    for name, (data, _) in HOSTILE.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "z-notes.md").write_text("# Notes\n\nStill indexed.\n")
    (tmp_path / "y-good.pdf").write_bytes(gen.pdf([["Still converted after the bad ones."]]))
    ups, fails = sync(tmp_path, max_bytes=1_000_000)
    assert set(ups) == {"z-notes.md", "y-good.pdf"}, fails
    assert "Still converted" in ups["y-good.pdf"].document.text
    for name, (_, reason) in HOSTILE.items():
        assert name in fails, name
        assert fails[name].reason.startswith(f"{name}: ") and reason in fails[name].reason, fails[name].reason


def test_the_time_budget_kills_the_worker_and_the_next_document_gets_a_fresh_one(tmp_path: Path) -> None:
    converter = _documents.Converter(timeout_s=0.05)
    data = (EXAMPLES / "code-review-guide.docx").read_bytes()
    with pytest.raises(_documents.ConversionError, match=r"time budget \(0.05 s\)"):
        converter.convert("docx", data)
    assert converter._proc is None  # killed and reaped
    converter.timeout_s = 60
    try:
        assert "Two approvals" in converter.convert("docx", data).text
    finally:
        converter.close()


def test_a_converter_over_its_memory_limit_is_a_failure_naming_the_limit() -> None:
    converter = _documents.Converter(timeout_s=60, memory_mb=64)  # too little to import markitdown's parsers
    data = (EXAMPLES / "code-review-guide.docx").read_bytes()
    with pytest.raises(_documents.ConversionError, match="memory limit"):
        converter.convert("docx", data)
    converter.close()
    converter.memory_mb = 2048
    try:
        assert "## Merging" in converter.convert("docx", data).text
    finally:
        converter.close()


def test_a_missing_package_names_the_documents_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "markitdown", None)  # type: ignore[arg-type]
    reply = _documents._convert("docx", (EXAMPLES / "code-review-guide.docx").read_bytes())
    assert not reply["ok"]
    assert "'markitdown'" in reply["error"] and "pip install 'citeline[documents]'" in reply["error"]


def test_a_document_over_max_bytes_is_a_failure_before_any_conversion(tmp_path: Path) -> None:
    (tmp_path / "big.pdf").write_bytes(gen.pdf(gen.TRAVEL_PAGES))
    ups, fails = sync(tmp_path, max_bytes=100)
    assert not ups and "over max_bytes=100" in fails["big.pdf"].reason
