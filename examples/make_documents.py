"""Writes the example documents in examples/acme/documents/: a three-page PDF and a DOCX with sections.

Standard library only, byte-for-byte reproducible (fixed zip timestamps, no creation dates), so the committed
files can be checked against this script (tests/unit/test_documents.py does)::

    python examples/make_documents.py            # rewrites examples/acme/documents/*

The functions are also used by the tests to build hostile variants (truncated, encrypted, zip bombs).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

OUT = Path(__file__).resolve().parent / "acme" / "documents"

TRAVEL_PAGES = [
    ["Acme Robotics travel and expense policy",
     "",
     "This policy applies to all staff who travel for Acme Robotics.",
     "Book flights and trains through the Acme travel portal at least 14 days ahead."],
    ["Hotels and meals",
     "",
     "Hotel stays are reimbursed up to 160 EUR per night in Europe",
     "and up to 220 USD per night in North America.",
     "The daily meal allowance is 45 EUR. Keep every receipt."],
    ["Expense claims",
     "",
     "Submit expense claims in the finance portal within 30 days of your return.",
     "Claims older than 90 days are not reimbursed."],
]

REVIEW_SECTIONS = [
    ("Heading1", "Code review guide"),
    ("Heading2", "Who reviews"),
    ("Normal", "Every pull request to the fleet-backend repository is reviewed by someone outside its author's "
               "squad."),
    ("Heading2", "Review turnaround"),
    ("Normal", "A reviewer answers a pull request within one working day, or hands it to another reviewer."),
    ("Heading2", "Merging"),
    ("Normal", "Two approvals are needed to merge into the main branch of fleet-backend, and the CI pipeline "
               "must be green."),
]


def pdf(pages: list[list[str]], *, encrypt: bool = False) -> bytes:
    """A minimal PDF (Helvetica text, one content stream per page); ``encrypt`` adds a Standard security handler
    whose user password is not empty (so a reader without the password cannot open it)."""
    count = len(pages)
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(count))}] /Count {count} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "16 TL", "72 740 Td"]
        for line in lines:
            text = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({text}) Tj T*" if line else "T*")
        ops.append("ET")
        stream = "\n".join(ops)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    secret = ("/Encrypt << /Filter /Standard /V 1 /R 2 /O <" + "11" * 32 + "> /U <" + "22" * 32 + "> /P -4 >> "
              "/ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>] ") if encrypt else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R {secret}>>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_PKG = "http://schemas.openxmlformats.org/package/2006"
_DOC = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_CONTENT_TYPES = (
    f'{_XML}<Types xmlns="{_PKG}/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    f'<Override PartName="/word/document.xml" ContentType="{_MAIN}.document.main+xml"/>'
    f'<Override PartName="/word/styles.xml" ContentType="{_MAIN}.styles+xml"/></Types>'
)
_RELS = (f'{_XML}<Relationships xmlns="{_PKG}/relationships">'
         f'<Relationship Id="rId1" Type="{_DOC}/officeDocument" Target="word/document.xml"/></Relationships>')
_DOC_RELS = (f'{_XML}<Relationships xmlns="{_PKG}/relationships">'
             f'<Relationship Id="rId1" Type="{_DOC}/styles" Target="styles.xml"/></Relationships>')


def _style(style_id: str, name: str) -> str:
    return f'<w:style w:type="paragraph" w:styleId="{style_id}"><w:name w:val="{name}"/></w:style>'


def docx(paragraphs: list[tuple[str, str]]) -> bytes:
    """A minimal DOCX: paragraphs as (style id, text); Heading1 and Heading2 are Word's built-in heading styles."""
    styles = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:styles xmlns:w="{_W}">'
              + _style("Normal", "Normal") + _style("Heading1", "heading 1")
              + _style("Heading2", "heading 2") + "</w:styles>")
    body = "".join(f'<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr><w:r><w:t xml:space="preserve">{escape(text)}'
                   "</w:t></w:r></w:p>" for style, text in paragraphs)
    document = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="{_W}"><w:body>'
                f"{body}</w:body></w:document>")
    return _zip({"[Content_Types].xml": _CONTENT_TYPES, "_rels/.rels": _RELS, "word/_rels/document.xml.rels": _DOC_RELS,
                 "word/document.xml": document, "word/styles.xml": styles})


def _zip(parts: dict[str, str | bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        for name, data in parts.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            package.writestr(info, data)
    return buffer.getvalue()


def examples() -> dict[str, bytes]:
    """The committed example files: name -> bytes."""
    return {"travel-expenses.pdf": pdf(TRAVEL_PAGES), "code-review-guide.docx": docx(REVIEW_SECTIONS)}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in examples().items():
        (OUT / name).write_bytes(data)
        print(f"wrote {OUT / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
