"""PDF, DOCX, PPTX and XLSX to Markdown for the folder connector (private), through markitdown.

Why markitdown (measured on this machine, issue 17): ``markitdown[pdf,docx,pptx,xlsx]`` 0.1.9 installs 37
packages (356 MB into an empty venv, most of it numpy, pandas and onnxruntime that citeline's [local] already
has) and converts offline. docling 2.143 resolves to 122 packages including torch with CUDA wheels and
transformers, and its layout and table models come from the Hugging Face hub at run time, which citeline
never does: that alone rules it out.

* **Pages are kept**: a PDF becomes one ``## Page N`` heading per page (text by pdfminer, page by page), so
  a chunk under it carries the page and its citation snippet starts with ``Page N``; a PPTX slide becomes
  ``## Slide N: <title>``; DOCX headings stay Markdown headings (sections), XLSX sheets ``## <sheet>``.
* **Limits**: the conversion runs in a separate worker process (``python -I`` this file) with an address
  space limit (``memory_mb``) and a time budget per document (``timeout_s``); a worker that overruns is
  killed and the next document gets a fresh one. Before conversion the bytes are checked: a PDF must start
  with ``%PDF-`` and end with a ``%%EOF`` trailer (a truncated file does not), an Office file must be a zip
  whose members unpack to at most ``max_unpacked`` bytes and whose compression ratio stays sane (a zip
  bomb does not). An encrypted PDF, a corrupt file, a missing package are each a :class:`ConversionError`
  naming the reason and the fix (the folder connector turns it into a per-document Failure).
* **Macros are never run**: markitdown reads the OOXML parts as XML; VBA parts are not looked at.

This module imports nothing of citeline (the worker runs it as a plain script, without citeline's imports).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from typing import Any

__all__ = ["DOCUMENT_SUFFIXES", "ConversionError", "Converted", "Converter"]

DOCUMENT_SUFFIXES = {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx"}
EXTRA_FIX = "pip install 'citeline[documents]'"
_MAX_RATIO = 200  # a member unpacking to more than 200x its compressed size is treated as a zip bomb
_HEADER = struct.Struct(">I")


class ConversionError(ValueError):
    """One document cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class Converted:
    text: str
    title: str | None


def check_bytes(kind: str, data: bytes, max_unpacked: int) -> None:
    """Refuse what is not the format it claims, is truncated, or unpacks to too much (before any parsing)."""
    if kind == "pdf":
        if b"%PDF-" not in data[:1024]:
            raise ConversionError("is not a PDF (no %PDF- header): rename it, or exclude it with config.include")
        if b"%%EOF" not in data[-2048:]:
            raise ConversionError("is a truncated PDF (no %%EOF trailer at its end): copy the whole file again")
        return
    if not data.startswith(b"PK\x03\x04"):
        raise ConversionError(f"is not a {kind.upper()} file (not a zip package): re-save it from its application")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            members = package.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ConversionError(f"is a damaged {kind.upper()} file ({exc}): re-save it from its application") from None
    total = sum(m.file_size for m in members)
    if total > max_unpacked:
        raise ConversionError(f"unpacks to {total} bytes, over the limit of {max_unpacked} (a zip bomb, or a file "
                              "too big to index): split it, or exclude it with config.include")
    for m in members:
        if m.file_size > 1_000_000 and m.file_size > _MAX_RATIO * max(m.compress_size, 1):
            raise ConversionError(f"member {m.filename!r} unpacks {m.file_size // max(m.compress_size, 1)}x its "
                                  "size (a zip bomb): not read")


class Converter:
    """A worker process converting one document at a time, restarted after a crash or an overrun.

    ``close()`` ends the worker; a converter is also usable as a context manager.
    """

    def __init__(self, *, timeout_s: float = 60.0, memory_mb: int = 2048, max_unpacked: int = 200_000_000) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_unpacked = max_unpacked
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Converter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def convert(self, kind: str, data: bytes) -> Converted:
        check_bytes(kind, data, self.max_unpacked)
        proc = self._worker()
        assert proc.stdin is not None and proc.stdout is not None
        header = json.dumps({"kind": kind}).encode()
        try:
            proc.stdin.write(_HEADER.pack(len(header)) + header + _HEADER.pack(len(data)) + data)
            proc.stdin.flush()
            reply = _read_frame(proc.stdout.fileno(), time.monotonic() + self.timeout_s)
        except TimeoutError:
            self.close()
            raise ConversionError(f"took longer than the converter's time budget ({self.timeout_s:g} s): split "
                                  "it, or exclude it with config.include") from None
        except (OSError, EOFError):
            code = self.close()
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise ConversionError(f"made the converter process fail ({why}; memory limit {self.memory_mb} MB): "
                                  "the file is damaged or too big to convert") from None
        answer = json.loads(reply)
        if not answer.get("ok"):
            raise ConversionError(str(answer.get("error")))
        return Converted(text=answer["text"], title=answer.get("title") or None)

    def close(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def _worker(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        # the worker sets its own address space limit before it imports a parser (no preexec_fn: the sync may
        # run in a threaded process, where code between fork and exec can deadlock)
        self._proc = subprocess.Popen(  # this interpreter running this file
            [sys.executable, "-I", os.path.abspath(__file__), "--worker", str(self.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        return self._proc


def _read_frame(fd: int, deadline: float) -> bytes:
    size = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))[0]
    return _read_exact(fd, size, deadline)


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    out = bytearray()
    while len(out) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        block = os.read(fd, size - len(out))
        if not block:
            raise EOFError
        out += block
    return bytes(out)


# -- the worker (runs as a script: stdlib and the [documents] packages only) -----------------------------

_SLIDE = re.compile(r"^<!-- Slide number: (\d+) -->\s*\n(?:\s*\n)*(?:# (.+)\n)?", re.MULTILINE)
_FIRST_HEADING = re.compile(r"^#{1,6}\s+(.+)$", re.MULTILINE)


def _pdf(data: bytes) -> Converted:
    from pdfminer.high_level import extract_text
    from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect

    try:
        text = extract_text(io.BytesIO(data))
    except (PDFPasswordIncorrect, PDFEncryptionError):
        raise ConversionError("is an encrypted PDF: citeline cannot read it; save a copy without a password") from None
    pages = [_paragraphs(page) for page in text.split("\f")]
    body = "\n\n".join(f"## Page {n}\n\n{page}" for n, page in enumerate(pages, 1) if page)
    if not body:
        raise ConversionError("has no text layer (a scan?): run OCR on it first, or exclude it")
    return Converted(body, None)


def _paragraphs(page: str) -> str:
    """pdfminer's lines joined into paragraphs (blank lines separate paragraphs)."""
    blocks = re.split(r"\n\s*\n", page.strip())
    return "\n\n".join(" ".join(block.split()) for block in blocks if block.strip())


def _office(kind: str, data: bytes) -> Converted:
    from markitdown import StreamInfo
    from markitdown.converters import DocxConverter, PptxConverter, XlsxConverter

    converter = {"docx": DocxConverter, "pptx": PptxConverter, "xlsx": XlsxConverter}[kind]()
    result = converter.convert(io.BytesIO(data), StreamInfo(extension=f".{kind}"))
    text = result.markdown.strip()
    title = None
    if kind == "pptx":
        text = _SLIDE.sub(lambda m: f"## Slide {m.group(1)}" + (f": {m.group(2).strip()}\n\n" if m.group(2) else
                                                                   "\n\n"), text)
    elif kind == "docx" and (first := _FIRST_HEADING.search(text)):
        title = first.group(1).strip()
    return Converted(text, title)


def _convert(kind: str, data: bytes) -> dict[str, Any]:
    try:
        result = _pdf(data) if kind == "pdf" else _office(kind, data)
    except ModuleNotFoundError as exc:
        return {"ok": False, "error": f"needs the module {exc.name!r}, which is not installed: {EXTRA_FIX}"}
    except ImportError as exc:  # a parser's native library that would not load (the memory limit, a broken install)
        return {"ok": False, "error": f"the converter cannot load its parsers ({str(exc)[-120:]}): raise the "
                                      f"memory limit (convert_memory_mb), or reinstall: {EXTRA_FIX}"}
    except ConversionError as exc:
        return {"ok": False, "error": str(exc)}
    except MemoryError:
        return {"ok": False, "error": "needs more memory than the converter may use: split the file"}
    except Exception as exc:  # a damaged file may raise anything inside the parsers
        return {"ok": False, "error": f"cannot be converted ({type(exc).__name__}: {str(exc)[:200]}): the file "
                                      "is damaged or not what its name says"}
    return {"ok": True, "text": result.text, "title": result.title}


def _serve(memory_mb: int) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")  # the replies' channel; what the parsers print goes to stderr
    os.dup2(2, 1)
    while head := stdin.read(_HEADER.size):
        request = json.loads(stdin.read(_HEADER.unpack(head)[0]))
        data = stdin.read(_HEADER.unpack(stdin.read(_HEADER.size))[0])
        reply = json.dumps(_convert(request["kind"], data)).encode()
        stdout.write(_HEADER.pack(len(reply)) + reply)
        stdout.flush()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _serve(int(sys.argv[2]))
