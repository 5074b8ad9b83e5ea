"""The Jira connector against a fake Jira on a real loopback server (tests/support/apis/jira.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from citeline.connectors._http import BudgetExhausted, CredentialsRejected, SourceUnavailable
from citeline.connectors.interfaces import Checkpoint, Delete, Failure, Upsert
from citeline.connectors.jira import JiraConnector
from citeline.connectors.testing import ConnectorContract, item_ids, run_sync
from citeline.domain import Access, ContentType
from citeline.errors import ConnectorError
from tests.support.apis.jira import FakeJira
from tests.support.replay import ReplayServer

pytestmark = pytest.mark.unit

OPS = Access(groups=("ops",))
SECURITY = Access(groups=("security-team",), users=("dana",))
SEARCH = "/rest/api/2/search"


@pytest.fixture
def fake() -> FakeJira:
    api = FakeJira(embedded_comments=2)
    for key in ("OPS", "KB", "HR"):
        api.add_project(key)
    api.add_level("10100", "Security")
    api.add_level("10101", "Board")
    api.ids = {}
    api.ids["belt"] = api.add_issue("OPS", "Conveyor belt stops at night", "The belt in hall 3 stops around 02:00.")
    api.comment(api.ids["belt"], "Sam Vimes", "Night shift confirms it.")
    api.comment(api.ids["belt"], "Lee Adama", "Vendor contract expires.", visibility={"type": "role",
                                                                                  "value": "Administrators"})
    api.comment(api.ids["belt"], "Dana Scully", "Replaced the sensor; fixed.")  # beyond the embedded two
    api.ids["vpn"] = api.add_issue("OPS", "VPN drops every hour", "Users report drops.", security="10100")
    api.ids["board"] = api.add_issue("OPS", "Merger plans", "Confidential.", security="10101")  # unmapped level
    api.ids["howto"] = api.add_issue("KB", "How to reset a badge", "Go to the front desk.")
    api.ids["faq"] = api.add_issue("KB", "Parking FAQ", None)
    api.add_issue("HR", "Out of scope", "never synced")
    return api


@pytest.fixture
def server(fake: FakeJira) -> Iterator[ReplayServer]:
    with ReplayServer(fake) as srv:
        yield srv


def make(server: ReplayServer, default: Access = Access.private(), **overrides: object) -> JiraConnector:
    config = {"base_url": server.url, "email": "bot@acme.example", "token": "good-token", "projects": ["OPS", "KB"],
              "project_access": {"OPS": ["ops"]}, "security_level_access": {"Security": ["security-team", "user:dana"]},
              "max_retries": 2, "backoff_s": 0.01, "checkpoint_every": 2, "page_size": 2, **overrides}
    return JiraConnector(JiraConnector.Config(**config), default)


def docs(changes) -> dict:
    return {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}


def final_cursor(changes) -> dict:
    assert isinstance(changes[-1], Checkpoint)
    return dict(changes[-1].cursor)


class TestJiraContract(ConnectorContract):
    @pytest.fixture
    def connector(self, server: ReplayServer) -> JiraConnector:
        return make(server)


def test_issues_become_documents_with_their_access(fake, server):
    got = docs(run_sync(make(server)))
    ids = fake.ids
    assert set(got) == set(ids.values())
    belt = got[ids["belt"]]
    assert belt.title == "OPS-1: Conveyor belt stops at night" and belt.content_type is ContentType.MARKDOWN
    assert belt.url == f"{server.url}/browse/OPS-1"
    assert belt.text.startswith("# OPS-1: Conveyor belt stops at night\n\nType: Bug · Status: In Progress\n\n"
                                "The belt in hall 3 stops around 02:00.\n\n## Comment by Sam Vimes (")
    assert "Replaced the sensor" in belt.text  # paged from /issue/{id}/comment
    assert "Vendor contract" not in belt.text  # a role-restricted comment is left out
    assert belt.metadata == {"key": "OPS-1", "project": "OPS", "status": "In Progress", "type": "Bug"}
    assert belt.access == OPS
    assert got[ids["vpn"]].access == SECURITY  # security level mapped
    assert got[ids["board"]].access == Access.private()  # a level without a mapping: fail closed
    assert got[ids["howto"]].access == Access.private()  # KB has no project_access: the source default
    assert got[ids["faq"]].text == "# KB-2: Parking FAQ\n\nType: Bug · Status: In Progress\n"


def test_comments_beyond_the_embedded_ones_are_paged(fake, server):
    run_sync(make(server))
    comment_pages = [r for r in server.requests if r.path == f"/rest/api/2/issue/{fake.ids['belt']}/comment"]
    assert [r.arg("startAt") for r in comment_pages] == ["0", "2"]  # page_size 2, three comments


def test_incremental_sync_reads_only_changes(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    assert set(cursor) == {"since"}
    fake.edit(fake.ids["howto"], summary="How to reset a door badge")
    fake.comment(fake.ids["vpn"], "Sam Vimes", "Happens on Wi-Fi only.")
    server.requests.clear()
    changes = run_sync(connector, cursor)
    # the changes, and the last issue of the previous run (re-read within the overlap, skipped by hash)
    assert item_ids(changes) == [fake.ids["faq"], fake.ids["howto"], fake.ids["vpn"]]
    assert "Happens on Wi-Fi only." in docs(changes)[fake.ids["vpn"]].text
    jql = server.requests[0].arg("jql")
    assert jql == ('project in ("OPS", "KB") AND updated >= "2024/05/01 15:55" ORDER BY updated ASC, key ASC')


def test_setting_a_security_level_changes_access(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    fake.secure(fake.ids["belt"], "10100")
    fake.secure(fake.ids["vpn"], None)
    got = docs(run_sync(connector, cursor))
    assert got[fake.ids["belt"]].access == SECURITY
    assert got[fake.ids["vpn"]].access == OPS


def test_deleted_issues_are_pruned_from_the_listing(fake, server):
    connector = make(server)
    run_sync(connector)
    fake.delete(fake.ids["howto"])
    listed = connector.list_ids()
    assert sorted(listed) == sorted(v for k, v in fake.ids.items() if k != "howto")


def test_an_issue_deleted_while_read_is_a_delete(fake, server):
    server.fail_next(f"/rest/api/2/issue/{fake.ids['belt']}/comment", 404, message="Issue does not exist")
    assert Delete(fake.ids["belt"]) in run_sync(make(server))


def test_429_retry_after_is_honoured(fake, server):
    server.fail_next(SEARCH, 429, headers={"Retry-After": "1"}, message="Rate limit exceeded")
    started = time.monotonic()
    changes = run_sync(make(server))
    assert time.monotonic() - started >= 1.0
    assert len(docs(changes)) == 5
    first, second = server.requests[0], server.requests[1]
    assert first.path == second.path == SEARCH and first.query == second.query


def test_5xx_on_the_search_is_retried_then_fails_the_run(server):
    server.fail_next(SEARCH, 500, times=10)
    with pytest.raises(SourceUnavailable, match="500"):
        run_sync(make(server))
    assert len([r for r in server.requests if r.path == SEARCH]) == 3


def test_5xx_once_is_retried_and_the_run_succeeds(server):
    server.fail_next(SEARCH, 502, times=2)
    assert len(docs(run_sync(make(server)))) == 5


def test_5xx_on_one_issues_comments_is_a_failure_and_the_run_goes_on(fake, server):
    server.fail_next(f"/rest/api/2/issue/{fake.ids['belt']}/comment", 500, times=3)
    changes = run_sync(make(server))
    failures = [c for c in changes if isinstance(c, Failure)]
    assert [f.external_id for f in failures] == [fake.ids["belt"]]
    assert "OPS-1: comments cannot be read" in failures[0].reason and "500" in failures[0].reason
    assert len(docs(changes)) == 4
    cursor = final_cursor(changes)
    assert cursor["retry"] == [fake.ids["belt"]]
    # the next sync reads the failed issue again although it did not change, and forgets it once read
    again = run_sync(make(server), cursor)
    assert "Replaced the sensor" in docs(again)[fake.ids["belt"]].text
    assert f"/rest/api/2/issue/{fake.ids['belt']}" in server.paths()
    assert "retry" not in final_cursor(again)


def test_expired_credentials_name_the_fix(server):
    connector = make(server)
    server.expire_credentials()
    with pytest.raises(CredentialsRejected, match="401.*create a new API token") as info:
        connector.validate()
    assert info.value.status == 401
    with pytest.raises(CredentialsRejected):
        run_sync(connector)
    with pytest.raises(CredentialsRejected):
        connector.list_ids()


def test_data_center_bearer_token(server):
    connector = make(server, email=None, token="good-pat")
    connector.validate()
    assert len(docs(run_sync(connector))) == 5


def test_extra_jql_scope(fake, server):
    fake.edit(fake.ids["faq"], labels=["kb"])
    got = docs(run_sync(make(server, projects=[], jql="labels = kb")))
    assert set(got) == {fake.ids["faq"]}


def test_unknown_project_fails_validation(server):
    with pytest.raises(ConnectorError, match="project NOPE does not exist"):
        make(server, projects=["OPS", "NOPE"]).validate()


def test_request_budget_ends_the_run(server):
    with pytest.raises(BudgetExhausted, match="budget of 2"):
        run_sync(make(server, request_budget=2))


def test_config_is_checked():
    base = {"base_url": "https://acme.atlassian.net", "token": "t", "projects": ["OPS"]}
    with pytest.raises(ValidationError, match="set projects"):
        JiraConnector.Config(**{**base, "projects": []})
    with pytest.raises(ValidationError, match="ORDER BY"):
        JiraConnector.Config(**{**base, "jql": "labels = kb order by created"})
    with pytest.raises(ValidationError, match="project key"):
        JiraConnector.Config(**{**base, "projects": ["OPS-1"]})
    with pytest.raises(ConnectorError, match="not written by this connector"):
        run_sync(JiraConnector(JiraConnector.Config(**base)), {"since": "yesterday"})
