"""HTML to Markdown-ish text for the folder connector (private).

Headings become ``#`` lines, paragraphs and list items become text blocks, ``<pre>`` becomes a fenced
block, table rows become ``a | b`` lines; scripts, styles and other non-content elements are dropped.
The result is meant for chunking and embedding, not for faithful round-tripping.

Confluence **storage format** (``parse_html(..., storage=StorageLinks(...))``) is rewritten to plain HTML
first: a code or noformat macro becomes a fenced block with its language; an info, note, warning, tip or
panel macro a quoted block headed by its label (and title); a page link (``ac:link`` / ``ri:page``) the
linked page's title (the link text too, when it differs) with the page URL when the space is known;
attachments and URLs their name and address; macro parameters are never page text; layouts, rich-text
bodies and unknown macros keep their content; images and emoticons are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

__all__ = ["HtmlPage", "StorageLinks", "parse_html"]

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


@dataclass(frozen=True)
class StorageLinks:
    """Where a Confluence storage-format page lives: page links become ``base_url/display/SPACE/Title``."""

    base_url: str
    space: str | None

    def page_url(self, title: str, space: str | None) -> str | None:
        key = space or self.space
        if not key or not title:
            return None
        return f"{self.base_url.rstrip('/')}/display/{quote(key, safe='')}/{quote(title, safe='').replace('%20', '+')}"


def parse_html(source: str, *, access_meta: bool = False, storage: StorageLinks | None = None) -> HtmlPage:
    """Convert an HTML document (with ``storage``: a Confluence storage-format body, see the module docstring).

    With ``access_meta`` (the folder connector's own pages) a ``citeline-access`` meta is read, and
    ``ValueError`` is raised if it is not JSON or is given twice; without it (HTML from an API source,
    whose access comes from the source) such a meta is ignored, so a page body cannot stop a sync.
    """
    soup = BeautifulSoup(source, "html.parser")
    title = _text(soup.title) if soup.title else None
    access = _access_meta(soup) if access_meta else None
    for tag in soup.find_all(_DROP):
        tag.decompose()
    if storage is not None:
        _storage_to_html(soup, storage)
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
        language = tag.get("data-language")
        fence = "```" + (language if isinstance(language, str) else "")
        yield f"{fence}\n{tag.get_text().strip(chr(10))}\n```"
    elif name == "li":
        inner = list(_blocks(tag))
        if inner:
            yield f"- {inner[0]}"
            yield from inner[1:]
    elif name == "tr":
        cells = [_text(cell) for cell in tag.find_all(["td", "th"], recursive=False)]
        yield " | ".join(cell for cell in cells if cell)
    elif name == "blockquote":  # one quote, its paragraphs separated by an empty quoted line
        yield "\n>\n".join(f"> {block}" for block in _blocks(tag))
    elif name == "hr":
        return
    else:
        yield from _blocks(tag)


# -- Confluence storage format -----------------------------------------------------------------------------

_PANELS = {"info": "Info", "note": "Note", "warning": "Warning", "tip": "Tip", "panel": "Panel", "expand": "Details"}
_CODE = {"code", "noformat"}
_LANGUAGE = re.compile(r"[\w+#.-]{1,30}")


def _storage_to_html(soup: BeautifulSoup, links: StorageLinks) -> None:
    for tag in soup.find_all(["ac:image", "ac:emoticon", "ac:placeholder"]):
        tag.decompose()
    for link in soup.find_all("ac:link"):
        link.replace_with(NavigableString(_link_text(link, links)))
    for macro in reversed(soup.find_all(["ac:structured-macro", "ac:macro"])):  # innermost first
        _macro(soup, macro)
    for task in soup.find_all("ac:task"):
        status = task.find("ac:task-status")
        done = status is not None and status.get_text().strip() == "complete"
        body = task.find("ac:task-body")
        item = soup.new_tag("li")
        item.append(("[x] " if done else "[ ] ") + (body.get_text(" ", strip=True) if body else ""))
        task.replace_with(item)
    for tag in soup.find_all(re.compile(r"^(ac|ri):")):
        if tag.name == "ac:task-list":
            tag.name = "ul"
        elif tag.name.startswith("ri:"):
            tag.decompose()
        else:
            tag.name = "div"  # layouts, rich-text bodies: their content as blocks


def _param(macro: Tag, name: str) -> str:
    for param in macro.find_all(["ac:parameter"], recursive=False):
        if param.get("ac:name") == name:
            return param.get_text().strip()
    return ""


def _macro(soup: BeautifulSoup, macro: Tag) -> None:
    name = str(macro.get("ac:name") or "").lower()
    title = _param(macro, "title")
    language = _param(macro, "language")
    for param in macro.find_all("ac:parameter", recursive=False):
        param.decompose()
    plain = macro.find("ac:plain-text-body", recursive=False)
    if name in _CODE or (plain is not None and macro.find("ac:rich-text-body", recursive=False) is None):
        if plain is None:
            macro.decompose()
            return
        block = soup.new_tag("pre")
        if _LANGUAGE.fullmatch(language):
            block["data-language"] = language
        block.string = plain.get_text()
        if title:
            heading = soup.new_tag("p")
            heading.string = title
            macro.insert_before(heading)
        macro.replace_with(block)
        return
    if name in _PANELS:
        quote_block = soup.new_tag("blockquote")
        label = soup.new_tag("p")
        label.string = f"{_PANELS[name]}: {title}" if title else f"{_PANELS[name]}:"
        quote_block.append(label)
        body = macro.find("ac:rich-text-body", recursive=False)
        for child in list(body.contents if body is not None else []):
            quote_block.append(child.extract())
        macro.replace_with(quote_block)
        return
    macro.name = "div"  # another macro: its body's text (a macro without one, like toc, leaves nothing)


def _link_text(link: Tag, links: StorageLinks) -> str:
    body_tag = link.find(["ac:plain-text-link-body", "ac:link-body"])
    body = " ".join(body_tag.get_text().split()) if body_tag is not None else ""
    page = link.find("ri:page")
    if page is not None:
        title = str(page.get("ri:content-title") or "").strip()
        space = page.get("ri:space-key")
        label = f"{body} ({title})" if body and title and body != title else body or title
        url = links.page_url(title, space if isinstance(space, str) else None)
        return f"[{label}]({url})" if url and label else label
    attachment = link.find("ri:attachment")
    if attachment is not None:
        return body or str(attachment.get("ri:filename") or "")
    target = link.find("ri:url")
    if target is not None and isinstance(value := target.get("ri:value"), str):
        return f"[{body or value}]({value})"
    return body  # a user mention: its account id is no text
