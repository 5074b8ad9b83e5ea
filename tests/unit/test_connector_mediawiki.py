"""The MediaWiki connector's config, cursors and wikitext conversion (no wiki needed; the real wiki's
tests are in tests/integration/test_connector_mediawiki.py)."""

from __future__ import annotations

import pytest

from citeline.connectors._wikitext import wikitext_to_markdown
from citeline.connectors.mediawiki import MediaWikiConnector
from citeline.domain import Access
from citeline.errors import ConfigError, ConnectorError

pytestmark = pytest.mark.unit

BASE = {"base_url": "https://wiki.example.com/w"}


def test_config_is_typed_and_the_password_never_shows(monkeypatch):
    monkeypatch.setenv("WIKI_BOT_PASSWORD", "s3cretbotpassword0123456789abcdef")
    config = MediaWikiConnector.Config(**BASE, username="Bot@citeline", password="env:WIKI_BOT_PASSWORD",
                                       namespaces=["0", "3000"], namespace_access={"3000": ["staff"]})
    assert config.namespaces == (0, 3000) and config.namespace_access == {3000: ("staff",)}
    assert "s3cret" not in repr(config) and config.password.get_secret_value().startswith("s3cret")


@pytest.mark.parametrize(("values", "message"), [
    ({"username": "Bot@citeline"}, "set both username"),
    ({"password": "x" * 32}, "set both username"),
    ({"namespaces": [0, 0]}, "distinct"),
    ({"namespaces": []}, "at least 1"),
    ({"namespace_access": {3000: ["staff"]}}, r"namespaces \[3000\] that are not in namespaces"),
    ({"restriction_access": {"sysop": ["admins"]}}, "not 'type=level'"),
    ({"base_url": "wiki.example.com"}, "not an http"),
])
def test_config_refuses_what_cannot_work(values, message):
    with pytest.raises(ConfigError, match=message):
        MediaWikiConnector({**BASE, **values}, Access.private())


def test_access_entries_are_checked_when_built():
    with pytest.raises(ConfigError, match="namespace_access"):
        MediaWikiConnector({**BASE, "namespaces": [0, 4], "namespace_access": {4: ["two words"]}})


@pytest.mark.parametrize("cursor", [
    {"line": 3},
    {"phase": "changes", "log": ["yesterday", 1], "rc": ["2024-01-01T00:00:00Z", 1]},
    {"phase": "full", "since": "2024-01-01T00:00:00Z", "ns": 14},
])
def test_a_foreign_cursor_is_refused_before_any_request(cursor):
    connector = MediaWikiConnector({**BASE, "base_url": "http://127.0.0.1:9"}, Access.private())
    with pytest.raises(ConnectorError, match="reset the source's sync state"):
        next(connector.sync(cursor))


def test_wikitext_becomes_markdown():
    source = (
        "<strong>Intro</strong> see [https://example.com the site] and [[Page One|page one]] or [[Two]].\n"
        "{{Infobox|a={{nested|b}}|c=[[d]]}}<!-- hidden -->\n"
        "== Section ==\n"
        "* '''bold''' item<ref>a citation</ref>\n"
        "# numbered [[File:X.png|thumb|a [[caption]]]][[Category:Things]]\n"
        "{| class=\"wikitable\"\n! Name !! Owner\n|-\n| Payables || style=\"x\" | Sam\n|}\n"
        "<pre>\n{{kept as is}}\n</pre>\n"
        "=== Deeper ===\n__TOC__\nText<br/>more."
    )
    assert wikitext_to_markdown(source) == (
        "Intro see the site and page one or Two.\n\n"
        "## Section\n\n"
        "- bold item\n"
        "- numbered\n"
        "Name | Owner\n"
        "Payables | Sam\n\n"
        "```\n{{kept as is}}\n```\n\n"
        "### Deeper\n\n"
        "Text\nmore."
    )


def test_wikitext_nesting_is_parsed_not_guessed():
    """Templates in templates, links in table cells and in references, a caption, code with its language."""
    source = (
        "{{Infobox team|name={{lang|en|Payables}}|lead=[[User:Sam|Sam]]}}\n"
        "The '''payables''' team<ref name=\"a\">See [[Finance handbook|the handbook]] and {{cite web|url=https://x}}"
        "</ref> pays invoices.\n"
        "{| class=\"wikitable\"\n|+ Approval limits\n! Role !! Limit\n|-\n"
        "| [[Team lead|Lead]] || {{currency|5000|EUR}} 5,000 EUR\n|-\n"
        "| style=\"background:#eee\" | [[Director]] || [https://finance.example/limits no limit]\n|}\n"
        "* Level one\n** Level two with [[Page|a link]]\n; Term : Definition\n"
        "<syntaxhighlight lang=\"python\">\nprint({\"a\": 1})  # {{not a template}}\n</syntaxhighlight>\n"
        "<nowiki>[[not a link]]</nowiki> &amp; more\n"
        "[[File:Chart.png|thumb|A chart of [[Payables|payables]]]][[Category:Finance]]"
        "[[:Category:Finance|the finance category]] {{{param|default}}}\n"
    )
    assert wikitext_to_markdown(source) == (
        "The payables team pays invoices.\n"
        "Approval limits\n"
        "Role | Limit\n"
        "Lead | 5,000 EUR\n"
        "Director | no limit\n"
        "- Level one\n"
        "- Level two with a link\n"
        "- Term: Definition\n\n"
        "```python\nprint({\"a\": 1})  # {{not a template}}\n```\n\n"
        "[[not a link]] & more\n"
        "the finance category"
    )


def test_wikitext_nested_beyond_any_real_page_still_converts():
    deep = "{{a|" * 300 + "x" + "}}" * 300 + " after [[link|label]]"
    assert wikitext_to_markdown(deep).endswith("after label")
    assert wikitext_to_markdown("[[" * 5000 + "tail").endswith("tail")


@pytest.mark.parametrize("dirt", ["\x00", "\x02", "\x00code0\x00", "\x02*"])
def test_control_characters_in_a_page_cannot_pose_as_the_converters_markers(dirt: str) -> None:
    source = f"The kiln must{dirt} stay under 1290 degrees now.\n* one\n<syntaxhighlight lang=\"bash\">ls</syntaxhighlight>"
    out = wikitext_to_markdown(source)
    assert "stay under 1290 degrees now." in out and "- one" in out and "```bash\nls\n```" in out, out
    assert not any(ord(c) < 32 and c not in "\n\t" for c in out)
