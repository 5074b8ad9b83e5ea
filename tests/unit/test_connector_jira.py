"""The Jira connector against a fake Jira on a real loopback server (tests/support/apis/jira.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import ValidationError

from citeline.connectors._http import ApiError
from citeline.connectors.jira import JiraApi, JiraConnector, detect_api
from citeline.contracts.connector import Delete, Failure
from citeline.domain import Access, ContentType
from citeline.errors import ConnectorError
from citeline.testing.connectors import ConnectorContract, documents, final_cursor, item_ids, run_sync
from tests.support.apis.jira import FakeJira
from tests.support.atlassian import AtlassianHttpPolicy
from tests.support.replay import ReplayServer, Reply

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


class TestJiraContract(ConnectorContract):
    @pytest.fixture
    def connector(self, server: ReplayServer) -> JiraConnector:
        return make(server)


class TestJiraHttpPolicy(AtlassianHttpPolicy):
    search, full_sync = SEARCH, 5

    def make(self, server: ReplayServer, **overrides: object) -> JiraConnector:
        return make(server, **overrides)


def test_issues_become_documents_with_their_access(fake, server):
    got = documents(run_sync(make(server)))
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
    assert "Happens on Wi-Fi only." in documents(changes)[fake.ids["vpn"]].text
    jql = server.requests[0].arg("jql")
    assert jql == ('project in ("OPS", "KB") AND updated >= "2024/05/01 15:55" ORDER BY updated ASC, key ASC')


def test_setting_a_security_level_changes_access(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    fake.secure(fake.ids["belt"], "10100")
    fake.secure(fake.ids["vpn"], None)
    got = documents(run_sync(connector, cursor))
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


def test_5xx_on_one_issues_comments_is_a_failure_and_the_run_goes_on(fake, server):
    server.fail_next(f"/rest/api/2/issue/{fake.ids['belt']}/comment", 500, times=3)
    changes = run_sync(make(server))
    failures = [c for c in changes if isinstance(c, Failure)]
    assert [f.external_id for f in failures] == [fake.ids["belt"]]
    assert "OPS-1: comments cannot be read" in failures[0].reason and "500" in failures[0].reason
    assert len(documents(changes)) == 4
    cursor = final_cursor(changes)
    assert cursor["retry"] == [fake.ids["belt"]]
    # the next sync reads the failed issue again although it did not change, and forgets it once read
    again = run_sync(make(server), cursor)
    assert "Replaced the sensor" in documents(again)[fake.ids["belt"]].text
    assert f"/rest/api/2/issue/{fake.ids['belt']}" in server.paths()
    assert "retry" not in final_cursor(again)


def test_extra_jql_scope(fake, server):
    fake.edit(fake.ids["faq"], labels=["kb"])
    got = documents(run_sync(make(server, projects=[], jql="labels = kb")))
    assert set(got) == {fake.ids["faq"]}


def test_unknown_project_fails_validation(server):
    with pytest.raises(ConnectorError, match="project NOPE does not exist"):
        make(server, projects=["OPS", "NOPE"]).validate()


def test_jql_jira_rejects_fails_validation_naming_the_fix(server):
    with pytest.raises(ApiError, match="rejected the JQL .*priority = High.*fix config.jql") as info:
        make(server, jql="priority = High").validate()
    assert info.value.status == 400


def test_config_is_checked():
    base = {"base_url": "https://acme.atlassian.net", "token": "t", "projects": ["OPS"]}
    with pytest.raises(ValidationError, match="set projects"):
        JiraConnector.Config(**{**base, "projects": []})
    with pytest.raises(ValidationError, match="ORDER BY"):
        JiraConnector.Config(**{**base, "jql": "labels = kb order by created"})
    with pytest.raises(ValidationError, match="project key"):
        JiraConnector.Config(**{**base, "projects": ["OPS-1"]})
    with pytest.raises(ValidationError, match="project_access.OPS is invalid"):
        JiraConnector.Config(**{**base, "project_access": {"OPS": ["user:"]}})
    with pytest.raises(ValidationError, match="'cloud' or 'datacenter'"):
        JiraConnector.Config(**{**base, "api": "server"})
    with pytest.raises(ConnectorError, match="not written by this connector"):
        run_sync(JiraConnector(JiraConnector.Config(**base)), {"since": "yesterday"})


# -- Jira Cloud: REST v3, the enhanced JQL search, ADF -----------------------------------------------------
CLOUD_SEARCH = "/rest/api/3/search/jql"


def adf(*paragraphs: str) -> dict:
    return {"type": "doc", "version": 1,
            "content": [{"type": "paragraph", "content": [{"type": "text", "text": p}]} for p in paragraphs]}


@pytest.fixture
def cloud(fake: FakeJira, server: ReplayServer) -> ReplayServer:
    """The same site as Jira Cloud: REST v3 with /search/jql; /rest/api/{2,3}/search answer 410."""
    fake.cloud = True
    return server


class TestJiraCloudContract(ConnectorContract):
    @pytest.fixture
    def connector(self, cloud: ReplayServer) -> JiraConnector:
        return make(cloud, api="cloud")


class TestJiraCloudHttpPolicy(AtlassianHttpPolicy):
    search, full_sync = CLOUD_SEARCH, 5

    def make(self, server: ReplayServer, **overrides: object) -> JiraConnector:
        server.api.cloud = True
        return make(server, api="cloud", **overrides)


def test_cloud_reads_rest_v3_and_gets_the_same_documents(fake, server):
    datacenter = make(server)
    assert datacenter.api is JiraApi.DATACENTER  # a loopback URL is not *.atlassian.net
    expected = documents(run_sync(datacenter))
    assert all(path.startswith("/rest/api/2/") for path in server.paths())
    fake.cloud = True
    server.requests.clear()
    got = documents(run_sync(make(server, api="cloud")))
    assert got == expected  # v3's ADF descriptions and comments read as v2's strings did
    assert "Replaced the sensor" in got[fake.ids["belt"]].text  # paged from /rest/api/3/issue/{id}/comment
    assert all(path.startswith("/rest/api/3/") for path in server.paths())
    searches = [r for r in server.requests if r.path == CLOUD_SEARCH]
    assert searches and all(r.arg("startAt") is None for r in searches)
    assert {r.arg("fields") for r in searches} == {"summary,description,comment,updated,created,project,security,"
                                                   "status,issuetype"}  # v3 answers only ids unless asked
    assert f"/rest/api/3/issue/{fake.ids['belt']}/comment" in server.paths()


def test_cloud_resync_reads_changes_in_adf_and_the_listing_prunes_deleted_issues(fake, cloud):
    connector = make(cloud, api="cloud")
    first = run_sync(connector)
    cursor = final_cursor(first)
    assert set(cursor) == {"since"}
    fake.edit(fake.ids["howto"], description={"type": "doc", "version": 1, "content": [
        {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Lost badge"}]},
        {"type": "bulletList", "content": [
            {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Call "},
                {"type": "mention", "attrs": {"id": "5b10ac8d", "text": "@Front Desk"}}]}]}]}]})
    fake.comment(fake.ids["vpn"], "Sam Vimes", adf("Happens on Wi-Fi only.", "Not on cable."))
    fake.delete(fake.ids["belt"])
    cloud.requests.clear()
    changes = run_sync(connector, cursor)
    # the changes, and the last issue of the previous run (re-read within the overlap, skipped by hash)
    assert item_ids(changes) == [fake.ids["faq"], fake.ids["howto"], fake.ids["vpn"]]
    got = documents(changes)
    assert "## Lost badge\n\n- Call @Front Desk" in got[fake.ids["howto"]].text
    assert "Happens on Wi-Fi only.\n\nNot on cable." in got[fake.ids["vpn"]].text
    assert 'updated >= "2024/05/01 15:55"' in cloud.requests[0].arg("jql")

    cloud.requests.clear()
    listed = connector.list_ids()
    assert sorted(listed) == sorted(v for k, v in fake.ids.items() if k != "belt")
    listing = cloud.requests
    assert {r.path for r in listing} == {CLOUD_SEARCH} and {r.arg("fields") for r in listing} == {"id"}
    assert [r.arg("nextPageToken") is None for r in listing] == [True, False]  # 4 issues, pages of 2
    assert all(r.arg("jql").endswith("ORDER BY created ASC, key ASC") for r in listing)


def test_cloud_sync_follows_next_page_tokens_across_pages():
    fake = FakeJira(cloud=True, step=timedelta(seconds=1))  # every issue in one minute: no re-anchoring
    fake.add_project("OPS")
    ids = [fake.add_issue("OPS", f"Issue {n}", f"Body {n}") for n in range(7)]
    with ReplayServer(fake) as server:
        connector = make(server, api="cloud", projects=["OPS"])
        changes = run_sync(connector)
        assert item_ids(changes) == ids  # each issue once, in order
        assert documents(changes)[ids[6]].text.endswith("Body 6\n")
        searches = [r for r in server.requests if r.path == CLOUD_SEARCH]
        # the first page re-anchors the query at the minute of its last issue, then tokens carry it on
        anchored = searches[1:]
        tokens = [r.arg("nextPageToken") for r in anchored]
        assert len(anchored) == 4 and tokens[0] is None and len(set(tokens[1:])) == 3 and all(tokens[1:])
        assert len({r.arg("jql") for r in anchored}) == 1 and "updated >=" in anchored[0].arg("jql")
        assert sorted(connector.list_ids()) == sorted(ids)


def test_a_cloud_page_that_says_more_without_a_token_stops_the_listing(fake, cloud, monkeypatch):
    monkeypatch.setattr(fake, "_search_jql", lambda request: Reply(200, {"issues": [], "isLast": False}))
    with pytest.raises(ApiError, match="isLast=false without a nextPageToken"):
        make(cloud, api="cloud").list_ids()


def test_the_wrong_api_for_the_site_names_the_fix(fake, server):
    with pytest.raises(ConnectorError, match="rest/api/3/myself answered 404.*config.api \\(now 'cloud'\\)"):
        make(server, api="cloud").validate()  # a Data Center site has no REST v3
    fake.cloud = True
    datacenter = make(server, api="datacenter")
    with pytest.raises(ApiError, match='rest/api/2/search answered 410 Gone.*set config.api = "cloud"') as info:
        datacenter.validate()  # Cloud still has REST v2's myself and project: the search tells
    assert info.value.status == 410
    with pytest.raises(ApiError, match="410 Gone"):
        run_sync(datacenter)
    with pytest.raises(ApiError, match="410 Gone"):
        datacenter.list_ids()


@pytest.mark.parametrize(("url", "api"), [
    ("https://acme.atlassian.net", JiraApi.CLOUD),
    ("https://ACME.Atlassian.NET:443/", JiraApi.CLOUD),
    ("https://api.atlassian.com/ex/jira/1a11d016-8984-4c3e-b9ab-142dd06acb1b", JiraApi.CLOUD),
    ("https://jira.example.com", JiraApi.DATACENTER),
    ("https://atlassian.net.example.com", JiraApi.DATACENTER),
    ("https://notatlassian.net", JiraApi.DATACENTER),
    ("http://127.0.0.1:8080/jira", JiraApi.DATACENTER),
])
def test_the_api_is_detected_from_the_host_unless_set(url, api):
    base = {"base_url": url, "token": "t", "projects": ["OPS"]}
    assert detect_api(url) is api
    assert JiraConnector(base).api is api
    other = JiraApi.DATACENTER if api is JiraApi.CLOUD else JiraApi.CLOUD
    assert JiraConnector({**base, "api": other.value}).api is other
