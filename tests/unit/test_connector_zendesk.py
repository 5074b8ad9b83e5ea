"""The Zendesk connector against a loopback server answering in Zendesk's documented shapes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from citeline.connectors._http import BudgetExhausted, CredentialsRejected, SourceUnavailable
from citeline.connectors.zendesk import ZendeskConnector
from citeline.contracts.connector import Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access
from citeline.errors import ConnectorError
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync
from tests.support.apis.zendesk import EMAIL, OAUTH_TOKEN, TOKEN, ZendeskApi
from tests.support.replay import ReplayServer

pytestmark = pytest.mark.unit

EXPORT = "/api/v2/incremental/tickets/cursor.json"


def seed(api: ZendeskApi) -> None:
    api.add_user(9001, "Dana Requester", "dana@customer.example")
    api.add_user(9002, "Sam Agent", "sam@example.com")
    api.groups.update({8001: "Hardware Support", 8002: "Billing"})
    api.organizations.update({7001: "Globex"})
    api.add_ticket(4101, "Label printer jams", (9001, "The printer jams on every second label.", True),
                   (9002, "Known firmware bug, roll back to 2.3.", False), (9002, "Please try firmware 2.3.", True),
                   group_id=8001, organization_id=7001, requester_id=9001)
    api.add_ticket(4102, "Duplicate invoice", (9001, "We were billed twice in February.", True),
                   group_id=8002, requester_id=9001)
    api.add_ticket(4103, "Website login loop", (9001, "The login page keeps reloading.", True))
    api.add_ticket(4104, "Scanner offline", (9001, "The warehouse scanner lost its network.", True),
                   organization_id=7001)
    api.add_ticket(4105, "Refund request", (9001, "Please refund order 77.", True), group_id=8002)


@pytest.fixture
def api() -> ZendeskApi:
    fake = ZendeskApi()
    seed(fake)
    return fake


@pytest.fixture
def server(api: ZendeskApi) -> Iterator[ReplayServer]:
    with ReplayServer(api) as srv:
        yield srv


def make(server: ReplayServer, default: Access | None = None, **config: object) -> ZendeskConnector:
    settings = {"base_url": server.url, "email": EMAIL, "api_token": TOKEN, "page_size": 2, "max_retries": 2,
                "backoff_s": 0.001, "max_backoff_s": 0.01, **config}
    return ZendeskConnector(ZendeskConnector.Config(**settings), default or Access.private())


def docs(changes: list) -> dict:
    return {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}


def final_cursor(changes: list) -> dict:
    assert isinstance(changes[-1], Checkpoint)
    return dict(changes[-1].cursor)


class TestZendeskContract(ConnectorContract):
    @pytest.fixture
    def connector(self, server: ReplayServer) -> ZendeskConnector:
        return make(server)


def test_documents_text_and_access(server: ReplayServer) -> None:
    found = docs(run_sync(make(server, organization_access={"Globex": ["globex-staff", "user:lee"]})))
    printer = found["4101"]
    assert printer.title == "Label printer jams"
    assert printer.url == f"{server.url}/agent/tickets/4101"
    assert "## Comment by Dana Requester" in printer.text and "Please try firmware 2.3." in printer.text
    assert "roll back" not in printer.text  # internal note left out by default
    assert printer.access == Access(users=("lee",), groups=("globex-staff", "group:hardware-support"))
    assert printer.metadata["group"] == "Hardware Support" and printer.metadata["status"] == "open"
    assert found["4103"].access == Access.private()  # no group, no organization: the default
    assert found["4102"].access == Access(groups=("group:billing",))


def test_mapping_by_id_requester_and_internal_notes(server: ReplayServer) -> None:
    connector = make(server, group_access={"8002": ["finance"]}, name_groups=False, requester_access=True,
                     include_internal_comments=True)
    found = docs(run_sync(connector))
    assert found["4102"].access == Access(users=("dana@customer.example",), groups=("finance",))
    assert found["4104"].access == Access.private()  # an unmapped organization grants nothing: fail closed
    assert "## Internal note by Sam Agent" in found["4101"].text


def test_unmapped_group_without_names_is_private_not_default(server: ReplayServer) -> None:
    found = docs(run_sync(make(server, Access(groups=("everyone",)), name_groups=False)))
    assert found["4101"].access == Access.private()
    assert found["4103"].access == Access(groups=("everyone",))


def test_incremental_sync_reads_only_changes(api: ZendeskApi, server: ReplayServer) -> None:
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    assert set(cursor) == {"cursor"}
    assert item_ids(run_sync(connector, cursor)) == []
    api.add_comment(4103, 9002, "Clear your cookies and retry.")
    api.add_ticket(4106, "New badge printer", (9001, "Badges print blank.", True))
    server.requests.clear()
    changes = run_sync(connector, cursor)
    assert item_ids(changes) == ["4103", "4106"]
    assert "Clear your cookies" in docs(changes)["4103"].text
    assert server.requests[0].query["cursor"] == [cursor["cursor"]]
    assert "start_time" not in server.requests[0].query


def test_deleted_ticket_is_a_delete(api: ZendeskApi, server: ReplayServer) -> None:
    connector = make(server)
    cursor = final_cursor(run_sync(connector))
    api.delete_ticket(4102)
    changes = run_sync(connector, cursor)
    assert [c for c in changes if not isinstance(c, Checkpoint)] == [Delete("4102")]
    assert connector.list_ids() is None


def test_ticket_moved_to_another_group_changes_access(api: ZendeskApi, server: ReplayServer) -> None:
    connector = make(server, group_access={"Billing": ["billing"], "Hardware Support": ["hardware"]})
    cursor = final_cursor(run_sync(connector))
    api.update_ticket(4102, group_id=8001)
    assert docs(run_sync(connector, cursor))["4102"].access == Access(groups=("hardware",))


def test_429_retry_after_is_honoured(server: ReplayServer) -> None:
    server.fail_next(EXPORT, 429, headers={"Retry-After": "0.05"})
    changes = run_sync(make(server))
    assert len(docs(changes)) == 5
    first, second = server.requests[0], server.requests[1]
    assert first.path == second.path == EXPORT and "start_time" in second.query  # the same request again


def test_too_long_retry_after_ends_the_run(server: ReplayServer) -> None:
    server.fail_next(EXPORT, 429, headers={"Retry-After": "3600"})
    with pytest.raises(SourceUnavailable, match="3600 s"):
        run_sync(make(server))


def test_5xx_on_one_ticket_is_a_failure_retried_next_sync(api: ZendeskApi, server: ReplayServer) -> None:
    connector = make(server)
    server.fail_next("/api/v2/tickets/4102/comments.json", 500, times=3)  # max_retries=2: three tries
    changes = run_sync(connector)
    failures = [c for c in changes if isinstance(c, Failure)]
    assert [f.external_id for f in failures] == ["4102"] and "500" in failures[0].reason
    assert set(docs(changes)) == {"4101", "4103", "4104", "4105"}
    cursor = final_cursor(changes)
    assert cursor["retry"] == ["4102"]
    again = run_sync(connector, cursor)
    assert item_ids(again) == ["4102"] and isinstance(again[0], Upsert)
    assert "retry" not in final_cursor(again)
    assert any(r.path == "/api/v2/tickets/4102.json" for r in server.requests)


def test_retried_ticket_deleted_meanwhile_is_a_delete(api: ZendeskApi, server: ReplayServer) -> None:
    connector = make(server)
    server.fail_next("/api/v2/tickets/4105/comments.json", 502, times=3)
    cursor = final_cursor(run_sync(connector))
    api.tickets.pop(4105)  # purged: its show endpoint answers 404
    assert [c for c in run_sync(connector, cursor) if not isinstance(c, Checkpoint)] == [Delete("4105")]


def test_5xx_on_the_export_is_retried_then_ends_the_run(server: ReplayServer) -> None:
    server.fail_next(EXPORT, 500, times=2)
    assert len(docs(run_sync(make(server)))) == 5
    server.fail_next(EXPORT, 503, times=10)
    with pytest.raises(SourceUnavailable, match="503"):
        run_sync(make(server))


def test_expired_credentials_name_the_fix(server: ReplayServer) -> None:
    connector = make(server)
    server.expire_credentials()
    with pytest.raises(CredentialsRejected, match="401 .*Couldn't authenticate you.*new API token"):
        connector.validate()
    with pytest.raises(CredentialsRejected, match="config.api_token"):
        run_sync(connector)
    oauth = make(server, email=None, api_token=None, oauth_token="stale")
    with pytest.raises(CredentialsRejected, match="config.oauth_token"):
        run_sync(oauth)


def test_validate_refuses_an_anonymous_answer(server: ReplayServer) -> None:
    make(server).validate()
    make(server, email=None, api_token=None, oauth_token=OAUTH_TOKEN).validate()
    with pytest.raises(CredentialsRejected, match="anonymous"):
        ZendeskConnector._validate_answer(make(server), {"user": {"id": None}})


def test_comment_pages_are_followed(api: ZendeskApi, server: ReplayServer) -> None:
    api.comment_page_size = 1
    text = docs(run_sync(make(server)))["4101"].text
    assert "every second label" in text and "Please try firmware 2.3." in text
    assert any(r.arg("page") == "3" for r in server.requests)


def test_request_budget_ends_the_run_with_checkpoints_kept(server: ReplayServer) -> None:
    changes = []
    with pytest.raises(BudgetExhausted):
        for change in make(server, request_budget=4).sync(None):
            changes.append(change)
    assert any(isinstance(c, Checkpoint) for c in changes)


def test_config() -> None:
    config = ZendeskConnector.Config(subdomain="acme", email=EMAIL, api_token=TOKEN)
    assert config.base_url == "https://acme.zendesk.com"
    with pytest.raises(ValidationError, match="subdomain"):
        ZendeskConnector.Config(email=EMAIL, api_token=TOKEN)
    with pytest.raises(ValidationError, match="either"):
        ZendeskConnector.Config(subdomain="acme", email=EMAIL, api_token=TOKEN, oauth_token="x")
    with pytest.raises(ValidationError, match="both email and api_token"):
        ZendeskConnector.Config(subdomain="acme", email=EMAIL)
    with pytest.raises(ValidationError, match="not a Zendesk subdomain"):
        ZendeskConnector.Config(subdomain="acme.zendesk.com", oauth_token="x")
    assert TOKEN not in repr(config)
    with pytest.raises(ValidationError, match="invalid group name"):
        ZendeskConnector.Config(subdomain="acme", oauth_token="x", group_access={"Billing": ["two words"]})


def test_foreign_cursor_is_refused(server: ReplayServer) -> None:
    with pytest.raises(ConnectorError, match="reset the source's sync state"):
        run_sync(make(server), {"line": 3})
