"""The GitHub Issues connector against a loopback server answering in GitHub's documented shapes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import ValidationError

from citeline.connectors._http import CredentialsRejected, SourceUnavailable
from citeline.connectors.github import GitHubIssuesConnector
from citeline.contracts.connector import Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access
from citeline.errors import ConnectorError
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync
from tests.support.apis.github import TOKEN, GitHubApi
from tests.support.replay import ReplayServer

pytestmark = pytest.mark.unit

WIDGETS, FIRMWARE, LAB = "acme/widgets", "acme/firmware", "acme/lab"


def seed(api: GitHubApi) -> None:
    api.add_repo(WIDGETS)
    api.add_repo(FIRMWARE, private=True)
    api.add_repo(LAB, private=True)
    api.add_issue(WIDGETS, 12, "Calibration drifts after 48 hours", "The arm drifts by 2 mm.",
                  ("octo-sam", "Reproduced: homing does not reset the drift counter."), labels=["bug"])
    api.add_issue(WIDGETS, 13, "Fix calibration drift", "Resets the counter.", pull_request=True)
    api.add_issue(WIDGETS, 14, "Gripper squeaks", "Needs grease.", state="closed")
    tie = api.clock + timedelta(minutes=5)  # two issues updated in the same second
    api.add_issue(FIRMWARE, 3, "Bootloader hangs on cold start", "Hangs below 5 C.", at=tie)
    api.add_issue(FIRMWARE, 4, "Watchdog resets during OTA", "OTA takes longer than the watchdog.", at=tie)
    api.add_issue(LAB, 1, "Oscilloscope probe missing", "Probe 3 is gone.")


@pytest.fixture
def api() -> GitHubApi:
    fake = GitHubApi()
    seed(fake)
    return fake


@pytest.fixture
def server(api: GitHubApi) -> Iterator[ReplayServer]:
    with ReplayServer(api) as srv:
        yield srv


def make(server: ReplayServer, default: Access | None = None, **config: object) -> GitHubIssuesConnector:
    settings = {"base_url": server.url, "token": TOKEN, "repositories": [WIDGETS, FIRMWARE, LAB], "page_size": 2,
                "checkpoint_every": 2, "max_retries": 2, "backoff_s": 0.001, "max_backoff_s": 0.01,
                "repository_access": {FIRMWARE: ["firmware-team", "user:dana"]}, **config}
    return GitHubIssuesConnector(GitHubIssuesConnector.Config(**settings), default or Access.private())


def docs(changes: list) -> dict:
    return {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}


def final_cursor(changes: list) -> dict:
    assert isinstance(changes[-1], Checkpoint)
    return dict(changes[-1].cursor)


class TestGitHubContract(ConnectorContract):
    @pytest.fixture
    def connector(self, server: ReplayServer) -> GitHubIssuesConnector:
        return make(server)


def test_documents_text_access_and_pull_requests(server: ReplayServer) -> None:
    found = docs(run_sync(make(server)))
    assert sorted(found) == ["acme/firmware#3", "acme/firmware#4", "acme/lab#1", "acme/widgets#12",
                             "acme/widgets#14"]
    drift = found["acme/widgets#12"]
    assert drift.url == "https://github.com/acme/widgets/issues/12"
    assert drift.text.startswith("# Calibration drifts after 48 hours\n\nState: open\nLabels: bug\n\nThe arm")
    assert "## Comment by octo-sam" in drift.text and "homing does not reset" in drift.text
    assert drift.access == Access.everyone()
    assert found["acme/firmware#3"].access == Access(users=("dana",), groups=("firmware-team",))
    assert found["acme/lab#1"].access == Access.private()  # private and unmapped: the default
    with_prs = docs(run_sync(make(server, include_pull_requests=True)))
    assert with_prs["acme/widgets#13"].metadata["kind"] == "pull request"
    assert "acme/widgets#13" in make(server, include_pull_requests=True).list_ids()


def test_public_repositories_can_be_kept_private(server: ReplayServer) -> None:
    found = docs(run_sync(make(server, Access(groups=("staff",)), public_repositories_public=False)))
    assert found["acme/widgets#12"].access == Access(groups=("staff",))


def test_incremental_sync_reads_only_changes(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    assert item_ids(run_sync(connector, cursor)) == []
    api.add_comment(WIDGETS, 14, "octo-lee", "Greased, fixed.")
    api.add_issue(LAB, 2, "Soldering iron tip worn", "Order new tips.")
    server.requests.clear()
    changes = run_sync(connector, cursor)
    assert item_ids(changes) == ["acme/widgets#14", "acme/lab#2"]
    assert "Greased, fixed." in docs(changes)["acme/widgets#14"].text
    listing = [r for r in server.requests if r.path == f"/repos/{WIDGETS}/issues"][0]
    assert listing.arg("since") and listing.arg("sort") == "updated" and listing.arg("direction") == "asc"
    assert listing.arg("state") == "all"


def test_deleted_and_transferred_issues_are_pruned_from_the_listing(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    api.delete_issue(WIDGETS, 14)
    api.transfer_issue(FIRMWARE, 3, LAB, 7)
    changes = run_sync(connector, cursor)
    assert item_ids(changes) == ["acme/lab#7"]
    assert sorted(connector.list_ids()) == ["acme/firmware#4", "acme/lab#1", "acme/lab#7", "acme/widgets#12"]


def test_repository_made_private_changes_every_issues_access(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    api.set_visibility(WIDGETS, "private")
    changes = run_sync(connector, cursor)
    assert {i: d.access for i, d in docs(changes).items()} == {"acme/widgets#12": Access.private(),
                                                                "acme/widgets#14": Access.private()}
    api.set_visibility(FIRMWARE, "public")
    assert {d.access for d in docs(run_sync(connector, final_cursor(changes))).values()} == {Access.everyone()}


def test_repository_gone_is_a_failure_and_its_issues_are_not_listed(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    api.repos.pop(LAB)
    changes = run_sync(connector, cursor)
    assert [(c.external_id, "gone" in c.reason) for c in changes if isinstance(c, Failure)] == [(LAB, True)]
    assert LAB not in final_cursor(changes)["repos"]
    assert not any(i.startswith(LAB) for i in connector.list_ids())


def test_issues_disabled_is_a_failure_and_nothing_is_listed(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    api.repos[FIRMWARE].issues_disabled = True  # GitHub answers 410 for the issues of such a repository
    changes = run_sync(connector)
    assert [c.external_id for c in changes if isinstance(c, Failure)] == [FIRMWARE]
    assert sorted(connector.list_ids()) == ["acme/lab#1", "acme/widgets#12", "acme/widgets#14"]


def test_rate_limit_403_waits_for_reset_and_429_for_retry_after(server: ReplayServer) -> None:
    reset = str(int(time.time()) + 1)
    server.fail_next(f"/repos/{WIDGETS}/issues", 403, headers={"X-RateLimit-Remaining": "0",
                                                               "X-RateLimit-Reset": reset})
    server.fail_next(f"/repos/{FIRMWARE}/issues", 429, headers={"Retry-After": "0.05"})
    started = time.monotonic()
    changes = run_sync(make(server))
    assert len(docs(changes)) == 5
    assert time.monotonic() - started < 5
    widgets = [r for r in server.requests if r.path == f"/repos/{WIDGETS}/issues"]
    assert len(widgets) == 2 and widgets[0].query == widgets[1].query  # the same request, retried
    assert len([r for r in server.requests if r.path == f"/repos/{FIRMWARE}/issues"]) == 2


def test_long_rate_limit_reset_ends_the_run(server: ReplayServer) -> None:
    server.fail_next(f"/repos/{WIDGETS}/issues", 403, headers={"X-RateLimit-Remaining": "0",
                                                               "X-RateLimit-Reset": str(int(time.time()) + 3600)})
    with pytest.raises(SourceUnavailable, match="rate limited"):
        run_sync(make(server))


def test_5xx_on_comments_is_a_failure_retried_next_sync(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    server.fail_next(f"/repos/{WIDGETS}/issues/12/comments", 502, times=3)
    changes = run_sync(connector)
    failures = [c for c in changes if isinstance(c, Failure)]
    assert [f.external_id for f in failures] == ["acme/widgets#12"] and "502" in failures[0].reason
    cursor = final_cursor(changes)
    assert cursor["retry"] == ["acme/widgets#12"]
    again = run_sync(connector, cursor)
    assert item_ids(again) == ["acme/widgets#12"] and isinstance(again[0], Upsert)
    assert "retry" not in final_cursor(again)


def test_retried_issue_deleted_meanwhile_is_a_delete(api: GitHubApi, server: ReplayServer) -> None:
    connector = make(server)
    server.fail_next(f"/repos/{WIDGETS}/issues/12/comments", 500, times=3)
    cursor = final_cursor(run_sync(connector))
    api.delete_issue(WIDGETS, 12)  # its own URL answers 410 Gone now
    changes = run_sync(connector, cursor)
    assert [c for c in changes if not isinstance(c, Checkpoint)] == [Delete("acme/widgets#12")]
    assert any(r.path == f"/repos/{WIDGETS}/issues/12" for r in server.requests)


def test_5xx_on_the_listing_is_retried_then_ends_the_run(server: ReplayServer) -> None:
    server.fail_next(f"/repos/{LAB}/issues", 500, times=2)
    assert len(docs(run_sync(make(server)))) == 5
    server.fail_next(f"/repos/{LAB}/issues", 500, times=10)
    with pytest.raises(SourceUnavailable, match="500"):
        run_sync(make(server))


def test_expired_credentials_name_the_fix(server: ReplayServer) -> None:
    connector = make(server)
    server.expire_credentials()
    with pytest.raises(CredentialsRejected, match="401 .*Bad credentials.*config.token"):
        connector.validate()
    with pytest.raises(CredentialsRejected, match="create a new one"):
        run_sync(connector)
    with pytest.raises(CredentialsRejected):
        connector.list_ids()


def test_resume_between_issues_updated_in_the_same_second(server: ReplayServer) -> None:
    connector = make(server, repositories=[FIRMWARE], checkpoint_every=1)
    changes = run_sync(connector)
    first = next(c for c in changes if isinstance(c, Checkpoint))
    assert first.cursor["repos"][FIRMWARE]["seen"] == [3]
    assert item_ids(run_sync(connector, first.cursor)) == ["acme/firmware#4"]


def test_link_pages_are_followed(api: GitHubApi, server: ReplayServer) -> None:
    for number in range(20, 27):
        api.add_comment(WIDGETS, 12, f"user{number}", f"Comment number {number}.")
    text = docs(run_sync(make(server)))["acme/widgets#12"].text
    assert "Comment number 26." in text
    assert any(r.path.startswith("/repositories/") and r.arg("page") == "4" for r in server.requests)


def test_config_and_cursor_checks(server: ReplayServer) -> None:
    with pytest.raises(ValidationError, match="not owner/repo"):
        GitHubIssuesConnector.Config(repositories=["widgets"])
    with pytest.raises(ValidationError, match="at most 100|less than or equal"):
        GitHubIssuesConnector.Config(repositories=[WIDGETS], page_size=500)
    with pytest.raises(ValidationError, match="not in repositories"):
        make(server, repository_access={"acme/other": ["x"]})
    with pytest.raises(ConnectorError, match="reset the source's sync state"):
        run_sync(make(server), {"cursor": "abc"})
    assert GitHubIssuesConnector.Config(repositories=[WIDGETS]).base_url == "https://api.github.com"
