"""Jira connector: issues and their comments over the Jira REST API v2 (Cloud and Data Center).

Config (``[[sources]] connector = "jira"``)::

    [sources.config]
    base_url = "https://acme.atlassian.net"        # Data Center: https://jira.example.com
    email = "bot@acme.example"                     # Cloud: Basic email:API token; leave out for a DC PAT (Bearer)
    token = "env:JIRA_TOKEN"
    projects = ["OPS", "SEC"]                      # and/or jql = "labels = kb" (no ORDER BY)
    project_access = {OPS = ["ops"], SEC = ["security", "user:dana"]}   # "public", "user:NAME", groups
    security_level_access = {Internal = ["staff"]}  # issue security level (name or id) -> access
    time_zone = "UTC"                              # the API user's profile time zone (JQL reads dates in it)
    overlap_minutes = 5

plus :class:`~citeline.connectors._http.ApiConfig`'s retry, backoff, ``request_budget`` and ``page_size``.

* **Id**: the issue id (stable when an issue moves and its key changes); the key is in the title and URL
  (``base_url/browse/KEY``). **Text**: ``# KEY: summary``, status and type, the description, then one
  ``## Comment by author (created)`` section per comment. Comments with a ``visibility`` (restricted to a
  role or group) are left out: the issue's audience is wider than theirs.
* **Access**: an issue with a security level gets ``security_level_access`` for that level (by name, else
  id) and is private when the level is not mapped (fail closed); otherwise its project's
  ``project_access``; otherwise the source's default (private unless configured). Setting or clearing a
  security level updates the issue, so the next sync re-reads it. A change of the mappings needs
  ``citeline sync --full``.
* **Changes**: ``/rest/api/2/search`` with JQL ``(scope) AND updated >= "yyyy/MM/dd HH:mm" ORDER BY
  updated ASC, key ASC`` (see :mod:`citeline.connectors._atlassian`); comments beyond those embedded in
  the search result are paged from ``/rest/api/2/issue/{id}/comment``.
* **Deletions**: Jira has no deletion feed: ``list_ids()`` lists every issue in scope (``startAt`` pages
  checked against ``total``: a listing that changed while it was read raises, so nothing is pruned from
  it). Deleted issues, issues moved out of scope or hidden from the API user are pruned. An issue found
  gone while its comments are read is a Delete.
* **Failures**: comments that cannot be read after the retries make that issue a Failure (its previous
  version stays) and put its id in the cursor's ``retry`` list: the next sync reads it again
  (``/rest/api/2/issue/{id}``) even if it did not change; 401/403 (:class:`CredentialsRejected`), an exhausted budget or a search that stays
  unavailable end the run, keeping the last checkpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from citeline.connectors._atlassian import (
    Stamped,
    TimeZoneName,
    auth_headers,
    changed_items,
    overlap_field,
    parse_instant,
    query_time,
    read_position,
)
from citeline.connectors._common import ItemError, access_from_entries, coerce_config, optional_str
from citeline.connectors._http import (
    ApiClient,
    ApiConfig,
    ApiError,
    BudgetExhausted,
    CredentialsRejected,
    NotFound,
    Secret,
)
from citeline.connectors.interfaces import Change, Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["JiraConnector"]

log = logging.getLogger(__name__)

_FIELDS = "summary,description,comment,updated,created,project,security,status,issuetype"
_FIX_CREDENTIALS = ("create a new API token at id.atlassian.com (Cloud, with config.email) or a personal access "
                    "token (Data Center, without email), put it in config.token, and check the user may browse "
                    "the projects")


def _project_key(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} is not a Jira project key (e.g. OPS)")
    return value


def _scope_jql(value: str | None) -> str | None:
    if value is not None and re.search(r"\border\s+by\b", value, re.IGNORECASE):
        raise ValueError("jql must not have an ORDER BY: the connector orders by updated")
    return value


def _entries(value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    for key, entries in value.items():
        try:
            access_from_entries(entries, key)
        except ItemError as exc:
            raise ValueError(str(exc)) from None
    return value


AccessMap = Annotated[dict[str, tuple[str, ...]], AfterValidator(_entries)]


class JiraConnector:
    """Jira issues with comments, access from security level or project; see the module docstring."""

    class Config(ApiConfig):
        email: str | None = Field(None, description="Cloud: the account's email (Basic auth); unset: Bearer PAT")
        token: Secret = Field(description="API token (Cloud) or personal access token (Data Center)")
        projects: tuple[Annotated[str, AfterValidator(_project_key)], ...] = ()
        jql: Annotated[str | None, AfterValidator(_scope_jql)] = Field(None, description="extra scope, no ORDER BY")
        project_access: AccessMap = Field(default_factory=dict)
        security_level_access: AccessMap = Field(default_factory=dict)
        time_zone: TimeZoneName = "UTC"
        overlap_minutes: int = overlap_field()

        @model_validator(mode="after")
        def _has_scope(self) -> JiraConnector.Config:
            if not self.projects and not (self.jql or "").strip():
                raise ValueError("set projects (keys) or jql: the connector does not read a whole site by accident")
            return self

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self._overlap = timedelta(minutes=self.config.overlap_minutes)
        self._projects = {k: access_from_entries(v, k) for k, v in self.config.project_access.items()}
        self._levels = {k: access_from_entries(v, k) for k, v in self.config.security_level_access.items()}

    def _client(self) -> ApiClient:
        return ApiClient(self.config, source=f"jira {self.config.base_url}",
                         headers=auth_headers(self.config.email, self.config.token), fix_credentials=_FIX_CREDENTIALS)

    # -- the contract -------------------------------------------------------------------------------
    def validate(self) -> None:
        with self._client() as api:
            api.get_json("rest/api/2/myself")
            for key in self.config.projects:
                try:
                    api.get_json(f"rest/api/2/project/{key}")
                except NotFound:
                    raise ConnectorError(f"jira: project {key} does not exist or is not visible to these credentials:"
                                         " fix config.projects or give the user Browse permission") from None

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        position = read_position(cursor, frozenset({"retry"}))
        retry = _retry(cursor)
        seen: set[str] = set()
        count = 0
        with self._client() as api:
            for position, stamped in changed_items(lambda lo, tok: self._search_page(api, lo, tok), position,
                                                   self._overlap):
                yield self._tracked(self._issue_change(api, stamped.item), retry)
                seen.add(stamped.id)
                count += 1
                if count % self.config.checkpoint_every == 0:
                    yield Checkpoint(_cursor(position.cursor(), retry))
            for issue_id in sorted(retry - seen, key=int):  # failed in an earlier sync and not changed since
                yield self._tracked(self._reread(api, issue_id), retry)
                count += 1
                if count % self.config.checkpoint_every == 0:
                    yield Checkpoint(_cursor(position.cursor(), retry))
        yield Checkpoint(_cursor(position.final().cursor(), retry))

    @staticmethod
    def _tracked(change: Change, retry: set[str]) -> Change:
        """Remember failed issues in the cursor (``retry``) so the next sync reads them again."""
        if isinstance(change, Failure):
            retry.add(change.external_id)
        elif isinstance(change, Upsert):
            retry.discard(change.document.external_id)
        elif isinstance(change, Delete):
            retry.discard(change.external_id)
        return change

    def _reread(self, api: ApiClient, issue_id: str) -> Change:
        try:
            issue = api.get_json(f"rest/api/2/issue/{issue_id}", {"fields": _FIELDS})
        except NotFound:
            return Delete(issue_id)
        except (CredentialsRejected, BudgetExhausted):
            raise
        except ApiError as exc:
            return Failure(issue_id, f"issue {issue_id} (failed before) cannot be read: {exc}")
        return self._issue_change(api, issue)

    def list_ids(self) -> list[str]:
        ids: list[str] = []
        totals: set[int] = set()
        with self._client() as api:
            start = 0
            while True:
                data = self._search(api, f"{self._scope()} ORDER BY created ASC, key ASC", start, "created")
                issues, total = _issues(data), data.get("total")
                if isinstance(total, int):
                    totals.add(total)
                ids.extend(str(issue["id"]) for issue in issues)
                start += len(issues)
                if not issues or (isinstance(total, int) and start >= total):
                    break
        if len(totals) > 1 or (totals and len(ids) != totals.pop()) or len(ids) != len(set(ids)):
            raise ApiError("jira: the issue listing changed while it was read (its total moved or issues repeated); "
                           "nothing is pruned this time, the next sync lists again")
        return ids

    # -- reading ------------------------------------------------------------------------------------
    def _scope(self) -> str:
        parts = []
        if self.config.projects:
            parts.append("project in ({})".format(", ".join(f'"{key}"' for key in self.config.projects)))
        if (self.config.jql or "").strip():
            parts.append(f"({self.config.jql})")
        return " AND ".join(parts)

    def _search(self, api: ApiClient, jql: str, start: int, fields: str) -> dict[str, Any]:
        return api.get_json("rest/api/2/search", {"jql": jql, "startAt": start, "maxResults": self.config.page_size,
                                                  "fields": fields})

    def _search_page(self, api: ApiClient, lower: Any, token: Any) -> tuple[list[Stamped[dict]], Any]:
        jql = self._scope()
        if lower is not None:
            jql += f' AND updated >= "{query_time(lower, self.config.time_zone, "%Y/%m/%d %H:%M")}"'
        start = token or 0
        data = self._search(api, f"{jql} ORDER BY updated ASC, key ASC", start, _FIELDS)
        issues, total = _issues(data), data.get("total")
        items = []
        for issue in issues:
            try:
                items.append(Stamped(str(issue["id"]), parse_instant(issue["fields"]["updated"], "updated"), issue))
            except (KeyError, TypeError, ItemError) as exc:
                raise ApiError(f"jira: a search result lacks its id or fields.updated ({exc}): the connector and "
                               "this Jira version disagree; report it") from None
        following = start + len(issues)
        more = bool(issues) and (following < total if isinstance(total, int) else len(issues) >= self.config.page_size)
        return items, following if more else None

    def _comments(self, api: ApiClient, issue: Mapping[str, Any]) -> list[dict[str, Any]]:
        embedded = (issue.get("fields") or {}).get("comment") or {}
        comments = list(embedded.get("comments") or [])
        total = embedded.get("total")
        if not isinstance(total, int) or len(comments) >= total:
            return comments
        comments, start = [], 0
        while True:
            page = api.get_json(f"rest/api/2/issue/{issue['id']}/comment",
                                {"startAt": start, "maxResults": self.config.page_size, "orderBy": "created"})
            batch = page.get("comments") or []
            comments.extend(batch)
            start += len(batch)
            if not batch or start >= int(page.get("total") or 0):
                return comments

    # -- mapping ------------------------------------------------------------------------------------
    def _issue_change(self, api: ApiClient, issue: Mapping[str, Any]) -> Change:
        issue_id = str(issue["id"])
        try:
            comments = self._comments(api, issue)
        except NotFound:
            return Delete(issue_id)
        except (CredentialsRejected, BudgetExhausted):
            raise
        except ApiError as exc:  # SourceUnavailable after the retries, or an odd answer
            return Failure(issue_id, f"{issue.get('key', issue_id)}: comments cannot be read: {exc}")
        try:
            return Upsert(self._document(issue_id, issue, comments))
        except (ItemError, KeyError, TypeError) as exc:
            return Failure(issue_id, f"{issue.get('key', issue_id)}: {exc}")

    def _access(self, fields: Mapping[str, Any]) -> Access:
        security = fields.get("security")
        if isinstance(security, Mapping):
            for name in (security.get("name"), security.get("id")):
                if isinstance(name, str) and name in self._levels:
                    return self._levels[name]
            log.warning("jira: security level %r has no entry in security_level_access: the issue is private",
                        security.get("name"))
            return Access.private()
        project = (fields.get("project") or {}).get("key")
        return self._projects.get(project or "", self.default_access)

    def _document(self, issue_id: str, issue: Mapping[str, Any], comments: list[dict[str, Any]]) -> Document:
        fields = issue.get("fields") or {}
        key = str(issue.get("key") or issue_id)
        summary = (optional_str(fields, "summary") or "").strip()
        if not summary:
            raise ItemError("has no summary")
        parts = [f"# {key}: {summary}"]
        status = (fields.get("status") or {}).get("name")
        kind = (fields.get("issuetype") or {}).get("name")
        if status or kind:
            parts.append(" · ".join(x for x in (f"Type: {kind}" if kind else "", f"Status: {status}" if status else "")
                                    if x))
        description = optional_str(fields, "description") or ""
        if description.strip():
            parts.append(description.strip())
        for comment in comments:
            body = comment.get("body")
            if comment.get("visibility") or not isinstance(body, str) or not body.strip():
                continue
            author = ((comment.get("author") or {}).get("displayName") or "unknown").strip()
            when = f" ({comment['created']})" if comment.get("created") else ""
            parts.append(f"## Comment by {author}{when}\n\n{body.strip()}")
        return Document(
            external_id=issue_id,
            title=f"{key}: {summary}",
            text="\n\n".join(parts) + "\n",
            access=self._access(fields),
            url=f"{self.config.base_url}/browse/{key}",
            content_type=ContentType.MARKDOWN,
            updated_at=parse_instant(fields.get("updated"), "updated"),
            metadata={k: str(v) for k, v in (("key", key), ("project", (fields.get("project") or {}).get("key")),
                                               ("status", status), ("type", kind)) if v},
        )


def _retry(cursor: Mapping[str, Any] | None) -> set[str]:
    value = (cursor or {}).get("retry", [])
    if not isinstance(value, list) or not all(isinstance(i, str) and i.isdigit() for i in value):
        raise ConnectorError(f"cursor's 'retry' is not a list of issue ids: {value!r}; reset the source's sync state")
    return set(value)


def _cursor(position: dict[str, Any], retry: set[str]) -> dict[str, Any]:
    return {**position, "retry": sorted(retry, key=int)} if retry else position


def _issues(data: Any) -> list[dict[str, Any]]:
    issues = data.get("issues") if isinstance(data, dict) else None
    if not isinstance(issues, list):
        raise ApiError("jira: /rest/api/2/search answered without an issues list: check config.base_url is the "
                       "site root (https://SITE.atlassian.net)")
    return issues
