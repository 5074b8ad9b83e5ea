"""Dirty documents must not stop a source (issue 13, items 1, 10a, 10b).

A NUL byte or a lone surrogate in a document's text used to crash the whole sync, at the same place on
every rerun, so deletions and access revocations in that source stopped being applied. Every connector's
changes now pass one cleaning boundary (:mod:`citeline.ingest.cleaning`), and a document the database
still refuses is bisected out of its batch and recorded as a per-document failure.

Real embedded PostgreSQL, the real embedder, the real sync runner; each connector reads its own fixture
format (files on disk, or the fake APIs in ``tests/support/apis/`` over loopback HTTP, in their wire
format; MediaWiki through a proxy in front of a real MediaWiki).
"""

from __future__ import annotations

import json
import random
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from citeline.connectors.catalog import CatalogConnector
from citeline.connectors.confluence import ConfluenceConnector
from citeline.connectors.folder import FolderConnector
from citeline.connectors.github import GitHubIssuesConnector
from citeline.connectors.jira import JiraConnector
from citeline.connectors.mediawiki import MediaWikiConnector
from citeline.connectors.tickets import TicketsConnector
from citeline.connectors.zendesk import ZendeskConnector
from citeline.contracts.connector import Connector, Failure
from citeline.domain import Access, ContentType, Document
from citeline.ingest.chunking import StructuredChunker
from citeline.ingest.sync import SyncRunner
from citeline.testing.connectors import run_sync
from tests.support.apis.confluence import FakeConfluence
from tests.support.apis.github import TOKEN as GITHUB_TOKEN
from tests.support.apis.github import GitHubApi
from tests.support.apis.jira import FakeJira
from tests.support.apis.zendesk import EMAIL, TOKEN, ZendeskApi
from tests.support.connectors import ListConnector, doc
from tests.support.mediawiki import MediaWiki, MediaWikiProxy, start_mediawiki
from tests.support.replay import ReplayServer, Reply, Request

pytestmark = [pytest.mark.security, pytest.mark.integration]

BAD = {"nul": "\x00", "surrogate": "\ud800"}


def _rows(db, sql: str, params: tuple = ()) -> list[tuple]:
    with db.writer() as conn:
        return conn.execute(sql, params).fetchall()


def _stored(db) -> dict[str, str]:
    """external id → title + all chunk texts (what a reader could be shown)."""
    rows = _rows(db, "SELECT d.external_id, d.title || ' ' || coalesce(string_agg(c.text, ' ' ORDER BY c.ordinal), '')"
                     " FROM documents d LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id")
    return dict(rows)


def _failures(db) -> list[tuple[str, str]]:
    return _rows(db, "SELECT external_id, reason FROM sync_failures ORDER BY id")


def _clean(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)


# -- the boundary, driven by an in-memory connector ------------------------------------------------

@pytest.mark.parametrize("bad", sorted(BAD))
def test_dirty_text_is_cleaned_and_the_source_keeps_moving(db, embedder, chunker, bad):
    ch = BAD[bad]
    runner = SyncRunner(db, embedder, chunker, batch_size=4)
    docs = [doc(f"d{i}", f"# Page {i}\n\nPlain page number {i}.") for i in range(6)]
    assert runner.run("wiki", "list", ListConnector(docs)).status == "succeeded"
    dirty = Document("d2", f"Kiln{ch} limits", f"# Kiln{ch}\n\nThe kiln{ch} must stay under 1280 degrees.\x01\x1f",
                     Access.everyone(), url=f"https://example.test/d2{ch}", metadata={f"k{ch}": f"v{ch}", "n": "1"})
    changed = [d for d in docs if d.external_id != "d4"]  # d4 deleted at the source in the same run
    changed[2] = dirty
    report = runner.run("wiki", "list", ListConnector(changed))
    assert report.status == "succeeded" and report.failed == 0, report.failures
    assert report.deleted == 1 and report.updated == 1
    stored = _stored(db)
    assert sorted(stored) == ["d0", "d1", "d2", "d3", "d5"]
    assert _clean(stored["d2"]) and "must stay under 1280 degrees." in stored["d2"]
    (title, url, meta), = _rows(db, "SELECT title, url, metadata FROM documents WHERE external_id = 'd2'")
    assert _clean(title + url + json.dumps(meta, ensure_ascii=False)) and title.startswith("Kiln")
    assert meta["n"] == "1"
    again = runner.run("wiki", "list", ListConnector(changed))  # a rerun is clean: nothing to redo, nothing failed
    assert (again.status, again.failed, again.added, again.updated, again.unchanged) == ("succeeded", 0, 0, 0, 5)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_an_id_that_cannot_be_stored_is_a_per_document_failure(db, embedder, chunker, bad):
    ch = BAD[bad]
    runner = SyncRunner(db, embedder, chunker, batch_size=4)
    docs = [doc(f"d{i}", f"# Page {i}\n\nPlain page number {i}.") for i in range(5)]
    runner.run("wiki", "list", ListConnector(docs))
    docs = [*docs[:3], doc(f"bad{ch}id", "# Bad\n\nA page whose id is broken."), docs[4]]  # d3 deleted
    report = runner.run("wiki", "list", ListConnector(docs, deleted=[f"gone{ch}"]))
    assert report.status == "succeeded" and report.deleted == 1
    assert sorted(_stored(db)) == ["d0", "d1", "d2", "d4"]
    escaped = "bad\\x00id" if bad == "nul" else "bad\\ud800id"
    assert [(ext, "cannot be stored" in reason) for ext, reason in _failures(db)] == [(escaped, True)]


def test_an_access_name_that_cannot_be_stored_is_refused_not_rewritten(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker)
    docs = [doc("a", "# A\n\nAlpha."), doc("b", "# B\n\nBeta.", access=Access(groups=("staff\udcff",)))]
    report = runner.run("wiki", "list", ListConnector(docs))
    assert report.status == "succeeded" and report.added == 1
    assert sorted(_stored(db)) == ["a"]
    [(ext, reason)] = _failures(db)
    assert ext == "b" and "staff\\udcff" in reason and "access" in reason


def _random_word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


@pytest.mark.parametrize("refused", ["id too long for its index", "title too long for the lexical index"])
def test_a_document_the_database_refuses_is_bisected_out_of_its_batch(db, embedder, chunker, refused):
    """Clean text the database still refuses: an id over the unique index's row size (refused by the
    documents insert), or a title whose words overflow a tsvector (refused by the chunks' batched insert)."""
    rng = random.Random(13)
    runner = SyncRunner(db, embedder, chunker, batch_size=64)
    docs = [doc(f"d{i}", f"# Page {i}\n\nPlain page number {i}.") for i in range(9)]
    runner.run("wiki", "list", ListConnector(docs, listing=False))
    if refused.startswith("id"):
        bad_id = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(9000))  # incompressible
        bad = doc(bad_id, "# Huge\n\nA page whose id is too long.")
    else:
        bad_id = "d5"  # an existing page, changed into one the database refuses: its old version stays
        title = " ".join(_random_word(rng, 12) for _ in range(110_000))
        bad = doc(bad_id, "# Page 5\n\nPage five, rewritten.", title=title)
    changed = [*docs[:5], bad, *docs[6:], doc("d9", "# Page 9\n\nA new page.")]
    changed[1] = doc("d1", "# Page 1\n\nPage one, rewritten.")
    connector = ListConnector(changed, deleted=["d5" if bad_id != "d5" else "d7"], listing=False, every=100)
    report = runner.run("wiki", "list", connector)
    assert report.status == "succeeded"
    assert (report.added, report.updated, report.deleted, report.failed) == (1, 1, 1, 1)
    stored = _stored(db)
    assert sorted(stored) == sorted({f"d{i}" for i in range(10)} - {"d5" if bad_id != "d5" else "d7"})
    assert "rewritten" in stored["d1"]
    if bad_id == "d5":
        assert stored["d5"] == "d5 # Page 5\n\nPlain page number 5."  # the previous version, whole
    [(ext, reason)] = _failures(db)
    assert ext.startswith(bad_id[:100]) and len(ext) < 1100 and "database refused this document" in reason
    assert "SQLSTATE 54000" in reason
    # the batch's checkpoint committed with it: the source's cursor is the final one
    assert _rows(db, "SELECT cursor FROM sources WHERE name = 'wiki'") == [({},)]


# -- every connector, with its own fixture format ----------------------------------------------------

@dataclass
class Scenario:
    make: Callable[[], Connector]
    dirty: Callable[[str], None]  # plants the character into one document (title and text where it can)
    delete: Callable[[], None]  # deletes another document at the source
    dirty_id: str
    deleted_id: str
    words: str  # words of the dirty document that must survive cleaning


def _folder(tmp: Path, ch: str) -> Scenario:
    root = tmp / "wiki"
    root.mkdir()
    (root / "kiln.md").write_text("# Kiln limits\n\nThe kiln must stay under 1280 degrees.\n")
    (root / "parking.md").write_text("# Parking\n\nBicycles go in the basement rack.\n")
    (root / "canteen.md").write_text("# Canteen\n\nLunch is at noon.\n")

    def dirty(ch: str) -> None:
        if ch == "\x00":
            (root / "kiln.md").write_text(f"# Kiln{ch} limits\n\nThe kiln{ch} must stay under 1280 degrees.\n")
        else:  # a file's text that is not UTF-8 is refused by the connector; a file name reaches Python as a
            # lone surrogate (os.fsdecode): that document is refused, the rest goes on
            (root / "bad\udcff.md").write_bytes(b"# Bad name\n\nA page with a name that is not UTF-8.\n")
    return Scenario(lambda: FolderConnector({"path": root}, Access.everyone()), dirty,
                    (root / "parking.md").unlink, "kiln.md", "parking.md", "must stay under 1280 degrees")


def _tickets(tmp: Path, ch: str) -> Scenario:
    path = tmp / "tickets.jsonl"
    rows = [{"id": 1, "subject": "Kiln overheats", "body": "The kiln must stay under 1280 degrees.",
             "group": "support", "updated_at": "2025-01-01T00:00:00Z"},
            {"id": 2, "subject": "Parking", "body": "The bicycle rack is full.", "group": "support",
             "updated_at": "2025-01-02T00:00:00Z"},
            {"id": 3, "subject": "Canteen", "body": "Lunch is late.", "group": "support",
             "updated_at": "2025-01-03T00:00:00Z"}]
    state = {"rows": rows}

    def write() -> None:  # json.dumps writes "\u0000" and "\ud800" as JSON escapes, as an export would
        path.write_text("".join(json.dumps(r) + "\n" for r in state["rows"]))

    def dirty(ch: str) -> None:
        state["rows"] = [{**rows[0], "subject": f"Kiln{ch} overheats", "body": f"The kiln{ch} must stay under 1280 "
                          "degrees."}, *state["rows"][1:]]
        write()

    def delete() -> None:
        state["rows"] = [r for r in state["rows"] if r["id"] != 2]
        write()
    write()
    return Scenario(lambda: TicketsConnector({"path": path}, Access.everyone()), dirty, delete, "1", "2",
                    "must stay under 1280 degrees")


def _catalog(tmp: Path, ch: str) -> Scenario:
    """CSV for NUL (a CSV file that is not UTF-8 is refused whole); JSON Lines for the surrogate (a JSON escape)."""
    path = tmp / ("catalog.csv" if ch == "\x00" else "catalog.jsonl")
    rows = {"K-1": ("Kiln", "The kiln must stay under 1280 degrees"), "P-1": ("Rack", "Bicycle rack"),
            "C-1": ("Canteen", "Lunch at noon")}

    def write() -> None:
        if path.suffix == ".csv":
            path.write_text("sku,name,description\n" + "".join(f"{k},{n},{d}\n" for k, (n, d) in rows.items()))
        else:
            path.write_text("".join(json.dumps({"sku": k, "name": n, "description": d}) + "\n"
                                    for k, (n, d) in rows.items()))

    def dirty(ch: str) -> None:
        rows["K-1"] = (f"Kiln{ch}", f"The kiln{ch} must stay under 1280 degrees")
        write()

    def delete() -> None:
        del rows["P-1"]
        write()
    write()
    return Scenario(lambda: CatalogConnector({"path": path, "id_column": "sku", "title_column": "name",
                                              "text_columns": ["description"]}, Access.everyone()),
                    dirty, delete, "K-1", "P-1", "must stay under 1280 degrees")


def _confluence(stack: list, ch: str) -> Scenario:
    fake = FakeConfluence()
    fake.add_space("ENG")
    kiln = fake.add_page("ENG", "Kiln limits", "<p>The kiln must stay under 1280 degrees.</p>")
    parking = fake.add_page("ENG", "Parking", "<p>Bicycles go in the basement rack.</p>")
    fake.add_page("ENG", "Canteen", "<p>Lunch is at noon.</p>")
    server = _serve(stack, fake)
    config = ConfluenceConnector.Config(base_url=f"{server.url}/wiki", email="bot@acme.example", token="good-token",
                                        spaces=["ENG"], space_access={"ENG": ["eng"]}, max_retries=1, backoff_s=0.01)
    return Scenario(lambda: ConfluenceConnector(config, Access.private()),
                    lambda ch: fake.edit(kiln, f"<p>The kiln{ch} must stay under 1280 degrees.</p>",
                                         f"Kiln{ch} limits"),
                    lambda: fake.trash(parking), kiln, parking, "must stay under 1280 degrees")


def _jira(stack: list, ch: str) -> Scenario:
    fake = FakeJira()
    fake.add_project("OPS")
    kiln = fake.add_issue("OPS", "Kiln overheats", "The kiln must stay under 1280 degrees.")
    parking = fake.add_issue("OPS", "Bicycle rack full", "The basement rack has no free spaces.")
    fake.add_issue("OPS", "Canteen", "Lunch is late.")
    server = _serve(stack, fake)
    config = JiraConnector.Config(base_url=server.url, email="bot@acme.example", token="good-token", projects=["OPS"],
                                  project_access={"OPS": ["ops"]}, max_retries=1, backoff_s=0.01)
    return Scenario(lambda: JiraConnector(config, Access.private()),
                    lambda ch: fake.edit(kiln, summary=f"Kiln{ch} overheats",
                                         description=f"The kiln{ch} must stay under 1280 degrees."),
                    lambda: fake.delete(parking), kiln, parking, "must stay under 1280 degrees")


def _zendesk(stack: list, ch: str) -> Scenario:
    api = ZendeskApi()
    api.add_user(9001, "Dana Requester", "dana@customer.example")
    api.groups.update({8001: "Warehouse"})
    api.add_ticket(4101, "Kiln overheats", (9001, "The kiln must stay under 1280 degrees.", True), group_id=8001)
    api.add_ticket(4102, "Parking", (9001, "The bicycle rack is full.", True), group_id=8001)
    api.add_ticket(4103, "Canteen", (9001, "Lunch is late.", True), group_id=8001)
    server = _serve(stack, api)
    config = ZendeskConnector.Config(base_url=server.url, email=EMAIL, api_token=TOKEN, page_size=2)

    def dirty(ch: str) -> None:
        api.update_ticket(4101, subject=f"Kiln{ch} overheats")
        api.add_comment(4101, 9001, f"The kiln{ch} is at 1290 now{ch}.")
    return Scenario(lambda: ZendeskConnector(config, Access.private()), dirty,
                    lambda: api.delete_ticket(4102), "4101", "4102", "is at 1290 now")


def _github(stack: list, ch: str) -> Scenario:
    api = GitHubApi()
    api.add_repo("acme/warehouse")
    api.add_issue("acme/warehouse", 7, "Kiln overheats", "The kiln must stay under 1280 degrees.")
    api.add_issue("acme/warehouse", 8, "Parking", "The bicycle rack is full.")
    api.add_issue("acme/warehouse", 9, "Canteen", "Lunch is late.")
    server = _serve(stack, api)
    config = GitHubIssuesConnector.Config(base_url=server.url, token=GITHUB_TOKEN, repositories=["acme/warehouse"],
                                          page_size=2)

    def dirty(ch: str) -> None:
        api.update_issue("acme/warehouse", 7, title=f"Kiln{ch} overheats")
        api.add_comment("acme/warehouse", 7, "dana", f"The kiln{ch} is at 1290 now{ch}.")
    # ids are the connector's own (repository and number): found by title after the first sync
    return Scenario(lambda: GitHubIssuesConnector(config, Access.private()), dirty,
                    lambda: api.delete_issue("acme/warehouse", 8), "", "", "is at 1290 now")


def _serve(stack: list, api) -> ReplayServer:
    server = ReplayServer(api)
    stack.append(server.__enter__())
    return server


@pytest.fixture
def servers() -> Iterator[list]:
    stack: list = []
    try:
        yield stack
    finally:
        for server in reversed(stack):
            server.__exit__(None, None, None)


SCENARIOS = {"folder": _folder, "tickets": _tickets, "catalog": _catalog, "confluence": _confluence,
             "jira": _jira, "zendesk": _zendesk, "github": _github}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_each_connector_keeps_syncing_past_a_dirty_document(db, embedder, chunker, tmp_path, servers, kind, bad):
    scenario = SCENARIOS[kind](tmp_path if kind in ("folder", "tickets", "catalog") else servers, BAD[bad])
    runner = SyncRunner(db, embedder, chunker, batch_size=2)
    first = runner.run(kind, kind, scenario.make())
    assert first.status == "succeeded" and first.failed == 0, first.failures
    before = _stored(db)
    dirty_id = scenario.dirty_id or next(k for k, v in before.items() if "Kiln" in v)
    deleted_id = scenario.deleted_id or next(k for k, v in before.items() if "Parking" in v)
    scenario.dirty(BAD[bad])
    scenario.delete()

    report = runner.run(kind, kind, scenario.make())
    assert report.status == "succeeded", report.failures
    stored = _stored(db)
    assert deleted_id not in stored  # the deletion in the same source was applied
    assert set(before) - {deleted_id} <= set(stored)
    assert all(_clean(text) for text in stored.values())
    assert scenario.words in stored[dirty_id], stored[dirty_id]  # stored cleaned, not skipped
    assert "Kiln" in stored[dirty_id].split("#")[0], stored[dirty_id]  # the title, cleaned
    refused_name = kind == "folder" and bad == "surrogate"
    assert [ext for ext, _ in _failures(db)] == (["bad\\udcff.md"] if refused_name else []), _failures(db)

    again = runner.run(kind, kind, scenario.make())  # the rerun is clean: nothing crashes, nothing is redone
    assert again.status == "succeeded" and (again.added, again.updated) == (0, 0)
    assert again.failed == (1 if refused_name else 0)
    assert _stored(db) == stored


# -- 10a: chunks are bounded by characters too -------------------------------------------------------

def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("kind", [ContentType.MARKDOWN, ContentType.PLAIN, ContentType.RECORD])
def test_a_huge_single_token_line_is_split_into_bounded_chunks_with_exact_spans(kind):
    settings = StructuredChunker.Config(chunk_tokens=200, overlap_tokens=20)
    chunker = StructuredChunker(settings, tokenize=_words)  # one whitespace-free line is one token
    token = "".join(random.Random(7).choice("abcdef0123456789") for _ in range(1_000_000))
    text = f"# Dump\n\nBefore the blob.\n\n{token}\n\nAfter the blob, a normal sentence."
    chunks = chunker.chunk(Document("dump", "Dump", text, content_type=kind))
    assert settings.max_chars is None and settings.char_budget == 3200
    assert max(len(c.text) for c in chunks) <= settings.char_budget
    assert len(chunks) >= len(token) // settings.char_budget
    for c in chunks:  # every chunk still points at the exact text it came from
        assert c.span_start is not None and text[c.span_start:c.span_end] == c.text
    start = text.index(token)
    covered = set()
    for c in chunks:
        covered.update(range(max(c.span_start, start), min(c.span_end, start + len(token))))
    assert len(covered) == len(token)  # nothing of the blob was lost
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_normal_prose_is_not_cut_by_the_character_bound(chunker):
    """With the default bound the real chunker's chunks of ordinary text are unchanged by it."""
    body = " ".join(f"Sentence {i} explains the warehouse robot calibration procedure in detail." for i in range(80))
    chunks = chunker.chunk(Document("p", "Prose", f"# Prose\n\n{body}"))
    assert len(chunks) > 2 and all(c.text.rstrip().endswith(".") for c in chunks)


def test_max_chars_is_configurable():
    chunker = StructuredChunker(StructuredChunker.Config(chunk_tokens=200, overlap_tokens=20, max_chars=500),
                                tokenize=_words)
    chunks = chunker.chunk(Document("x", "X", "word " * 10 + "y" * 2000, content_type=ContentType.PLAIN))
    assert max(len(c.text) for c in chunks) <= 500 and "".join(c.text for c in chunks).endswith("y" * 100)
    with pytest.raises(ValueError, match="max_chars"):
        StructuredChunker.Config(max_chars=10)


# -- 10b: a key given twice in front matter fails closed ---------------------------------------------

DUPLICATES = {
    "access": "---\naccess: {groups: [hr]}\ntitle: Salaries\naccess: {public: true}\n---\n"
              "# Salaries\n\nBand 4 pays well.\n",
    "nested": "---\naccess:\n  groups: [hr]\n  groups: [everyone]\n---\n# Salaries\n\nBand 4 pays well.\n",
    "title": "---\ntitle: One\ntitle: Two\n---\nBand 4 pays well.\n",
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_a_duplicated_front_matter_key_is_a_failure_naming_file_and_key(db, embedder, chunker, tmp_path, case):
    root = tmp_path / "wiki"
    root.mkdir()
    (root / "salaries.md").write_text(DUPLICATES[case])
    (root / "other.md").write_text("# Other\n\nLunch is at noon.\n")
    report = SyncRunner(db, embedder, chunker).run("wiki", "folder", FolderConnector({"path": root}, Access.private()))
    assert report.status == "succeeded"
    assert sorted(_stored(db)) == ["other.md"]  # not stored with either value: fail closed
    [(ext, reason)] = _failures(db)
    key = "groups" if case == "nested" else case
    assert ext == "salaries.md" and reason.startswith("salaries.md: ") and f"{key!r} twice" in reason, reason


@pytest.mark.parametrize("html", [
    '<meta name="citeline-access" content=\'{"groups": ["hr"], "public": false, "public": true}\'>',
    '<meta name="citeline-access" content=\'{"groups": ["hr"]}\'>'
    '<meta name="citeline-access" content=\'{"public": true}\'>',
])
def test_html_access_given_twice_fails_closed(tmp_path, html):
    (tmp_path / "pay.html").write_text(f"<html><head>{html}<title>Pay</title></head><body><p>Band 4.</p></body></html>")
    [change] = [c for c in run_sync(FolderConnector({"path": tmp_path}, Access.private())) if not hasattr(c, "cursor")]
    assert isinstance(change, Failure) and change.external_id == "pay.html" and "twice" in change.reason, change


# -- MediaWiki: a real wiki, with the dirty character planted on the wire --------------------------

class _DirtyWiki(MediaWikiProxy):
    """A proxy in front of the real wiki that writes ``escape`` (a JSON escape such as ``\\u0000``) into its
    answers wherever ``must stay under`` occurs, as a broken extension or proxy might: MediaWiki itself
    strips control characters from edits, and a lone surrogate cannot be sent to it as UTF-8."""

    escape = b""

    def handle(self, request: Request) -> Reply:
        reply = super().handle(request)
        if self.escape and isinstance(reply.body, bytes):
            body = reply.body.replace(b"must stay under", b"must" + self.escape + b" stay under")
            reply = Reply(reply.status, body, reply.headers)
        return reply


@pytest.fixture
def wiki() -> Iterator[MediaWiki]:
    wiki = start_mediawiki(Path(tempfile.mkdtemp(prefix="citeline-mediawiki-")))
    try:
        yield wiki
    finally:
        wiki.stop()
        shutil.rmtree(wiki.root, ignore_errors=True)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_mediawiki_keeps_syncing_past_a_dirty_page(db, embedder, chunker, wiki, bad):
    with wiki.admin() as admin:
        admin.edit("Kiln limits", "The kiln must stay under 1280 degrees.")
        admin.edit("Parking", "Bicycles go in the basement rack.")
        admin.edit("Canteen", "Lunch is at noon.")
        parking = str(admin.page_id("Parking"))
        kiln = str(admin.page_id("Kiln limits"))
    time.sleep(1.1)  # the wiki's feeds have one-second resolution
    proxy = _DirtyWiki(wiki.url)
    with ReplayServer(proxy) as server:
        config = MediaWikiConnector.Config(base_url=server.url, username="Citeline@citeline",
                                           password="citelinebotsecret0123456789abcdef", namespaces=[0],
                                           overlap_s=0, backoff_s=0.01, max_retries=1)
        runner = SyncRunner(db, embedder, chunker, batch_size=2)
        assert runner.run("wiki", "mediawiki", MediaWikiConnector(config, Access.everyone())).status == "succeeded"
        proxy.escape = b"\\u0000" if bad == "nul" else b"\\ud800"
        with wiki.admin() as admin:
            admin.edit("Kiln limits", "The kiln must stay under 1290 degrees now.")
            admin.delete("Parking")
        time.sleep(1.1)
        report = runner.run("wiki", "mediawiki", MediaWikiConnector(config, Access.everyone()))
        assert report.status == "succeeded" and report.failed == 0, report.failures
        stored = _stored(db)
        assert parking not in stored and kiln in stored
        assert all(_clean(text) for text in stored.values())
        assert "stay under 1290 degrees now" in stored[kiln]  # stored cleaned (U+FFFD for the surrogate)
        again = runner.run("wiki", "mediawiki", MediaWikiConnector(config, Access.everyone()))
        assert again.status == "succeeded" and (again.added, again.updated, again.failed) == (0, 0, 0)


def test_an_access_meta_in_a_confluence_page_is_text_not_a_crash(db, embedder, chunker, servers):
    """Only the folder connector reads ``citeline-access`` metas; in a Confluence page body a broken or
    repeated one used to raise out of the connector and stop the whole sync."""
    scenario = _confluence(servers, "\x00")
    fake = next(s.api for s in servers)
    page = next(p for p in fake.pages.values() if p.title == "Canteen")
    page.body = '<meta name="citeline-access" content="not json"><p>Lunch is at noon.</p>'
    report = SyncRunner(db, embedder, chunker).run("c", "confluence", scenario.make())
    assert report.status == "succeeded" and report.failed == 0, report.failures
    assert "Lunch is at noon." in _stored(db)[page.id]
