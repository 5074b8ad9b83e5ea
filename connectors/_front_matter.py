"""Front matter of a text page: the YAML block between ``---`` lines at its top, the metadata values it gives,
and the page's first ``# heading`` (the title when the front matter sets none).

A key given twice in the block (at any level) is an :class:`ItemError` naming it: the page fails closed
rather than being indexed with whichever value YAML keeps.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from citeline.connectors._common import ItemError

__all__ = ["first_heading", "meta_value", "split_front_matter"]

_H1 = re.compile(r"^#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)``; a file without a leading ``---`` line has none."""
    lines = text.split("\n")
    if lines[0].rstrip() != "---":
        return {}, text
    for i in range(1, len(lines)):
        if lines[i].rstrip() in ("---", "..."):
            block, body = "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
            break
    else:
        raise ItemError("front matter opens with --- on line 1 but never closes: add a closing --- line")
    try:
        data = yaml.load(block, Loader=_FrontMatterLoader)  # safe: _FrontMatterLoader is a SafeLoader (below)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" on line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ItemError(
            f"front matter is not valid YAML ({problem}{where}): fix the YAML between the --- lines"
        ) from None
    if data is None:
        return {}, body
    if not isinstance(data, dict):
        raise ItemError(
            f"front matter is a YAML {type(data).__name__}, not a mapping: write key: value lines such as title: ..."
        )
    return data, body


class _FrontMatterLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error.

    PyYAML silently keeps the last value, so ``access:`` written twice (a reviewer sees the first, the
    index applies the second) would decide who can read the page. The page fails closed instead: it is a
    per-document failure naming the key (a previous version, if any, stays as it was).
    """


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 2  # +1 for 1-based, +1 for the opening --- line
        if not isinstance(key, str | int | float | bool):
            continue  # an unhashable key is refused by construct_mapping itself
        if key in seen:
            raise ItemError(f"front matter sets {key!r} twice (lines {seen[key]} and {line}); YAML would silently "
                            "keep only the last, so the page is not indexed: remove one of them")
        seen[key] = line
    return loader.construct_mapping(node, deep=True)


_FrontMatterLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _refuse_duplicate_keys)


def meta_value(value: object) -> str | None:
    if isinstance(value, list | tuple) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list | tuple) or value is None:
        return None
    return str(value)


def first_heading(text: str) -> str | None:
    """The first ATX level-1 heading outside fenced code blocks."""
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := _H1.match(line)):
            return match.group(1).strip()
    return None
