"""HTML to Markdown-ish text for the folder connector (private).

Headings become ``#`` lines, paragraphs and list items become text blocks, ``<pre>`` becomes a fenced
block, table rows become ``a | b`` lines; scripts, styles and other non-content elements are dropped.
The result is meant for chunking and embedding, not for faithful round-tripping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

__all__ = ["HtmlPage", "parse_html"]

_DROP = ["script", "style", "noscript", "template", "svg", "canvas", "iframe", "head", "button", "form"]
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = {
    "address", "article", "aside", "blockquote", "body", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "ul", *_HEADINGS,
}  # fmt: skip
_SKIPPED_STRINGS = (Comment, Declaration, Doctype, ProcessingInstruction)


@dataclass(frozen=True)
class HtmlPage:
    """What the folder connector needs from an HTML file."""

    text: str
    title: str | None
    access: Any  # the parsed JSON of <meta name="citeline-access">, or None when absent


def parse_html(source: str, *, access_meta: bool = False) -> HtmlPage:
    """Convert an HTML document.

    With ``access_meta`` (the folder connector's own pages) a ``citeline-access`` meta is read, and
    ``ValueError`` is raised if it is not JSON or is given twice; without it (HTML from an API source,
    whose access comes from the source) such a meta is ignored, so a page body cannot stop a sync.
    """
    soup = BeautifulSoup(source, "html.parser")
    title = _text(soup.title) if soup.title else None
    access = _access_meta(soup) if access_meta else None
    for tag in soup.find_all(_DROP):
        tag.decompose()
    if not title:
        h1 = soup.find("h1")
        title = _text(h1) if h1 else None
    return HtmlPage(text=_join(block for block in _blocks(soup) if block.strip()), title=title or None, access=access)


def _join(blocks: Iterator[str]) -> str:
    """Blocks separated by blank lines; consecutive list items stay one list."""
    out: list[str] = []
    for block in blocks:
        if out and block.startswith("- ") and out[-1].startswith("- "):
            out.append("\n")
        elif out:
            out.append("\n\n")
        out.append(block)
    return "".join(out)


def _access_meta(soup: BeautifulSoup) -> Any:
    metas = soup.find_all("meta", attrs={"name": "citeline-access"})
    if len(metas) > 1:  # which one wins would be a parser's choice: fail closed
        raise ValueError('<meta name="citeline-access"> is given twice: keep one')
    meta = metas[0] if metas else None
    if not isinstance(meta, Tag):
        return None
    content = meta.get("content")
    if not isinstance(content, str):
        raise ValueError('<meta name="citeline-access"> has no content attribute')
    try:
        return json.loads(content, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f'<meta name="citeline-access"> content is not JSON ({exc.msg})') from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (json.loads would silently keep the last of a repeated key)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'<meta name="citeline-access"> content sets {key!r} twice')
        out[key] = value
    return out


def _text(node: Tag | NavigableString) -> str:
    return " ".join(node.get_text().split())


def _blocks(node: Tag) -> Iterator[str]:
    """Block-level text of ``node``'s children; consecutive inline children form one paragraph."""
    inline: list[str] = []
    for child in node.children:
        if isinstance(child, _SKIPPED_STRINGS):
            continue
        if isinstance(child, NavigableString):
            inline.append(str(child))
            continue
        if not isinstance(child, Tag):
            continue
        if child.name not in _BLOCKS:
            inline.append(" " if child.name == "br" else child.get_text())
            continue
        if paragraph := " ".join("".join(inline).split()):
            yield paragraph
        inline = []
        yield from _block(child)
    if paragraph := " ".join("".join(inline).split()):
        yield paragraph


def _block(tag: Tag) -> Iterator[str]:
    name = tag.name
    if name in _HEADINGS:
        yield f"{'#' * _HEADINGS[name]} {_text(tag)}"
    elif name == "pre":
        yield f"```\n{tag.get_text().strip(chr(10))}\n```"
    elif name == "li":
        inner = list(_blocks(tag))
        if inner:
            yield f"- {inner[0]}"
            yield from inner[1:]
    elif name == "tr":
        cells = [_text(cell) for cell in tag.find_all(["td", "th"], recursive=False)]
        yield " | ".join(cell for cell in cells if cell)
    elif name == "blockquote":
        yield from (f"> {block}" for block in _blocks(tag))
    elif name == "hr":
        return
    else:
        yield from _blocks(tag)
