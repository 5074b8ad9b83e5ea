"""Wikitext to Markdown-ish plain text for the MediaWiki connector (private).

A light converter, not a parser: it keeps what a reader sees in the page's own source (headings as
``#`` lines, list items, table rows as ``a | b``, link labels, preformatted blocks) and drops what only
renders elsewhere (templates, references, categories, files, comments, behaviour switches). Templates
are not expanded; ``render = "parsed"`` in the connector's config asks the wiki for the rendered HTML
instead when that matters.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["wikitext_to_markdown"]

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_CODE = re.compile(r"<(pre|syntaxhighlight|source)\b[^>]*>(.*?)</\1\s*>", re.S | re.I)
_NOWIKI = re.compile(r"<nowiki\s*/>|<nowiki>(.*?)</nowiki\s*>", re.S | re.I)
_DROPPED_TAGS = re.compile(
    r"<(gallery|references|templatedata|timeline|graph|score)\b[^>]*>.*?</\1\s*>|<references\s*/>",
                           re.S | re.I)
_BR = re.compile(r"<br\s*/?>", re.I)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^>]*>")
_TEMPLATE = re.compile(r"\{\{(?:[^{}]|\{(?!\{)|\}(?!\}))*\}\}", re.S)
_PARAMETER = re.compile(r"\{\{\{[^{}]*\}\}\}")
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\s\]]*(?:\s+([^\]]*))?\]")
_QUOTES = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1\s*$")
_LIST = re.compile(r"^([*#:;]+)\s*")
_SWITCH = re.compile(r"__[A-Z]+__")
_DROPPED_LINKS = ("file:", "image:", "media:", "category:")
_CODE_MARK = "\x00code{}\x00"


def wikitext_to_markdown(source: str) -> str:
    """The readable text of a page's wikitext, with Markdown headings, lists and code fences."""
    text = _COMMENT.sub("", source.replace("\r\n", "\n"))
    blocks: list[str] = []

    def keep_code(match: re.Match[str]) -> str:
        blocks.append(match.group(2).strip("\n"))
        return "\n" + _CODE_MARK.format(len(blocks) - 1) + "\n"

    text = _CODE.sub(keep_code, text)
    text = _NOWIKI.sub(lambda m: m.group(1) or "", text)
    text = _DROPPED_TAGS.sub("", _REF.sub("", text))
    text = _BR.sub("\n", text)
    text = _TAG.sub("", text)
    text = _PARAMETER.sub("", text)
    text = _innermost_first(_TEMPLATE, lambda m: "", text)
    text = _innermost_first(_LINK, _link_label, text)
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _QUOTES.sub("", _SWITCH.sub("", text))
    lines = _lines(text.split("\n"))
    out = "\n".join(lines)
    for number, block in enumerate(blocks):
        out = out.replace(_CODE_MARK.format(number), f"```\n{block}\n```")
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _innermost_first(pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str], text: str) -> str:
    """Apply ``pattern`` until nothing matches: nested templates and links inside file captions."""
    for _ in range(20):
        new = pattern.sub(replace, text)
        if new == text:
            break
        text = new
    return text


def _link_label(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    if target.lower().startswith(_DROPPED_LINKS):
        return ""
    if label:
        return label.rsplit("|", 1)[-1].strip()
    return target.lstrip(":")


def _lines(raw: list[str]) -> list[str]:
    """Headings, list items and table rows line by line; other lines as they are."""
    out: list[str] = []
    row: list[str] = []
    for line in raw:
        stripped = line.strip()
        if stripped.startswith("{|"):
            row = []
            continue
        if stripped.startswith(("|}", "|-")):
            if row:
                out.append(" | ".join(row))
            row = []
            continue
        if stripped.startswith("|+"):
            out.append(stripped[2:].strip())
            continue
        if stripped.startswith(("|", "!")) and not stripped.startswith("||"):
            row.extend(_cells(stripped))
            continue
        if row:  # a cell's text on the next lines
            row[-1] = f"{row[-1]} {stripped}".strip() if stripped else row[-1]
            continue
        heading = _HEADING.match(stripped)
        if heading:
            out.extend(["", "#" * len(heading.group(1)) + " " + heading.group(2), ""])
            continue
        if stripped == "----" or re.fullmatch(r"-{4,}", stripped):
            continue
        listed = _LIST.match(stripped)
        if listed:
            body = stripped[listed.end():].strip()
            if body:
                out.append(("- " if listed.group(1)[-1] in "*#;" else "") + body.replace(" : ", ": "))
            continue
        out.append(line.rstrip())
    if row:
        out.append(" | ".join(row))
    return out


def _cells(line: str) -> list[str]:
    """``| a || b`` or ``! a !! b``: the cells' text, attributes (``style="..." |``) dropped."""
    cells = re.split(r"\|\||!!", line[1:])
    out = []
    for cell in cells:
        parts = cell.split("|")
        text = parts[-1] if len(parts) > 1 and "=" in parts[0] else cell
        if text.strip():
            out.append(text.strip())
    return out
