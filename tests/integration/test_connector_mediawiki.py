"""The MediaWiki connector against a real MediaWiki (Debian's package, SQLite, ``php -S`` on loopback).

Pages are written through the wiki's own API as its administrator (tests/support/mediawiki.py); the
connector reads them with a bot password. Faults (429, 5xx, maxlag) come from a forwarding proxy in
front of the real wiki; expired credentials are a bot password revoked on the wiki itself.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citeline.connectors._http import BudgetExhausted, CredentialsRejected, SourceUnavailable
from citeline.connectors.mediawiki import MediaWikiConnector, Rendering
from citeline.contracts.connector import Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access, Principal
from citeline.ingest.sync import SyncRunner
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync
from tests.support.deadline import syncs_until_gone
from tests.support.mediawiki import STAFF_NS, MediaWiki, MediaWikiProxy, start_mediawiki
from tests.support.replay import ReplayServer, Reply, Request

pytestmark = pytest.mark.integration

EVERYONE = Access(groups=("everyone",))
DANA = Principal("dana", ("everyone",))  # not staff, not a wiki admin

PAGES = {
    "Warehouse robots": "== Calibration ==\nThe '''warehouse robot''' calibration takes [[Torque|torque]] readings.",
    "Torque": "Torque is measured in newton metres.\n* first item\n* second item",
    "Invoices": "{{Infobox|a=b}}Quarterly invoices go to [[Accounts]].\n=== Late ===\nLate ones get a reminder.",
    "Accounts": "{| class=\"wikitable\"\n! Name !! Owner\n|-\n| Payables || Sam\n|}",
    "Holidays": "The office closes on public holidays.",
    "Parking": "Visitors park in bay 4.",
}


def _fresh_wiki() -> Iterator[MediaWiki]:
    wiki = start_mediawiki(Path(tempfile.mkdtemp(prefix="citeline-mediawiki-")))
    try:
        yield wiki
    finally:
        wiki.stop()
        shutil.rmtree(wiki.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mediawiki() -> Iterator[MediaWiki]:
    """One wiki for the read-only tests: six main pages, two Staff pages, a redirect, a Help page."""
    for wiki in _fresh_wiki():
        with wiki.admin() as admin:
            for title, text in PAGES.items():
                admin.edit(title, text)
            admin.edit("Staff:Salaries", "Salary bands are reviewed in March.")
            admin.edit("Staff:Hiring", "Hiring plans for the next year.")
            admin.edit("Robots", "#REDIRECT [[Warehouse robots]]")
            admin.edit("Help:Editing", "How to edit pages.")  # namespace 12: not indexed
        time.sleep(1.1)  # feed times have one-second resolution: syncs start in a later second
        yield wiki


@pytest.fixture
def wiki() -> Iterator[MediaWiki]:
    """A fresh wiki of its own for a test that changes pages."""
    yield from _fresh_wiki()


def config(wiki: MediaWiki | str, **overrides: Any) -> MediaWikiConnector.Config:
    url = wiki if isinstance(wiki, str) else wiki.url
    values: dict[str, Any] = {
        "base_url": url, "username": "Citeline@citeline", "password": "citelinebotsecret0123456789abcdef",
        "namespaces": [0, STAFF_NS], "namespace_access": {STAFF_NS: ["staff"]},
        "restriction_access": {"read=sysop": ["wiki-admins"]}, "checkpoint_every": 2, "overlap_s": 0,
        "backoff_s": 0.01, "max_retries": 3,
    }
    return MediaWikiConnector.Config(**{**values, **overrides})


def connector(wiki: MediaWiki | str, default: Access = EVERYONE, **overrides: Any) -> MediaWikiConnector:
    return MediaWikiConnector(config(wiki, **overrides), default)


def documents(changes) -> dict[str, Any]:
    return {c.document.title: c.document for c in changes if isinstance(c, Upsert)}


class TestMediaWikiContract(ConnectorContract):
    @pytest.fixture
    def connector(self, mediawiki):
        return connector(mediawiki, Access.private())


def test_full_sync_reads_pages_with_text_url_and_access(mediawiki):
    changes = run_sync(connector(mediawiki))
    docs = documents(changes)
    assert set(docs) == {*PAGES, "Main Page", "Staff:Salaries", "Staff:Hiring"}  # no redirect, no Help page
    robots = docs["Warehouse robots"]
    assert robots.text.startswith("# Warehouse robots\n\n## Calibration\n\nThe warehouse robot calibration takes torque")
    assert robots.url == f"{mediawiki.url}/index.php/Warehouse_robots"
    assert robots.access == EVERYONE and robots.updated_at is not None
    assert "Payables | Sam" in docs["Accounts"].text and "Infobox" not in docs["Invoices"].text
    assert docs["Staff:Salaries"].access == Access(groups=("staff",))
    with mediawiki.admin() as admin:
        assert robots.external_id == str(admin.page_id("Warehouse robots"))
    assert not [c for c in changes if isinstance(c, Failure)]


def test_parsed_rendering_expands_the_wikis_html(mediawiki):
    docs = documents(run_sync(connector(mediawiki, render=Rendering.PARSED, namespaces=[0], namespace_access={})))
    assert "The warehouse robot calibration takes torque readings." in docs["Warehouse robots"].text
    assert "## Calibration" in docs["Warehouse robots"].text


def test_validate_names_the_problem(mediawiki):
    with pytest.raises(CredentialsRejected, match="readapidenied.*Special:BotPasswords"):
        MediaWikiConnector(config(mediawiki, username=None, password=None), EVERYONE).validate()
    with pytest.raises(CredentialsRejected, match="login as 'Citeline@citeline' failed.*Special:BotPasswords"):
        connector(mediawiki, password="wrongwrongwrongwrongwrongwrong0123").validate()
    with pytest.raises(Exception, match=r"namespaces \[4242\] do not exist"):
        connector(mediawiki, namespaces=[0, 4242], namespace_access={}).validate()
    with pytest.raises(Exception, match="no MediaWiki Action API answered"):
        connector(f"{mediawiki.url}/nowhere").validate()


def test_a_session_lost_mid_sync_logs_in_again(mediawiki, caplog):
    """The wiki forgets every session (expired, cache flushed) while a sync runs: one new login, no gap."""
    expected = item_ids(run_sync(connector(mediawiki)))
    changes = connector(mediawiki).sync(None)
    first = [next(changes) for _ in range(3)]
    with sqlite3.connect(mediawiki.root / "data" / "wikicache.sqlite") as cache:
        assert cache.execute("DELETE FROM objectcache WHERE keyname LIKE '%session%'").rowcount > 0
    with caplog.at_level(logging.INFO, logger="citeline.connectors._mediawiki"):
        assert item_ids(first + list(changes)) == expected
    assert "session lost (assertuserfailed); logging in again" in caplog.text


def test_incremental_sync_reads_edits_deletions_moves_and_protections(wiki):
    with wiki.admin() as admin:
        for title, text in PAGES.items():
            admin.edit(title, text)
        time.sleep(1.1)  # feed times have one-second resolution: the syncs start in a later second
        main_only = connector(wiki, namespaces=[0], namespace_access={})
        both = connector(wiki)
        cursor_both = run_sync(both)[-1].cursor
        cursor_main = run_sync(main_only)[-1].cursor
        assert cursor_both["phase"] == "changes"
        ids = {title: str(admin.page_id(title)) for title in PAGES}
        time.sleep(1.1)  # the feeds' times have a resolution of one second
        admin.edit("Torque", "Torque is now measured in foot-pounds.")
        admin.delete("Holidays")
        admin.move("Parking", "Staff:Parking")
        admin.protect("Accounts", "read=sysop")
        admin.edit("Canteen", "The canteen opens at noon.")
        admin.edit("Help:Search", "Not indexed.")

    changes = run_sync(both, cursor_both)
    assert isinstance(changes[-1], Checkpoint) and changes[-1].cursor["phase"] == "changes"
    docs = documents(changes)
    assert set(docs) == {"Torque", "Staff:Parking", "Accounts", "Canteen"}
    assert docs["Torque"].text == "# Torque\n\nTorque is now measured in foot-pounds.\n"
    assert docs["Staff:Parking"].external_id == ids["Parking"]  # a move keeps the page id
    assert docs["Staff:Parking"].access == Access(groups=("staff",))
    assert docs["Accounts"].access == Access(groups=("wiki-admins",))
    assert [c.external_id for c in changes if isinstance(c, Delete)] == [ids["Holidays"]]  # from the deletion log
    assert item_ids(run_sync(both, changes[-1].cursor)) == []  # nothing new: nothing yielded

    moved_out = run_sync(main_only, cursor_main)  # Staff is not indexed here: the moved page is gone
    assert {c.external_id for c in moved_out if isinstance(c, Delete)} == {ids["Holidays"], ids["Parking"]}
    assert set(main_only.list_ids()) == {*(ids[t] for t in PAGES if t not in ("Holidays", "Parking")),
                                         docs["Canteen"].external_id, "1"}


@pytest.mark.slow
def test_deletion_deadline_is_one_sync(wiki, db, embedder, chunker):
    """Deleted, moved into the private namespace, or protected with read=sysop: gone for dana after one sync."""
    changes = {
        "Warehouse robots": lambda admin: admin.delete("Warehouse robots"),
        "Invoices": lambda admin: admin.move("Invoices", "Staff:Invoices", redirect=False),
        "Torque": lambda admin: admin.protect("Torque", "read=sysop"),
    }
    queries = {"Warehouse robots": "warehouse robot calibration", "Invoices": "quarterly invoices accounts",
               "Torque": "torque newton metres"}
    with wiki.admin() as admin:
        for title, text in PAGES.items():
            admin.edit(title, text)
        time.sleep(1.1)
        for title, change in changes.items():
            def apply(change=change) -> None:
                time.sleep(1.1)  # a later second than the previous sync's cursor
                change(admin)

            syncs = syncs_until_gone(db, embedder, chunker, source="wiki", kind="mediawiki",
                                     make_connector=lambda: connector(wiki), principal=DANA, query=queries[title],
                                     external_id=str(admin.page_id(title)), change=apply)
            assert syncs == 1, f"{title}: still retrievable after {syncs - 1} syncs"


def _count(db, sql: str) -> int:
    with db.writer() as conn:
        return conn.execute(sql).fetchone()[0]


def test_expired_credentials_stop_the_run_and_keep_what_was_indexed(wiki, db, embedder, chunker):
    with wiki.admin() as admin:
        for title, text in PAGES.items():
            admin.edit(title, text)
    runner = SyncRunner(db, embedder, chunker)
    assert runner.run("wiki", "mediawiki", connector(wiki)).added == 7
    wiki.revoke_bot_password()
    with pytest.raises(CredentialsRejected, match="must be reset.*Special:BotPasswords"):
        runner.run("wiki", "mediawiki", connector(wiki))
    assert _count(db, "SELECT count(*) FROM documents") == 7  # nothing lost, nothing pruned
    wiki.restore_bot_password()
    report = runner.run("wiki", "mediawiki", connector(wiki))
    assert report.status == "succeeded" and _count(db, "SELECT count(*) FROM documents") == 7


# -- faults through a proxy in front of the real wiki ------------------------------------------------
@pytest.fixture
def proxy(mediawiki) -> Iterator[ReplayServer]:
    with ReplayServer(MediaWikiProxy(mediawiki.url)) as server:
        yield server


def test_429_retry_after_is_honoured(proxy, mediawiki):
    expected = item_ids(run_sync(connector(mediawiki)))
    proxy.fail_next("/api.php", 429, times=2, headers={"Retry-After": "1"})
    started = time.monotonic()
    changes = run_sync(connector(proxy.url))
    assert time.monotonic() - started >= 2.0
    assert item_ids(changes) == expected


def test_maxlag_in_a_200_body_is_retried(proxy, mediawiki):
    expected = item_ids(run_sync(connector(mediawiki)))
    proxy.fail_next("/api.php", 200, times=2, headers={"Retry-After": "1", "MediaWiki-API-Error": "maxlag"},
                    message="maxlag")
    assert item_ids(run_sync(connector(proxy.url))) == expected


def test_5xx_backs_off_then_gives_up_without_losing_anything(proxy, mediawiki, db, embedder, chunker):
    expected = item_ids(run_sync(connector(mediawiki)))
    proxy.fail_next("/api.php", 502, times=2)
    assert item_ids(run_sync(connector(proxy.url))) == expected
    runner = SyncRunner(db, embedder, chunker)
    runner.run("wiki", "mediawiki", connector(proxy.url))
    stored = _count(db, "SELECT count(*) FROM documents")
    proxy.fail_next("/api.php", 503, times=50)
    with pytest.raises(SourceUnavailable, match="503 .* after 4 tries"):
        runner.run("wiki", "mediawiki", connector(proxy.url))
    assert _count(db, "SELECT count(*) FROM documents") == stored


def test_request_budget_stops_the_run_and_the_next_resumes(proxy, mediawiki, db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker, batch_size=2)
    small = connector(proxy.url, request_budget=8, content_batch=2)
    with pytest.raises(BudgetExhausted, match="request budget of 8"):
        runner.run("wiki", "mediawiki", small)
    assert 0 < _count(db, "SELECT count(*) FROM documents") < 9
    stored = _count(db, "SELECT count(*) FROM documents")
    report = runner.run("wiki", "mediawiki", connector(proxy.url, content_batch=2))
    assert report.status == "succeeded" and report.resumed_from and report.resumed_from["phase"] == "full"
    assert report.added == 9 - stored  # resumed from the last stored checkpoint: nothing lost or doubled
    assert report.unchanged <= 2  # at most the pages after that checkpoint (checkpoint_every=2) read again
    assert _count(db, "SELECT count(*) FROM documents") == 9


class _OnePageFails(MediaWikiProxy):
    """The real wiki, except that any request reading page ``bad`` answers a MediaWiki error."""

    def __init__(self, upstream: str, bad: int) -> None:
        super().__init__(upstream)
        self.bad = str(bad)

    def handle(self, request: Request) -> Reply:
        if self.bad in (request.arg("pageids") or "").split("|"):
            return Reply(200, {"errors": [{"code": "internal_api_error_MWContentSerializationException",
                                           "text": "Content serialization failed"}]},
                         {"MediaWiki-API-Error": "internal_api_error_MWContentSerializationException"})
        return super().handle(request)


def test_a_page_that_cannot_be_read_is_a_failure_retried_next_sync(mediawiki):
    with mediawiki.admin() as admin:
        bad = admin.page_id("Invoices")
    api = _OnePageFails(mediawiki.url, bad)
    with ReplayServer(api) as server:
        changes = run_sync(connector(server.url))
        failures = [c for c in changes if isinstance(c, Failure)]
        assert [f.external_id for f in failures] == [str(bad)]
        assert "Content serialization failed" in failures[0].reason
        assert len(documents(changes)) == 8  # every other page was read
        cursor = changes[-1].cursor
        assert cursor["retry"] == [bad]
        api.bad = "none"  # fixed at the source: the next sync reads it although nothing changed
        again = run_sync(connector(server.url), cursor)
        assert [c.document.external_id for c in again if isinstance(c, Upsert)] == [str(bad)]
        assert again[-1].cursor["retry"] == []
