"""The deletion deadline for the Zendesk and GitHub Issues connectors: one sync, measured with the real index.

Each source is served by its fake API on loopback; the runner syncs from the saved cursor as the scheduler
would, and retrieval (access enforced in SQL) decides whether the document is still retrievable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from citeline.connectors.github import GitHubIssuesConnector
from citeline.connectors.zendesk import ZendeskConnector
from citeline.domain import Access, Principal
from tests.support.apis.github import TOKEN as GITHUB_TOKEN
from tests.support.apis.github import GitHubApi
from tests.support.apis.zendesk import EMAIL, TOKEN, ZendeskApi
from tests.support.deadline import syncs_until_gone
from tests.support.replay import ReplayServer

pytestmark = pytest.mark.integration

QUERY = "forklift battery overheating in the cold store"


@pytest.fixture
def zendesk() -> Iterator[tuple[ZendeskApi, ReplayServer]]:
    api = ZendeskApi()
    api.add_user(9001, "Dana Requester", "dana@customer.example")
    api.groups.update({8001: "Warehouse", 8002: "Finance"})
    api.add_ticket(4101, "Forklift battery overheating", (9001, "The forklift battery overheats in the cold store "
                                                                "after an hour of charging.", True), group_id=8001)
    api.add_ticket(4102, "Invoice address wrong", (9001, "Please change the invoice address.", True), group_id=8002)
    api.add_ticket(4103, "Dock door stuck", (9001, "Dock door 4 does not open.", True), group_id=8001)
    with ReplayServer(api) as server:
        yield api, server


@pytest.fixture
def github() -> Iterator[tuple[GitHubApi, ReplayServer]]:
    api = GitHubApi()
    api.add_repo("acme/warehouse")
    api.add_issue("acme/warehouse", 7, "Forklift battery overheating",
                  "The forklift battery overheats in the cold store after an hour of charging.")
    api.add_issue("acme/warehouse", 8, "Dock door stuck", "Dock door 4 does not open.")
    api.add_issue("acme/warehouse", 9, "Label printer offline", "The label printer lost its network.")
    with ReplayServer(api) as server:
        yield api, server


def zendesk_connector(server: ReplayServer) -> Callable[[], ZendeskConnector]:
    config = ZendeskConnector.Config(base_url=server.url, email=EMAIL, api_token=TOKEN, page_size=2)
    return lambda: ZendeskConnector(config, Access.private())


def github_connector(server: ReplayServer) -> Callable[[], GitHubIssuesConnector]:
    config = GitHubIssuesConnector.Config(base_url=server.url, token=GITHUB_TOKEN, repositories=["acme/warehouse"],
                                          page_size=2)
    return lambda: GitHubIssuesConnector(config, Access.private())


def measure(db, embedder, chunker, kind: str, make, principal: Principal, external_id: str, change) -> int:
    return syncs_until_gone(db, embedder, chunker, source=f"{kind}-deadline", kind=kind, make_connector=make,
                            principal=principal, query=QUERY, external_id=external_id, change=change)


def test_zendesk_deleted_ticket_is_gone_within_one_sync(db, embedder, chunker, zendesk) -> None:
    api, server = zendesk
    syncs = measure(db, embedder, chunker, "zendesk", zendesk_connector(server),
                    Principal("wes", ("group:warehouse",)), "4101", lambda: api.delete_ticket(4101))
    assert syncs == 1


def test_zendesk_ticket_moved_out_of_reach_is_gone_within_one_sync(db, embedder, chunker, zendesk) -> None:
    api, server = zendesk
    syncs = measure(db, embedder, chunker, "zendesk", zendesk_connector(server),
                    Principal("wes", ("group:warehouse",)), "4101", lambda: api.update_ticket(4101, group_id=8002))
    assert syncs == 1


def test_github_deleted_issue_is_gone_within_one_sync(db, embedder, chunker, github) -> None:
    api, server = github
    syncs = measure(db, embedder, chunker, "github", github_connector(server), Principal("wes"),
                    "acme/warehouse#7", lambda: api.delete_issue("acme/warehouse", 7))
    assert syncs == 1


def test_github_repository_made_private_is_gone_within_one_sync(db, embedder, chunker, github) -> None:
    api, server = github
    syncs = measure(db, embedder, chunker, "github", github_connector(server), Principal("wes"),
                    "acme/warehouse#7", lambda: api.set_visibility("acme/warehouse", "private"))
    assert syncs == 1
