"""The deletion deadline for Confluence and Jira: deleted or made private at the source, gone within one sync.

Real embedded PostgreSQL, real embedder, the real sync runner (cursor saved and resumed as the scheduler
does), the connectors over real HTTP against the fake APIs in ``tests/support/apis/``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from citeline.connectors.confluence import ConfluenceConnector
from citeline.connectors.jira import JiraConnector
from citeline.domain import Access, Principal
from tests.support.apis.confluence import FakeConfluence
from tests.support.apis.jira import FakeJira
from tests.support.deadline import syncs_until_gone
from tests.support.replay import ReplayServer

pytestmark = pytest.mark.integration

ALICE = Principal("alice", ("eng", "ops"))


@pytest.fixture
def confluence() -> Iterator[tuple[FakeConfluence, ReplayServer, dict[str, str]]]:
    fake = FakeConfluence()
    fake.add_space("ENG")
    ids = {
        "home": fake.add_page("ENG", "Engineering Home", "<p>Welcome to the engineering space.</p>"),
        "kiln": fake.add_page("ENG", "Kiln temperature limits",
                              "<p>The ceramic kiln must never exceed 1280 degrees Celsius during glazing.</p>"),
        "parking": fake.add_page("ENG", "Parking", "<p>Bicycles go in the basement rack.</p>"),
    }
    with ReplayServer(fake) as server:
        yield fake, server, ids


@pytest.fixture
def jira() -> Iterator[tuple[FakeJira, ReplayServer, dict[str, str]]]:
    fake = FakeJira()
    fake.add_project("OPS")
    fake.add_level("10100", "Security")
    ids = {
        "kiln": fake.add_issue("OPS", "Kiln overheats during glazing",
                               "The ceramic kiln exceeded 1280 degrees Celsius twice this week."),
        "parking": fake.add_issue("OPS", "Bicycle rack full", "The basement rack has no free spaces."),
    }
    with ReplayServer(fake) as server:
        yield fake, server, ids


def _confluence(server: ReplayServer) -> ConfluenceConnector:
    return ConfluenceConnector(ConfluenceConnector.Config(
        base_url=f"{server.url}/wiki", email="bot@acme.example", token="good-token", spaces=["ENG"],
        space_access={"ENG": ["eng"]}, max_retries=1, backoff_s=0.01), Access.private())


def _jira(server: ReplayServer) -> JiraConnector:
    return JiraConnector(JiraConnector.Config(
        base_url=server.url, email="bot@acme.example", token="good-token", projects=["OPS"],
        project_access={"OPS": ["ops"]}, security_level_access={"Security": ["security-team"]}, max_retries=1,
        backoff_s=0.01), Access.private())


def _measure(db, embedder, chunker, kind: str, make, external_id: str, change) -> int:
    return syncs_until_gone(db, embedder, chunker, source=f"{kind}-deadline", kind=kind, make_connector=make,
                            principal=ALICE, query="kiln temperature 1280 degrees glazing", external_id=external_id,
                            change=change)


@pytest.mark.parametrize("how", ["trashed", "purged"])
def test_confluence_deleted_page_is_gone_within_one_sync(db, embedder, chunker, confluence, how):
    fake, server, ids = confluence
    change = (lambda: fake.trash(ids["kiln"])) if how == "trashed" else (lambda: fake.purge(ids["kiln"]))
    assert _measure(db, embedder, chunker, "confluence", lambda: _confluence(server), ids["kiln"], change) == 1


def test_confluence_page_made_private_is_gone_within_one_sync(db, embedder, chunker, confluence):
    fake, server, ids = confluence
    # a view restriction is not an edit: lastmodified stays, the restriction sweep finds it
    change = lambda: fake.restrict(ids["kiln"], users=("bob",))  # noqa: E731
    assert _measure(db, embedder, chunker, "confluence", lambda: _confluence(server), ids["kiln"], change) == 1


def test_confluence_parent_made_private_hides_the_child_within_one_sync(db, embedder, chunker):
    fake = FakeConfluence()
    fake.add_space("ENG")
    parent = fake.add_page("ENG", "Workshop", "<p>Workshop pages.</p>")
    child = fake.add_page("ENG", "Kiln temperature limits", "<p>The ceramic kiln must never exceed 1280 degrees "
                          "Celsius during glazing.</p>", parent=parent)
    with ReplayServer(fake) as server:
        change = lambda: fake.restrict(parent, groups=("kiln-admins",))  # noqa: E731
        assert _measure(db, embedder, chunker, "confluence", lambda: _confluence(server), child, change) == 1


def test_jira_deleted_issue_is_gone_within_one_sync(db, embedder, chunker, jira):
    fake, server, ids = jira
    assert _measure(db, embedder, chunker, "jira", lambda: _jira(server), ids["kiln"],
                    lambda: fake.delete(ids["kiln"])) == 1


def test_jira_issue_made_private_is_gone_within_one_sync(db, embedder, chunker, jira):
    fake, server, ids = jira
    assert _measure(db, embedder, chunker, "jira", lambda: _jira(server), ids["kiln"],
                    lambda: fake.secure(ids["kiln"], "10100")) == 1


def test_jira_issue_moved_out_of_scope_is_gone_within_one_sync(db, embedder, chunker, jira):
    fake, server, ids = jira
    fake.add_project("ARCHIVE")
    assert _measure(db, embedder, chunker, "jira", lambda: _jira(server), ids["kiln"],
                    lambda: fake.edit(ids["kiln"], project="ARCHIVE")) == 1
