"""Atlassian Document Format (Jira Cloud's rich text) to the text that is chunked and embedded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citeline.connectors._adf import adf_to_text

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "replay" / "jira" / "adf_description.json"


def doc(*content: dict) -> dict:
    return {"type": "doc", "version": 1, "content": list(content)}


def para(*content: dict) -> dict:
    return {"type": "paragraph", "content": list(content)}


def text(value: str, *marks: dict) -> dict:
    return {"type": "text", "text": value, **({"marks": list(marks)} if marks else {})}


def item(*content: dict) -> dict:
    return {"type": "listItem", "content": list(content)}


def test_a_realistic_description():
    converted = adf_to_text(json.loads(FIXTURE.read_text(encoding="utf-8")))
    assert converted == "\n\n".join([
        "## Symptoms",
        "The belt in hall 3 stops around 02:00. Reported by @Sam Vimes ⚠️\n"
        "See the [runbook](https://acme.atlassian.net/wiki/x/AbCd) and set `belt.timeout`.",
        "- Night shift\n  - only on Mondays\n- Status: [BLOCKED]",
        "### Steps",
        "1. Stop the line\n2. Read the log",
        "```bash\njournalctl -u belt --since 01:55\ngrep STOP belt.log\n```",
        "Do not restart during the night shift.",  # a panel: its content
        "> It just stops.",
        "Night | Stops\n2024-05-01 | 3",  # the date node: epoch milliseconds, UTC
        "---",  # the image (mediaSingle) has no text and is left out
        "Vendor notes",
        "https://vendor.example/tickets/981",
        "- [x] Order a sensor\n- [ ] Fit the sensor",
        "Text inside a node type nobody knows yet.",  # an unknown node is read through
    ])


def test_ordered_lists_keep_their_start_and_indent_what_they_hold():
    nested = {"type": "bulletList", "content": [item(para(text("inner")))]}
    ordered = {"type": "orderedList", "attrs": {"order": 3},
               "content": [item(para(text("third")), nested), item(para(text("fourth")))]}
    assert adf_to_text(doc(ordered)) == "3. third\n   - inner\n4. fourth"


def test_a_link_whose_text_is_its_address_is_not_doubled():
    href = "https://status.example"
    link = {"type": "link", "attrs": {"href": href}}
    assert adf_to_text(doc(para(text(href, link)))) == href
    assert adf_to_text(doc(para(text("status", link)))) == f"[status]({href})"


def test_unknown_and_broken_nodes_lose_their_decoration_not_their_words():
    weird = {"type": "sparkle", "content": [text("kept"), {"type": "hardBreak"}, text("too")]}
    assert adf_to_text(doc(para(text("a")), "not a node", weird, {"type": "extension"}, para())) == "a\n\nkept\ntoo"
    assert adf_to_text(doc(para({"type": "mention", "attrs": {"id": "557058:x"}}))) == "@someone"
    assert adf_to_text(doc(para({"type": "date", "attrs": {"timestamp": "soon"}}), para(text("b")))) == "b"


def test_empty_documents_are_empty():
    assert adf_to_text(doc()) == ""
    assert adf_to_text({"type": "doc", "version": 1}) == ""
    assert adf_to_text(doc(para(), {"type": "bulletList", "content": [item(para())]})) == ""
