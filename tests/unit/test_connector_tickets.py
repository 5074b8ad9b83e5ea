from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from citeline.connectors.tickets import TicketsConnector
from citeline.contracts.connector import Checkpoint, Failure, Upsert
from citeline.domain import Access, ContentType
from citeline.errors import ConnectorError
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync

pytestmark = pytest.mark.unit

STAFF = Access(groups=("staff",))


def ticket(tid: object, subject: str = "Printer on fire", **fields: object) -> str:
    return json.dumps({"id": tid, "subject": subject, **fields})


def export(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "tickets.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make(path: Path, default: Access = STAFF, **config: object) -> TicketsConnector:
    return TicketsConnector(TicketsConnector.Config(path=path, **config), default)


def docs(connector: TicketsConnector) -> dict:
    return {c.document.external_id: c.document for c in connector.sync(None) if isinstance(c, Upsert)}


COMMENTS = [
    {"author": "sam", "body": "Have you tried turning it off?", "created_at": "2024-05-01T10:00:00Z"},
    {
        "author": "lee",
        "body": "Customer is on the old firmware.",
        "created_at": "2024-05-01T11:00:00Z",
        "public": False,
    },
    {"author": "dana", "body": "Fixed, thanks!", "created_at": "2024-05-02T08:00:00Z", "public": True},
]


@pytest.fixture
def tickets(tmp_path: Path) -> Path:
    return export(
        tmp_path,
        ticket(
            101, body="It smokes.", status="open", group="support", comments=COMMENTS, updated_at="2024-05-02T08:00:00Z"
        ),
        ticket("102", "Invoice wrong", group="billing", organization="globex", requester="dana"),
        ticket(103, "No access fields"),
        "",
        "{not json",
        ticket(104, "Refund", access={"groups": ["billing"], "public": False}, group="support"),
        ticket(105, "Bad date", updated_at="last tuesday"),
        ticket(106, "Explicit url", url="https://desk.example/t/106"),
    )


class TestTicketsContract(ConnectorContract):
    @pytest.fixture
    def connector(self, tickets: Path) -> TicketsConnector:
        # list_ids refuses an export with an unreadable id, so the contract runs without that line
        lines = [line for line in tickets.read_text().splitlines() if line != "{not json"]
        tickets.write_text("\n".join(lines) + "\n")
        return make(tickets, checkpoint_every=2)


def test_document_text_title_and_metadata(tickets: Path) -> None:
    doc = docs(make(tickets, base_url="https://support.acme.example/tickets/"))["101"]
    assert doc.title == "Printer on fire"
    assert doc.content_type is ContentType.MARKDOWN
    assert doc.text == (
        "# Printer on fire\n\nStatus: open\n\nIt smokes.\n\n"
        "## Comment by sam (2024-05-01T10:00:00Z)\n\nHave you tried turning it off?\n\n"
        "## Comment by dana (2024-05-02T08:00:00Z)\n\nFixed, thanks!\n"
    )
    assert doc.url == "https://support.acme.example/tickets/101"
    assert doc.updated_at == datetime(2024, 5, 2, 8, 0, tzinfo=UTC)
    assert doc.metadata == {"status": "open", "group": "support"}


def test_private_comments_are_excluded_by_default(tickets: Path) -> None:
    assert "old firmware" not in docs(make(tickets))["101"].text
    text = docs(make(tickets, include_private_comments=True))["101"].text
    assert "## Internal note by lee (2024-05-01T11:00:00Z)\n\nCustomer is on the old firmware." in text


def test_group_organization_and_requester_become_access(tickets: Path) -> None:
    found = docs(make(tickets))
    assert found["101"].access == Access(groups=("support",))
    assert found["102"].access == Access(users=("dana",), groups=("billing", "globex"))
    assert found["103"].access == STAFF
    assert found["104"].access == Access(groups=("billing",))  # explicit access wins over group
    assert docs(make(tickets, Access.private()))["103"].access == Access.private()


def test_urls(tickets: Path) -> None:
    found = docs(make(tickets))
    assert found["106"].url == "https://desk.example/t/106"
    assert found["101"].url is None


def test_bad_lines_are_failures_with_line_numbers(tickets: Path) -> None:
    changes = run_sync(make(tickets))
    fails = {c.external_id: c.reason for c in changes if isinstance(c, Failure)}
    assert set(fails) == {"line:5", "105"}
    assert "line 5 is not valid JSON" in fails["line:5"]
    assert "line 7" in fails["105"] and "not an ISO 8601 date" in fails["105"]
    assert item_ids(changes) == ["101", "102", "103", "line:5", "104", "105", "106"]


@pytest.mark.parametrize(
    ("line", "external_id", "expected"),
    [
        ('["a list"]', "line:2", "not an object"),
        (json.dumps({"subject": "no id"}), "line:2", "has no ticket id"),
        (json.dumps({"id": True, "subject": "bool id"}), "line:2", "has no ticket id"),
        (json.dumps({"id": 7}), "7", "has no subject"),
        (json.dumps({"id": 7, "subject": "  "}), "7", "has no subject"),
        (ticket(7, body=["not", "text"]), "7", "body must be a string"),
        (ticket(7, comments="nope"), "7", "comments must be a list"),
        (ticket(7, comments=[{"author": "a", "body": "b", "public": "no"}]), "7", "comment 1: public must be"),
        (ticket(7, comments=[{"body": "b", "created_at": "soon"}]), "7", "comment 1: created_at 'soon'"),
        (ticket(7, comments=[{"body": 5}]), "7", "comment 1: body must be a string"),
        (ticket(7, group="two words"), "7", "invalid group name"),
        (ticket(7, access={"groups": ["x"], "owner": "y"}), "7", "unknown access keys"),
        (ticket(7, access="support"), "7", "access must be a mapping"),
        (ticket(7, updated_at=20240501), "7", "updated_at must be an ISO 8601 string"),
    ],
)
def test_each_bad_ticket_is_a_failure_and_the_rest_goes_on(
    tmp_path: Path, line: str, external_id: str, expected: str
) -> None:
    path = export(tmp_path, ticket(1), line, ticket(3))
    changes = run_sync(make(path))
    assert [type(c) for c in changes] == [Upsert, Failure, Upsert, Checkpoint]
    assert changes[1].external_id == external_id
    assert expected in changes[1].reason and "line 2" in changes[1].reason


def test_comment_defaults(tmp_path: Path) -> None:
    path = export(tmp_path, ticket(1, comments=[{"body": "anonymous"}, {"author": "x", "body": ""}]))
    text = docs(make(path))["1"].text
    assert "## Comment by unknown\n\nanonymous" in text
    assert "Comment by x" not in text


def test_naive_dates_are_utc_and_offsets_kept(tmp_path: Path) -> None:
    path = export(
        tmp_path, ticket(1, updated_at="2024-05-01T09:30:00"), ticket(2, updated_at="2024-05-01T09:30:00+02:00")
    )
    found = docs(make(path))
    assert found["1"].updated_at == datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    assert found["2"].updated_at == datetime(2024, 5, 1, 7, 30, tzinfo=UTC)


def test_cursor_is_the_line_number(tickets: Path) -> None:
    changes = run_sync(make(tickets, checkpoint_every=3))
    assert [c.cursor for c in changes if isinstance(c, Checkpoint)] == [{"line": 3}, {"line": 7}, {}]
    assert item_ids(run_sync(make(tickets), {"line": 7})) == ["106"]
    assert item_ids(run_sync(make(tickets), {"line": 99})) == []


def test_list_ids_refuses_a_partial_listing(tmp_path: Path) -> None:
    path = export(tmp_path, ticket(1), json.dumps({"subject": "who am I"}), ticket(3))
    with pytest.raises(ConnectorError, match="line 2 has no ticket id"):
        make(path).list_ids()
    good = export(tmp_path, ticket(1), ticket("abc"), json.dumps({"id": 3}))  # no subject: still listed
    assert make(good).list_ids() == ["1", "abc", "3"]


def test_non_utf8_line_is_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(ticket(1).encode() + b"\n" + b'{"id": 2, "subject": "caf\xe9"}\n' + ticket(3).encode() + b"\n")
    changes = run_sync(make(path))
    assert item_ids(changes) == ["1", "line:2", "3"]
    assert "not valid UTF-8" in changes[1].reason


def test_validate_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="does not exist"):
        make(tmp_path / "missing.jsonl").validate()
    with pytest.raises(ConnectorError, match="is not a file"):
        make(tmp_path).validate()
    with pytest.raises(ConnectorError, match="does not exist"):
        run_sync(make(tmp_path / "missing.jsonl"))


def test_acme_example_tickets_parse() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "acme" / "tickets.jsonl"
    changes = run_sync(make(path, Access.private()))
    assert not [c for c in changes if isinstance(c, Failure)]
    found = {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}
    assert len(found) == len(make(path).list_ids()) >= 10
    assert all({"support", "billing"} & set(doc.access.groups) for doc in found.values())
