"""Wikitext to Markdown-ish plain text for the MediaWiki connector (private), parsed by ``mwparserfromhell``.

It keeps what a reader sees in the page's own source (headings as ``#`` lines, list items, table rows as
``a | b`` with a caption line, link labels, preformatted and ``syntaxhighlight`` blocks as fenced code with
their language) and drops what only renders elsewhere (templates, references, categories, files,
comments, behaviour switches). The parser gives nesting its real shape: a template inside a template, a
link inside a table cell or a file caption, a reference holding links. Templates are not expanded;
``render = "parsed"`` in the connector's config asks the wiki for the rendered HTML instead when that matters.
"""

from __future__ import annotations

import re

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Node,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

__all__ = ["wikitext_to_markdown"]

_DROPPED_TAGS = {"ref", "references", "gallery", "templatedata", "timeline", "graph", "score", "math", "categorytree"}
_CODE_TAGS = {"pre", "syntaxhighlight", "source"}
_DROPPED_LINKS = ("file:", "image:", "media:", "category:")
_ITEM = "\x02"  # before a list marker the parser found (a heading's # is not one)
_LIST = re.compile(r"^((?:\x02[*#:;])+)\s*")
_SWITCH = re.compile(r"__[A-Z]+__")
_LANGUAGE = re.compile(r"[\w+#.-]{1,30}")
_CODE_MARK = "\x00code{}\x00"
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def wikitext_to_markdown(source: str) -> str:
    """The readable text of a page's wikitext, with Markdown headings, lists and code fences."""
    blocks: list[str] = []
    # C0 controls in the page (a NUL from a dirty source) would collide with the markers used below (\x00, \x02);
    # ingest would drop them anyway (citeline.ingest.cleaning)
    source = _CONTROLS.sub("", source.replace("\r\n", "\n"))
    parsed = mwparserfromhell.parse(source)
    try:
        text = _render(parsed, blocks)
    except RecursionError:  # nesting deeper than the parser's own limit: the page's text without markup
        text = parsed.strip_code()
    out = "\n".join(_lines(_SWITCH.sub("", text).split("\n")))
    for number, block in enumerate(blocks):
        out = out.replace(_CODE_MARK.format(number), block)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _render(code: Wikicode, blocks: list[str]) -> str:
    return "".join(_node(node, blocks) for node in code.nodes)


def _node(node: Node, blocks: list[str]) -> str:
    if isinstance(node, Text):
        return str(node.value)
    if isinstance(node, Comment | Template | Argument):
        return ""
    if isinstance(node, HTMLEntity):
        return str(node.normalize())
    if isinstance(node, Wikilink):
        target = str(node.title).strip()
        if target.lower().lstrip(":").startswith(_DROPPED_LINKS) and not target.startswith(":"):
            return ""
        label = _render(node.text, blocks).strip() if node.text is not None else ""
        return label or target.lstrip(":")
    if isinstance(node, ExternalLink):
        if not node.brackets:
            return str(node.url)
        return _render(node.title, blocks).strip() if node.title is not None else ""
    if isinstance(node, Heading):
        return f"\n\n{'#' * node.level} {_render(node.title, blocks).strip()}\n\n"
    if isinstance(node, Tag):
        return _tag(node, blocks)
    return ""


def _tag(tag: Tag, blocks: list[str]) -> str:
    name = str(tag.tag).strip().lower()
    markup = tag.wiki_markup
    if name in _DROPPED_TAGS:
        return ""
    if name in _CODE_TAGS:
        language = str(tag.get("lang").value).strip() if tag.has("lang") else ""
        fence = "```" + (language if _LANGUAGE.fullmatch(language) else "")
        blocks.append(f"{fence}\n{str(tag.contents or '').strip(chr(10))}\n```")
        return "\n" + _CODE_MARK.format(len(blocks) - 1) + "\n"
    if name == "nowiki":
        return str(tag.contents or "")
    if name == "br":
        return "\n"
    if name == "table":
        return _table(tag, blocks)
    if markup in ("*", "#", ":", ";"):
        return _ITEM + str(markup)  # the list marker; the item's text follows it on the line
    if markup == "----" or name == "hr":
        return ""
    return _render(tag.contents, blocks) if tag.contents is not None else ""


def _table(table: Tag, blocks: list[str]) -> str:
    """Rows as ``a | b`` lines (cells' attributes dropped), the caption as a line of its own."""
    lines: list[str] = []
    row: list[str] = []
    for node in table.contents.nodes if table.contents is not None else []:
        if not isinstance(node, Tag):
            continue
        if str(node).startswith("|+"):  # the caption (the parser reads it as a cell whose text starts with +)
            lines.append(_cell(node, blocks).removeprefix("+").strip())
        elif str(node.tag).lower() == "tr":
            if row:
                lines.append(" | ".join(row))
            row = [text for cell in node.contents.nodes if isinstance(cell, Tag) and (text := _cell(cell, blocks))]
            if row:
                lines.append(" | ".join(row))
            row = []
        elif text := _cell(node, blocks):  # cells before the first |- form the first row
            row.append(text)
    if row:
        lines.append(" | ".join(row))
    return "\n".join(lines)


def _cell(cell: Tag, blocks: list[str]) -> str:
    return " ".join(_render(cell.contents, blocks).split()) if cell.contents is not None else ""


def _lines(raw: list[str]) -> list[str]:
    """List items line by line (``*``/``#``/``;`` items as ``- ``, ``:`` indents as text); rules dropped."""
    out: list[str] = []
    for line in raw:
        stripped = line.strip()
        if re.fullmatch(r"-{4,}", stripped):
            continue
        listed = _LIST.match(stripped)
        if listed:
            body = re.sub(r"\s*\x02:\s*", ": ", stripped[listed.end():]).replace(_ITEM, "").strip()
            if body:
                out.append(("- " if listed.group(1)[-1] in "*#;" else "") + body)
            continue
        out.append(line.replace(_ITEM, "").rstrip())
    return out
