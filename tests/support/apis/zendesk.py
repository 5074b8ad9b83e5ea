"""A fake Zendesk Support API: tickets, comments, users, groups and organizations that tests change.

Every answer is rendered from the recorded responses under ``tests/fixtures/replay/zendesk/`` (the
documented shapes, ids and names changed): the cursor-based incremental ticket export with side-loads,
``end_of_stream``, ``after_cursor``/``after_url``; ticket comments with ``next_page`` pagination; the
``users/me`` answer (an anonymous user for unauthenticated requests, as Zendesk does); and the
``{"error": ..., "description": ...}`` error bodies.

The export is ordered by a change sequence: every change (new ticket, update, deletion) moves the ticket to
the end of the stream, as Zendesk orders by the time of the last change. A cursor is the opaque encoding of
the last sequence number a page held.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.replay import FakeApi, Reply, Request

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "replay" / "zendesk"
EMAIL = "bot@example.com"
TOKEN = "zd-api-token"
OAUTH_TOKEN = "zd-oauth-token"
EPOCH = 1_709_000_000


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Ticket:
    id: int
    subject: str
    status: str = "open"
    group_id: int | None = None
    organization_id: int | None = None
    requester_id: int | None = None
    comments: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0


class ZendeskApi(FakeApi):
    """State a test changes between syncs; see the module docstring."""

    def __init__(self) -> None:
        export = _fixture("incremental_tickets_cursor.json")
        self._ticket_template = export["tickets"][0]
        self._user_template = export["users"][0]
        self._group_template = export["groups"][0]
        self._org_template = export["organizations"][0]
        self._comment_template = _fixture("ticket_comments.json")["comments"][0]
        self._errors = _fixture("errors.json")
        self.tickets: dict[int, Ticket] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.groups: dict[int, str] = {}
        self.organizations: dict[int, str] = {}
        self.comment_page_size = 100
        self._seq = 0

    # -- state tests change -------------------------------------------------------------------------
    def add_user(self, user_id: int, name: str, email: str) -> None:
        self.users[user_id] = {"name": name, "email": email}

    def add_ticket(self, ticket_id: int, subject: str, *comments: tuple[int, str, bool], **fields: Any) -> Ticket:
        ticket = Ticket(ticket_id, subject, **fields)
        for author, body, public in comments:
            self._comment(ticket, author, body, public)
        self.tickets[ticket_id] = ticket
        self._touch(ticket)
        return ticket

    def update_ticket(self, ticket_id: int, **fields: Any) -> None:
        ticket = self.tickets[ticket_id]
        for key, value in fields.items():
            setattr(ticket, key, value)
        self._touch(ticket)

    def add_comment(self, ticket_id: int, author: int, body: str, public: bool = True) -> None:
        self._comment(self.tickets[ticket_id], author, body, public)
        self._touch(self.tickets[ticket_id])

    def delete_ticket(self, ticket_id: int) -> None:
        self.update_ticket(ticket_id, status="deleted")

    def _comment(self, ticket: Ticket, author: int, body: str, public: bool) -> None:
        ticket.comments.append({"id": 50_000 + ticket.id * 100 + len(ticket.comments), "author_id": author,
                                "body": body, "public": public})

    def _touch(self, ticket: Ticket) -> None:
        self._seq += 1
        ticket.seq = self._seq

    # -- FakeApi ------------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        if request.path == "/api/v2/users/me.json" and "authorization" not in request.headers:
            return True  # Zendesk answers an anonymous user here, not 401
        return self._signed_in(request)

    def _signed_in(self, request: Request) -> bool:
        basic = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
        return request.headers.get("authorization") in (f"Basic {basic}", f"Bearer {OAUTH_TOKEN}")

    def error(self, status: int, message: str) -> Reply:
        body = copy.deepcopy(self._errors.get(str(status), {"error": "Error", "description": message}))
        return Reply(status, body)

    def handle(self, request: Request) -> Reply:
        path = request.path
        if path == "/api/v2/users/me.json":
            return Reply(200, _fixture("users_me.json" if self._signed_in(request) else "users_me_anonymous.json"))
        if path == "/api/v2/incremental/tickets/cursor.json":
            return self._export(request)
        parts = path.split("/")
        if len(parts) == 5 and parts[3] == "tickets" and parts[4].endswith(".json"):
            ticket = self._live(parts[4].removesuffix(".json"))
            if ticket is None:
                return self.error(404, "no such ticket")
            return Reply(200, {"ticket": self._render(ticket), **self._sideloads([ticket])})
        if len(parts) == 6 and parts[3] == "tickets" and parts[5] == "comments.json":
            ticket = self._live(parts[4])
            if ticket is None:
                return self.error(404, "no such ticket")
            return self._comments(request, ticket)
        return self.error(404, f"no route {path}")

    # -- rendering ----------------------------------------------------------------------------------
    def _live(self, raw_id: str) -> Ticket | None:
        ticket = self.tickets.get(int(raw_id)) if raw_id.isdigit() else None
        return None if ticket is None or ticket.status == "deleted" else ticket

    def _export(self, request: Request) -> Reply:
        per_page = int(request.arg("per_page") or 1000)
        if request.arg("cursor"):
            after = int(base64.b64decode(request.arg("cursor") or "").decode().split("|")[1])
            pending = [t for t in self.tickets.values() if t.seq > after]
        elif request.arg("start_time") is not None:
            start = int(request.arg("start_time") or 0)
            pending = [t for t in self.tickets.values() if EPOCH + t.seq >= start]
            after = 0
        else:
            return Reply(400, {"error": "InvalidPaginationParameter", "description": "start_time or cursor required"})
        pending.sort(key=lambda t: t.seq)
        page = pending[:per_page]
        last = page[-1].seq if page else max([after, *(t.seq for t in self.tickets.values())])
        cursor = base64.b64encode(f"{EPOCH + last}.0|{last}|".encode()).decode()
        base = f"http://{request.headers.get('host')}"
        body = {"tickets": [self._render(t) for t in page],
                "after_url": f"{base}/api/v2/incremental/tickets/cursor.json?cursor={cursor}",
                "after_cursor": cursor, "before_url": None, "before_cursor": None,
                "end_of_stream": len(pending) <= per_page}
        if "include" in request.query:
            body.update(self._sideloads(page))
        return Reply(200, body)

    def _render(self, ticket: Ticket) -> dict[str, Any]:
        out = copy.deepcopy(self._ticket_template)
        stamp = _iso(EPOCH + ticket.seq)
        out.update(url=out["url"].replace("4101", str(ticket.id)), id=ticket.id, subject=ticket.subject,
                   raw_subject=ticket.subject, status=ticket.status, group_id=ticket.group_id,
                   organization_id=ticket.organization_id, requester_id=ticket.requester_id,
                   submitter_id=ticket.requester_id, updated_at=stamp, generated_timestamp=EPOCH + ticket.seq,
                   description=ticket.comments[0]["body"] if ticket.comments else "")
        return out

    def _sideloads(self, tickets: list[Ticket]) -> dict[str, list[dict[str, Any]]]:
        users = {t.requester_id for t in tickets} & set(self.users)
        groups = {t.group_id for t in tickets} & set(self.groups)
        orgs = {t.organization_id for t in tickets} & set(self.organizations)
        return {"users": [self._user(u) for u in sorted(users)],
                "groups": [dict(copy.deepcopy(self._group_template), id=g, name=self.groups[g],
                                url=f"https://example.zendesk.com/api/v2/groups/{g}.json") for g in sorted(groups)],
                "organizations": [dict(copy.deepcopy(self._org_template), id=o, name=self.organizations[o],
                                       url=f"https://example.zendesk.com/api/v2/organizations/{o}.json")
                                  for o in sorted(orgs)]}

    def _user(self, user_id: int) -> dict[str, Any]:
        return dict(copy.deepcopy(self._user_template), id=user_id, **self.users[user_id],
                    url=f"https://example.zendesk.com/api/v2/users/{user_id}.json")

    def _comments(self, request: Request, ticket: Ticket) -> Reply:
        page_no = int(request.arg("page") or 1)
        size = min(int(request.arg("per_page") or 100), self.comment_page_size)
        chunk = ticket.comments[(page_no - 1) * size : page_no * size]
        base = f"http://{request.headers.get('host')}/api/v2/tickets/{ticket.id}/comments.json"
        more = page_no * size < len(ticket.comments)
        comments = []
        for number, comment in enumerate(chunk):
            out = copy.deepcopy(self._comment_template)
            out.update(id=comment["id"], author_id=comment["author_id"], body=comment["body"],
                       plain_body=comment["body"], html_body=f"<p>{comment['body']}</p>", public=comment["public"],
                       created_at=_iso(EPOCH + 60 * ((page_no - 1) * size + number)))
            comments.append(out)
        body: dict[str, Any] = {
            "comments": comments,
            "next_page": f"{base}?page={page_no + 1}&per_page={size}&include=users" if more else None,
            "previous_page": f"{base}?page={page_no - 1}&per_page={size}" if page_no > 1 else None,
            "count": len(ticket.comments)}
        if request.arg("include") == "users":
            authors = {c["author_id"] for c in chunk} & set(self.users)
            body["users"] = [self._user(u) for u in sorted(authors)]
        return Reply(200, body)


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
