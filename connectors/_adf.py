"""Atlassian Document Format (ADF) to Markdown-ish text (private: not part of the connector contract).

Jira Cloud's REST API v3 returns rich text (issue descriptions, comment bodies, textarea fields) as an
ADF document, a JSON tree (``{"type": "doc", "version": 1, "content": [...]}``) of block nodes
(paragraphs, headings, lists, code blocks, tables, panels, ...) holding inline nodes (text with marks,
hard breaks, mentions, emoji, cards, dates, statuses). :func:`adf_to_text` flattens one into the same
kind of text the HTML converter produces (:mod:`citeline.connectors._html`): ``#`` headings, ``-`` and
``1.`` list items (nested ones indented), fenced code blocks, ``> `` quotes, ``a | b`` table rows, blocks
separated by blank lines. Of the marks only ``link`` (``[text](href)``) and ``code`` (backticks) are
kept; emphasis and colours are noise for search. A node it does not know is read through: its
``content`` (and ``text``) still count, so new node types lose their decoration, never their words.
Media, placeholders and extensions carry no text of their own and are left out.

The text is for chunking and embedding, not for round-tripping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["adf_to_text"]

_INLINE = frozenset({"text", "hardBreak", "mention", "emoji", "inlineCard", "status", "date", "placeholder",
                     "mediaInline", "inlineExtension"})
_SILENT = frozenset({"placeholder", "mediaInline", "inlineExtension", "media", "extension"})


def adf_to_text(doc: Mapping[str, Any]) -> str:
    """The text of an ADF document (or of any ADF node), blocks separated by blank lines."""
    if doc.get("type") in _INLINE:
        return _inline([doc]).strip()
    blocks = _node_blocks(doc) if doc.get("type") != "doc" else _blocks(doc.get("content"))
    return "\n\n".join(blocks).strip()


def _children(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = node.get("content")
    return [c for c in content if isinstance(c, Mapping)] if isinstance(content, Sequence) else []


def _attr(node: Mapping[str, Any], name: str) -> Any:
    attrs = node.get("attrs")
    return attrs.get(name) if isinstance(attrs, Mapping) else None


def _blocks(content: object) -> list[str]:
    """The non-empty text blocks of a list of nodes; runs of inline nodes form one paragraph."""
    out: list[str] = []
    run: list[Mapping[str, Any]] = []
    nodes = [c for c in content if isinstance(c, Mapping)] if isinstance(content, Sequence) else []
    for node in nodes:
        if node.get("type") in _INLINE or (node.get("type") not in _BLOCK and "text" in node):
            run.append(node)
            continue
        if run:
            out.append(_inline(run))
            run = []
        out.extend(_node_blocks(node))
    if run:
        out.append(_inline(run))
    return [block.strip("\n") for block in out if block.strip()]


def _node_blocks(node: Mapping[str, Any]) -> list[str]:
    kind = node.get("type")
    if kind in _SILENT:
        return []
    render = _BLOCK.get(kind) if isinstance(kind, str) else None
    if render is None:  # unknown: read through
        return _blocks(node.get("content"))
    return render(node)


# -- blocks -------------------------------------------------------------------------------------------
def _paragraph(node: Mapping[str, Any]) -> list[str]:
    return [_inline(_children(node))]


def _heading(node: Mapping[str, Any]) -> list[str]:
    level = _attr(node, "level")
    level = level if isinstance(level, int) and 1 <= level <= 6 else 1
    text = " ".join(_inline(_children(node)).split())
    return [f"{'#' * level} {text}"] if text else []


def _code_block(node: Mapping[str, Any]) -> list[str]:
    code = "".join(str(c.get("text") or "") for c in _children(node))
    language = _attr(node, "language")
    fence = f"```{language}" if isinstance(language, str) and language.isprintable() else "```"
    return [f"{fence}\n{code.strip(chr(10))}\n```"] if code.strip() else []


def _list(node: Mapping[str, Any]) -> list[str]:
    ordered = node.get("type") == "orderedList"
    start = _attr(node, "order")
    number = start if ordered and isinstance(start, int) and start >= 0 else 1
    lines: list[str] = []
    for item in _children(node):
        if item.get("type") == "taskItem":
            marker = "- [x] " if _attr(item, "state") == "DONE" else "- [ ] "
        else:
            marker = f"{number}. " if ordered else "- "
        text = "\n".join(_blocks(item.get("content")))
        if not text:
            continue
        first, *rest = text.split("\n")
        lines.append(marker + first)
        lines.extend((" " * len(marker) + line) if line else "" for line in rest)
        number += 1
    return ["\n".join(lines)] if lines else []


def _quote(node: Mapping[str, Any]) -> list[str]:
    text = "\n\n".join(_blocks(node.get("content")))
    return ["\n".join(f"> {line}" if line else ">" for line in text.split("\n"))] if text else []


def _table(node: Mapping[str, Any]) -> list[str]:
    rows = []
    for row in _children(node):
        cells = [" ".join(" ".join(_blocks(cell.get("content"))).split()) for cell in _children(row)]
        if any(cells):
            rows.append(" | ".join(cells))
    return ["\n".join(rows)] if rows else []


def _titled(node: Mapping[str, Any]) -> list[str]:
    """Expands and the like: the title, then the content."""
    title = _attr(node, "title")
    head = [title.strip()] if isinstance(title, str) and title.strip() else []
    return head + _blocks(node.get("content"))


def _card(node: Mapping[str, Any]) -> list[str]:
    url = _attr(node, "url")
    return [url] if isinstance(url, str) and url else []


def _rule(node: Mapping[str, Any]) -> list[str]:
    return ["---"]


_BLOCK = {
    "paragraph": _paragraph,
    "heading": _heading,
    "codeBlock": _code_block,
    "bulletList": _list,
    "orderedList": _list,
    "taskList": _list,
    "decisionList": _list,
    "blockquote": _quote,
    "table": _table,
    "expand": _titled,
    "nestedExpand": _titled,
    "blockCard": _card,
    "embedCard": _card,
    "rule": _rule,
}


# -- inline -------------------------------------------------------------------------------------------
def _inline(nodes: Sequence[Mapping[str, Any]]) -> str:
    return "".join(_inline_node(node) for node in nodes)


def _inline_node(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    if kind == "hardBreak":
        return "\n"
    if kind in _SILENT:
        return ""
    if kind == "mention":
        text = _attr(node, "text")
        return text if isinstance(text, str) and text else "@someone"
    if kind == "emoji":
        text = _attr(node, "text") or _attr(node, "shortName")
        return text if isinstance(text, str) else ""
    if kind == "inlineCard":
        return _card(node)[0] if _card(node) else ""
    if kind == "status":
        text = _attr(node, "text")
        return f"[{text}]" if isinstance(text, str) and text else ""
    if kind == "date":
        return _date(_attr(node, "timestamp"))
    text = node.get("text")
    if isinstance(text, str):
        return _marked(text, node.get("marks"))
    return _inline(_children(node))  # unknown inline node: read through


def _marked(text: str, marks: object) -> str:
    href = None
    code = False
    for mark in marks if isinstance(marks, Sequence) else ():
        if not isinstance(mark, Mapping):
            continue
        if mark.get("type") == "code":
            code = True
        elif mark.get("type") == "link":
            value = _attr(mark, "href")
            href = value if isinstance(value, str) and value else None
    if code and text.strip():
        text = f"`{text}`"
    if href and href != text.strip():
        return f"[{text}]({href})"
    return text


def _date(timestamp: object) -> str:
    """An ADF date: milliseconds since the epoch (a string or a number) as ``YYYY-MM-DD`` (UTC)."""
    try:
        return datetime.fromtimestamp(int(str(timestamp)) / 1000, tz=UTC).strftime("%Y-%m-%d")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
