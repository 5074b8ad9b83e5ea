"""Zendesk Support connector: tickets and their comments over the Zendesk REST API.

Config (``[sources.config]``)::

    subdomain = "acme"                      # or base_url = "https://acme.zendesk.com"
    email = "bot@acme.example"              # API token auth: Basic "email/token:api_token"
    api_token = "env:ZENDESK_API_TOKEN"     # ... or oauth_token = "env:ZENDESK_OAUTH_TOKEN" (Bearer)
    start_time = 0                          # Unix time the first export starts from
    include_internal_comments = false       # index internal notes ("public": false) too
    group_access = {"Billing" = ["billing"], "360001" = ["tier2"]}   # Zendesk group name or id → entries
    organization_access = {"Globex" = ["globex-staff", "user:dana"]} # organization name or id → entries
    name_groups = true                      # unmapped ones become "group:<name>" / "org:<name>"
    requester_access = false                # the requester's email as a user grant

plus the :class:`~citeline.connectors._http.ApiConfig` keys (``page_size`` = tickets per export page,
``request_budget``, ``max_retries``, ``backoff_s``, ``max_retry_after_s``, ``timeout_s``).

* **Reading**: the cursor-based incremental ticket export
  (``GET /api/v2/incremental/tickets/cursor.json?start_time=…`` then ``?cursor=…``, with the ticket's
  users, groups and organizations side-loaded) until ``end_of_stream``; each ticket's comments from
  ``GET /api/v2/tickets/{id}/comments.json`` (``next_page`` links). Only public comments are indexed
  unless ``include_internal_comments`` is set; the text is ``# subject``, a status line and one
  ``## Comment by NAME (created_at)`` section per comment.
* **Id**: the ticket id as a string; the URL is ``base_url/agent/tickets/<id>``.
* **Access**: the ticket's group and organization, each through its mapping entry (``public``,
  ``user:NAME`` or group names), else — with ``name_groups`` — the group ``group:<name>`` /
  ``org:<name>`` (lower case, spaces as ``-``); with ``requester_access`` the requester's email is a user
  grant. A ticket with none of these takes the source's default access; one whose group or
  organization maps to nothing is private (fail closed).
* **Deletions**: the export reports a deleted ticket with ``"status": "deleted"``: a Delete. A ticket
  whose comments answer 404 is gone too. ``list_ids()`` is ``None`` (no pruning needed).
* **Failures**: a ticket whose comments answer 5xx after the retries is a Failure; its id travels in the
  cursor (``retry``) and is fetched again (``GET /api/v2/tickets/{id}.json``) at the end of the next
  sync, because the export has moved past it. 401/403, a spent request budget, a long Retry-After or
  an unreachable API end the run; the next one resumes from the last checkpoint.
* **Cursor**: ``{"cursor": after_cursor, "retry": [ids]}``, checkpointed after every export page (a
  Zendesk cursor points between pages, so ``page_size`` rather than ``checkpoint_every`` sets how often).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field, model_validator

from citeline.connectors._api_items import AccessMapping, as_change, change_id, fetch_item, grants, retry_ids
from citeline.connectors._common import ItemError, coerce_config, parse_datetime
from citeline.connectors._http import ApiClient, ApiConfig, CredentialsRejected, Secret
from citeline.contracts.connector import Change, Checkpoint, Delete, Failure
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["ZendeskConnector"]

EXPORT = "/api/v2/incremental/tickets/cursor.json"
SIDELOADS = "users,groups,organizations"
_SUBDOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _subdomain(value: str | None) -> str | None:
    if value is not None and not _SUBDOMAIN.match(value):
        raise ValueError(f"{value!r} is not a Zendesk subdomain: use the 'acme' of acme.zendesk.com")
    return value


class ZendeskConfig(ApiConfig):
    subdomain: Annotated[str | None, AfterValidator(_subdomain)] = Field(None, description="acme of acme.zendesk.com")
    email: str | None = Field(None, description="agent email for API-token auth")
    api_token: Secret | None = Field(None, description="API token (with email), or env:NAME")
    oauth_token: Secret | None = Field(None, description="OAuth access token (instead of email + api_token)")
    start_time: int = Field(0, ge=0, description="Unix time the first export starts from")
    include_internal_comments: bool = Field(False, description="index internal notes too")
    group_access: AccessMapping = Field(default_factory=dict, description="group name or id → entries")
    organization_access: AccessMapping = Field(default_factory=dict,
                                                      description="organization name or id → entries")
    name_groups: bool = Field(True, description='unmapped group/organization → "group:<name>"/"org:<name>"')
    requester_access: bool = Field(False, description="the requester's email as a user grant")

    @model_validator(mode="before")
    @classmethod
    def _url_from_subdomain(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("base_url") and data.get("subdomain"):
            return {**data, "base_url": f"https://{data['subdomain']}.zendesk.com"}
        if isinstance(data, Mapping) and not data.get("base_url"):
            raise ValueError("set subdomain (acme of acme.zendesk.com) or base_url")
        return data

    @model_validator(mode="after")
    def _one_auth(self) -> ZendeskConfig:
        token_auth = self.email is not None or self.api_token is not None
        if token_auth and self.oauth_token is not None:
            raise ValueError("use either email + api_token or oauth_token, not both")
        if token_auth and (self.email is None or self.api_token is None):
            raise ValueError("API-token auth needs both email and api_token")
        if not token_auth and self.oauth_token is None:
            raise ValueError("set email + api_token (an API token) or oauth_token")
        return self


@dataclass
class _Lookups:
    """Side-loaded users, groups and organizations by id, accumulated over the export pages."""

    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    organizations: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, page: Mapping[str, Any]) -> None:
        for key in ("users", "groups", "organizations"):
            for item in page.get(key) or ():
                if isinstance(item, Mapping) and isinstance(item.get("id"), int):
                    getattr(self, key)[item["id"]] = dict(item)


class ZendeskConnector:
    """Zendesk Support tickets; see the module docstring."""

    Config = ZendeskConfig

    def __init__(self, config: ZendeskConfig | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(ZendeskConfig, config)
        self.default_access = default_access or Access.private()

    # -- the contract -------------------------------------------------------------------------------
    def validate(self) -> None:
        with self._client() as client:
            self._validate_answer(client.get_json("/api/v2/users/me.json"))

    def _validate_answer(self, me: Any) -> None:
        user = me.get("user") if isinstance(me, Mapping) else None
        if not isinstance(user, Mapping) or user.get("id") is None:  # Zendesk answers anonymous users with 200
            raise CredentialsRejected(f"zendesk {self.config.base_url}: the credentials were not accepted "
                                      f"(signed in as an anonymous user): {self._fix}")

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        position, retry = _read_cursor(cursor)
        failed: list[str] = []
        seen: set[str] = set()
        lookups = _Lookups()
        with self._client() as client:
            params: dict[str, Any] = {"cursor": position} if position else {"start_time": self.config.start_time}
            while True:
                page = client.get_json(EXPORT, {**params, "per_page": self.config.page_size, "include": SIDELOADS})
                tickets, after, end = _export_page(page)
                lookups.add(page)
                for ticket in tickets:
                    change = self._ticket_change(client, ticket, lookups)
                    seen.add(change_id(change))
                    if isinstance(change, Failure):
                        failed.append(change.external_id)
                    yield change
                position = after or position
                if end:
                    break
                yield Checkpoint(_cursor(position, retry + failed))
                params = {"cursor": after}
            for ticket_id in retry:
                if ticket_id in seen:
                    continue
                change = self._refetch(client, ticket_id, lookups)
                if isinstance(change, Failure):
                    failed.append(ticket_id)
                yield change
        yield Checkpoint(_cursor(position, failed))

    def list_ids(self) -> None:
        """Zendesk's export reports deleted tickets itself: nothing to prune."""
        return None

    # -- tickets ------------------------------------------------------------------------------------
    def _ticket_change(self, client: ApiClient, ticket: Mapping[str, Any], lookups: _Lookups) -> Change:
        ticket_id = _ticket_id(ticket)
        if ticket.get("status") == "deleted":
            return Delete(ticket_id)
        result = fetch_item(ticket_id, lambda: self._document(client, ticket_id, ticket, lookups))
        return as_change(ticket_id, result)

    def _refetch(self, client: ApiClient, ticket_id: str, lookups: _Lookups) -> Change:
        def build() -> Document | Delete:
            body = client.get_json(f"/api/v2/tickets/{ticket_id}.json", {"include": SIDELOADS})
            if not isinstance(body, Mapping) or not isinstance(body.get("ticket"), Mapping):
                raise ItemError("GET /api/v2/tickets/{id}.json answered without a ticket object")
            lookups.add(body)
            if body["ticket"].get("status") == "deleted":
                return Delete(ticket_id)
            return self._document(client, ticket_id, body["ticket"], lookups)

        result = fetch_item(ticket_id, build)
        return as_change(ticket_id, result)

    def _document(self, client: ApiClient, ticket_id: str, ticket: Mapping[str, Any],
                  lookups: _Lookups) -> Document:
        subject = str(ticket.get("subject") or ticket.get("raw_subject") or "").strip() or f"Ticket {ticket_id}"
        comments = self._comments(client, ticket_id, lookups)
        updated = ticket.get("updated_at")
        group = lookups.groups.get(ticket.get("group_id") or -1, {}).get("name")
        organization = lookups.organizations.get(ticket.get("organization_id") or -1, {}).get("name")
        metadata = {"status": ticket.get("status"), "priority": ticket.get("priority"), "type": ticket.get("type"),
                    "group": group, "organization": organization}
        return Document(
            external_id=ticket_id,
            title=subject,
            text=_render(subject, ticket, comments, lookups),
            access=self._access(ticket, lookups),
            url=f"{self.config.base_url}/agent/tickets/{ticket_id}",
            content_type=ContentType.MARKDOWN,
            updated_at=parse_datetime(updated, "updated_at") if updated is not None else None,
            metadata={k: str(v) for k, v in metadata.items() if v},
        )

    def _comments(self, client: ApiClient, ticket_id: str, lookups: _Lookups) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        url: str | None = f"/api/v2/tickets/{ticket_id}/comments.json"
        params: dict[str, Any] | None = {"include": "users", "per_page": self.config.page_size}
        while url:
            body = client.get_json(url, params)
            if not isinstance(body, Mapping) or not isinstance(body.get("comments"), list):
                raise ItemError(f"comments of ticket {ticket_id}: the answer has no comments list")
            lookups.add(body)
            out.extend(c for c in body["comments"] if isinstance(c, Mapping)
                       and (c.get("public", True) is True or self.config.include_internal_comments))
            url, params = body.get("next_page"), None  # next_page carries its own query
        return out

    def _access(self, ticket: Mapping[str, Any], lookups: _Lookups) -> Access:
        entries: list[str] = []
        explicit = False
        for key, table, mapping, prefix in (
            ("group_id", lookups.groups, self.config.group_access, "group"),
            ("organization_id", lookups.organizations, self.config.organization_access, "org"),
        ):
            item_id = ticket.get(key)
            if item_id is None:
                continue
            explicit = True
            name = table.get(item_id, {}).get("name")
            mapped = mapping.get(str(item_id), mapping.get(name) if name else None)
            if mapped is not None:
                entries.extend(mapped)
            elif self.config.name_groups:
                entries.append(f"{prefix}:{_slug(name) if name else item_id}")
        if self.config.requester_access and ticket.get("requester_id") is not None:
            explicit = True
            email = lookups.users.get(ticket["requester_id"], {}).get("email")
            if email:
                entries.append(f"user:{email}")
        if not explicit:
            return self.default_access
        return grants(entries, "group/organization access")

    # -- plumbing -----------------------------------------------------------------------------------
    @property
    def _fix(self) -> str:
        if self.config.oauth_token is not None:
            return "the OAuth token is invalid or expired: issue a new one and update config.oauth_token"
        return ("check config.email and create a new API token (Admin Center > Apps and integrations > "
                "Zendesk API), then update config.api_token")

    def _client(self) -> ApiClient:
        auth: httpx.Auth | None = None
        headers: dict[str, str] = {}
        if self.config.oauth_token is not None:
            headers["Authorization"] = f"Bearer {self.config.oauth_token.get_secret_value()}"
        else:
            assert self.config.api_token is not None
            auth = httpx.BasicAuth(f"{self.config.email}/token", self.config.api_token.get_secret_value())
        return ApiClient(self.config, source=f"zendesk {self.config.base_url}", auth=auth, headers=headers,
                         fix_credentials=self._fix)


def _read_cursor(cursor: Mapping[str, Any] | None) -> tuple[str | None, list[str]]:
    if not cursor:
        return None, []
    if set(cursor) - {"cursor", "retry"} or not isinstance(cursor.get("cursor", ""), str | None):
        raise ConnectorError(f"cursor {dict(cursor)!r} was not written by the zendesk connector (expected "
                             "{'cursor': str, 'retry': [ids]}): reset the source's sync state to start over")
    return cursor.get("cursor") or None, retry_ids(cursor)


def _cursor(position: str | None, retry: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"cursor": position} if position else {}
    if retry:
        out["retry"] = sorted(set(retry), key=lambda i: (len(i), i))
    return out


def _export_page(page: Any) -> tuple[list[Mapping[str, Any]], str | None, bool]:
    if not isinstance(page, Mapping) or not isinstance(page.get("tickets"), list):
        raise ConnectorError(f"zendesk: {EXPORT} answered without a tickets list: check config.base_url")
    after = page.get("after_cursor")
    tickets = [t for t in page["tickets"] if isinstance(t, Mapping)]
    return tickets, after if isinstance(after, str) else None, bool(page.get("end_of_stream", True))


def _ticket_id(ticket: Mapping[str, Any]) -> str:
    value = ticket.get("id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConnectorError(f"zendesk: an exported ticket has no integer id ({value!r}): the export format changed")
    return str(value)




def _slug(name: str) -> str:
    return re.sub(r"\s+", "-", name.strip().lower())


def _render(subject: str, ticket: Mapping[str, Any], comments: list[Mapping[str, Any]], lookups: _Lookups) -> str:
    parts = [f"# {subject}"]
    facts = [f"{label}: {ticket[key]}" for key, label in (("status", "Status"), ("priority", "Priority"),
                                                            ("type", "Type")) if ticket.get(key)]
    if facts:
        parts.append("\n".join(facts))
    for comment in comments:
        body = str(comment.get("body") or comment.get("plain_body") or "").strip()
        if not body:
            continue
        author = lookups.users.get(comment.get("author_id") or -1, {}).get("name") or "unknown"
        kind = "Comment" if comment.get("public", True) is True else "Internal note"
        when = f" ({comment['created_at']})" if comment.get("created_at") else ""
        parts.append(f"## {kind} by {author}{when}\n\n{body}")
    return "\n\n".join(parts) + "\n"
