"""The Confluence connector against a fake Confluence on a real loopback server (tests/support/apis/confluence.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from citeline.connectors._http import ApiError
from citeline.connectors.confluence import ConfluenceConnector
from citeline.contracts.connector import Delete, Failure
from citeline.domain import Access, ContentType
from citeline.errors import ConnectorError
from citeline.testing.connectors import ConnectorContract, documents, final_cursor, item_ids, run_sync
from tests.support.apis.confluence import FakeConfluence
from tests.support.atlassian import AtlassianHttpPolicy
from tests.support.replay import ReplayServer

pytestmark = pytest.mark.unit

ENG = Access(groups=("eng",))
SEARCH = "/wiki/rest/api/content/search"


@pytest.fixture
def fake() -> FakeConfluence:
    api = FakeConfluence()
    api.add_space("ENG")
    api.add_space("OPS")
    api.add_space("HR")  # not configured: never read
    home = api.add_page("ENG", "Engineering Home", "<p>Welcome to engineering.</p>")
    api.ids = {"home": home}
    api.ids["calib"] = api.add_page("ENG", "Robot calibration", "<h2>Procedure</h2><p>Calibrate the arm daily.</p>",
                                    parent=home)
    api.ids["secret"] = api.add_page("ENG", "Salary bands", "<p>Band 4 pays well.</p>", parent=home,
                                     users=("alice",), groups=("eng-leads",))
    api.ids["child"] = api.add_page("ENG", "Band details", "<p>Details of band 4.</p>", parent=api.ids["secret"],
                                    groups=("eng-leads", "hr"))
    api.ids["runbook"] = api.add_page("OPS", "Pager runbook", "<ul><li>Ack the page</li><li>Fix it</li></ul>")
    api.ids["oncall"] = api.add_page("OPS", "On-call rota", "<table><tr><td>Mon</td><td>dana</td></tr></table>")
    api.add_page("HR", "Out of scope", "<p>never synced</p>")
    return api


@pytest.fixture
def server(fake: FakeConfluence) -> Iterator[ReplayServer]:
    with ReplayServer(fake) as srv:
        yield srv


def make(server: ReplayServer, default: Access = Access.private(), **overrides: object) -> ConfluenceConnector:
    config = {"base_url": f"{server.url}/wiki", "email": "bot@acme.example", "token": "good-token",
              "spaces": ["ENG", "OPS"], "space_access": {"ENG": ["eng"]}, "max_retries": 2, "backoff_s": 0.01,
              "checkpoint_every": 2, "page_size": 2, **overrides}
    return ConfluenceConnector(ConfluenceConnector.Config(**config), default)


class TestConfluenceContract(ConnectorContract):
    @pytest.fixture
    def connector(self, server: ReplayServer) -> ConfluenceConnector:
        return make(server)


class TestConfluenceHttpPolicy(AtlassianHttpPolicy):
    search, full_sync = SEARCH, 6

    def make(self, server: ReplayServer, **overrides: object) -> ConfluenceConnector:
        return make(server, **overrides)


def test_pages_become_documents_with_their_access(fake, server):
    got = documents(run_sync(make(server)))
    ids = fake.ids
    assert set(got) == set(ids.values())
    calib = got[ids["calib"]]
    assert calib.title == "Robot calibration" and calib.content_type is ContentType.MARKDOWN
    assert calib.text == "# Robot calibration\n\n## Procedure\n\nCalibrate the arm daily.\n"
    assert calib.url == f"{server.url}/wiki/spaces/ENG/pages/{ids['calib']}/Robot+calibration"
    assert calib.metadata == {"space": "ENG", "version": "1"}
    assert calib.access == ENG  # unrestricted: the space's access
    assert got[ids["secret"]].access == Access(users=("alice@acme.example",), groups=("eng-leads",))
    # the child's own restriction (eng-leads, hr) meets its parent's (alice, eng-leads): only eng-leads
    assert got[ids["child"]].access == Access(groups=("eng-leads",))
    assert got[ids["runbook"]].access == Access.private()  # OPS has no space_access: the source default
    assert "- Ack the page" in got[ids["runbook"]].text


def test_user_field_picks_the_identity(fake, server):
    got = documents(run_sync(make(server, user_field="accountId")))
    assert got[fake.ids["secret"]].access.users == ("557058:alice",)


def test_incremental_sync_reads_only_changes(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    assert set(cursor) == {"since", "restricted"}
    fake.edit(fake.ids["calib"], body="<p>Calibrate twice a day.</p>")
    new = fake.add_page("OPS", "Escalation", "<p>Call the duty manager.</p>")
    server.requests.clear()
    changes = run_sync(connector, cursor)
    # the changes, and the last page of the previous run (re-read within the overlap, skipped by hash)
    assert item_ids(changes) == [fake.ids["oncall"], fake.ids["calib"], new]
    assert "Calibrate twice a day." in documents(changes)[fake.ids["calib"]].text
    cql = [r.arg("cql") for r in server.requests if r.path == SEARCH and "lastmodified >=" in (r.arg("cql") or "")]
    assert cql and '"2024-05-01 13:55"' in cql[0]  # minute precision, 5 minutes before the last change (14:00)


def test_query_dates_are_in_the_users_time_zone():
    fake = FakeConfluence(time_zone="America/New_York")
    fake.add_space("ENG")
    for n in range(3):
        fake.add_page("ENG", f"Page {n}", f"<p>text {n}</p>")
    with ReplayServer(fake) as server:
        connector = make(server, time_zone="America/New_York", space_access={})
        cursor = final_cursor(run_sync(connector))
        changed = fake.add_page("ENG", "Late", "<p>late</p>")
        server.requests.clear()
        assert item_ids(run_sync(connector, cursor))[-1] == changed
        cql = next(r.arg("cql") for r in server.requests if "lastmodified" in (r.arg("cql") or ""))
        assert '"2024-05-01 06:55"' in cql  # 10:55 UTC is 06:55 in New York (EDT)


def test_restriction_change_without_an_edit_is_picked_up(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    fake.restrict(fake.ids["calib"], users=("bob",))  # Confluence does not touch lastmodified for this
    fake.restrict(fake.ids["secret"])  # lifted: back to the space's access, and the child follows
    changes = run_sync(connector, cursor)
    got = documents(changes)
    assert got[fake.ids["calib"]].access == Access(users=("bob@acme.example",))
    assert got[fake.ids["secret"]].access == ENG
    assert got[fake.ids["child"]].access == Access(groups=("eng-leads", "hr"))
    cursor = final_cursor(changes)
    again = run_sync(connector, cursor)  # nothing changed since: only the overlap re-read
    assert item_ids(again) == [fake.ids["oncall"]]


def test_restricting_a_parent_narrows_its_children(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    fake.restrict(fake.ids["home"], groups=("eng-leads",))
    got = documents(run_sync(connector, cursor))
    assert got[fake.ids["home"]].access == Access(groups=("eng-leads",))
    assert got[fake.ids["calib"]].access == Access(groups=("eng-leads",))
    assert got[fake.ids["secret"]].access == Access(groups=("eng-leads",))  # alice was not in both


def test_trashed_pages_are_deleted_and_purged_pages_pruned(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    fake.trash(fake.ids["runbook"])
    fake.purge(fake.ids["oncall"])
    changes = run_sync(connector, cursor)
    assert Delete(fake.ids["runbook"]) in changes
    listed = connector.list_ids()
    assert fake.ids["runbook"] not in listed and fake.ids["oncall"] not in listed
    assert set(listed) == {fake.ids[k] for k in ("home", "calib", "secret", "child")}


def test_5xx_on_one_page_is_a_failure_and_the_run_goes_on(fake, server):
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    fake.restrict(fake.ids["calib"], users=("bob",))
    fake.restrict(fake.ids["runbook"], users=("bob",))
    server.fail_next(f"/wiki/rest/api/content/{fake.ids['calib']}", 500, times=3)  # every try of this sync
    changes = run_sync(connector, cursor)
    failures = [c for c in changes if isinstance(c, Failure)]
    assert [f.external_id for f in failures] == [fake.ids["calib"]] and "500" in failures[0].reason
    assert documents(changes)[fake.ids["runbook"]].access == Access(users=("bob@acme.example",))
    # the failed page is not marked as done: the next sync tries it again
    retried = run_sync(connector, final_cursor(changes))
    assert documents(retried)[fake.ids["calib"]].access == Access(users=("bob@acme.example",))


def test_unknown_space_fails_validation(server):
    with pytest.raises(ConnectorError, match="space NOPE does not exist"):
        make(server, spaces=["ENG", "NOPE"]).validate()


def test_token_from_the_environment(monkeypatch, server):
    monkeypatch.setenv("CITELINE_TEST_CONFLUENCE", "good-token")
    assert len(documents(run_sync(make(server, token="env:CITELINE_TEST_CONFLUENCE")))) == 6


def test_config_is_checked():
    base = {"base_url": "https://acme.atlassian.net/wiki", "token": "t", "spaces": ["ENG"]}
    with pytest.raises(ValidationError, match="space key"):
        ConfluenceConnector.Config(**{**base, "spaces": ["ENG OPS"]})
    with pytest.raises(ValidationError, match="time zone"):
        ConfluenceConnector.Config(**{**base, "time_zone": "Mars/Olympus"})
    with pytest.raises(ValidationError, match="invalid group name"):
        ConfluenceConnector.Config(**{**base, "space_access": {"ENG": ["two words"]}})
    with pytest.raises(ConnectorError, match="not written by this connector"):
        run_sync(ConfluenceConnector(ConfluenceConnector.Config(**base)), {"line": 3})


def test_a_server_ignoring_the_restriction_expansion_fails_closed(fake, server, monkeypatch):
    render = fake._render
    monkeypatch.setattr(fake, "_render", lambda page, expand: {k: v for k, v in render(page, expand).items()
                                                               if k != "restrictions"})
    with pytest.raises(ApiError, match="does not expand restrictions"):
        run_sync(make(server))


# body.storage.value as Confluence stores it (storage format: XHTML with ac:/ri: elements, CDATA code bodies)
STORAGE = """<h2>Rolling back</h2><p>If the canary fails, roll back:</p>\
<ac:structured-macro ac:name="code" ac:schema-version="1" ac:macro-id="5e1f0c2a-0d1b-4c57-9d0e-6b2f0c1a2b3c">\
<ac:parameter ac:name="language">bash</ac:parameter><ac:parameter ac:name="title">Undo</ac:parameter>\
<ac:plain-text-body><![CDATA[kubectl rollout undo deploy/api
kubectl get pods -l app=api]]></ac:plain-text-body></ac:structured-macro>\
<ac:structured-macro ac:name="warning" ac:schema-version="1" ac:macro-id="0c7a5b7e-7d0e-4a36-8a4e-2f4d9b1c0e11">\
<ac:parameter ac:name="title">Database migrations</ac:parameter><ac:rich-text-body>\
<p>Never roll back past a <strong>schema migration</strong>.</p></ac:rich-text-body></ac:structured-macro>\
<ac:structured-macro ac:name="info" ac:schema-version="1"><ac:rich-text-body><p>Ask in #deploys first.</p>\
</ac:rich-text-body></ac:structured-macro>\
<p>See <ac:link><ri:page ri:space-key="OPS" ri:content-title="Deploy guide" /><ac:plain-text-link-body>\
<![CDATA[the guide]]></ac:plain-text-link-body></ac:link> and <ac:link><ri:page ri:content-title="Pager runbook" />\
</ac:link>, the <ac:link><ri:attachment ri:filename="rollback.pdf" /></ac:link> and \
<ac:link><ri:user ri:account-id="557058:dana" /></ac:link>.</p>\
<ac:structured-macro ac:name="toc" ac:schema-version="1"><ac:parameter ac:name="maxLevel">2</ac:parameter>\
</ac:structured-macro><ac:layout><ac:layout-section ac:type="two_equal"><ac:layout-cell><h3>Left</h3>\
<p>Left column.</p></ac:layout-cell><ac:layout-cell><ac:task-list><ac:task><ac:task-id>1</ac:task-id>\
<ac:task-status>complete</ac:task-status><ac:task-body>Tag the release</ac:task-body></ac:task></ac:task-list>\
</ac:layout-cell></ac:layout-section></ac:layout>"""


def test_storage_format_keeps_code_panels_and_page_links(fake, server):
    page = fake.add_page("ENG", "Rollback", STORAGE)
    text = documents(run_sync(make(server)))[page].text
    base = f"{server.url}/wiki"
    assert "Undo\n\n```bash\nkubectl rollout undo deploy/api\nkubectl get pods -l app=api\n```" in text
    assert "bashkubectl" not in text and "maxLevel" not in text and "5e1f0c2a" not in text
    assert "> Warning: Database migrations\n>\n> Never roll back past a schema migration." in text
    assert "> Info:\n>\n> Ask in #deploys first." in text
    assert f"[the guide (Deploy guide)]({base}/display/OPS/Deploy+guide)" in text
    assert f"[Pager runbook]({base}/display/ENG/Pager+runbook)" in text  # no space key: the page's own space
    assert "rollback.pdf" in text and "557058" not in text
    assert "### Left\n\nLeft column." in text and "- [x] Tag the release" in text
