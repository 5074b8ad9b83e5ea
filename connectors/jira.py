"""Jira connector: issues and their comments over the Jira REST API (Cloud v3, Data Center v2).

Config (``[[sources]] connector = "jira"``)::

    [sources.config]
    base_url = "https://acme.atlassian.net"        # Data Center: https://jira.example.com
    api = "cloud"                                  # or "datacenter"; unset: "cloud" for *.atlassian.net
    email = "bot@acme.example"                     # Cloud: Basic email:API token; leave out for a DC PAT (Bearer)
    token = "env:JIRA_TOKEN"
    projects = ["OPS", "SEC"]                      # and/or jql = "labels = kb" (no ORDER BY)
    project_access = {OPS = ["ops"], SEC = ["security", "user:dana"]}   # "public", "user:NAME", groups
    security_level_access = {Internal = ["staff"]}  # issue security level (name or id) -> access
    time_zone = "UTC"                              # the API user's profile time zone (JQL reads dates in it)
    overlap_minutes = 5

plus :class:`~citeline.connectors._http.ApiConfig`'s retry, backoff, ``request_budget`` and ``page_size``.

* **API**: ``api = "cloud"`` speaks REST v3 (``/rest/api/3/...``): issues come from the enhanced JQL search
  ``GET /rest/api/3/search/jql`` (``jql``, ``fields``, ``maxResults``, ``nextPageToken``; pages end where
  ``isLast`` is true or no ``nextPageToken`` comes back; there is no ``total``) and descriptions and comments
  are Atlassian Document Format, turned into text by :mod:`citeline.connectors._adf`. Jira Cloud has removed
  ``/rest/api/{2,3}/search`` (it answers 410). ``api = "datacenter"`` speaks REST v2 (``/rest/api/2/...``):
  ``/rest/api/2/search`` paged by ``startAt`` and checked against ``total``; rich text is wiki markup, kept
  as it is. Unset, the host decides: ``*.atlassian.net`` (and ``api.atlassian.com``) is Cloud, any other
  host Data Center. Every request of a source (validate, search, listing, issue, comments) uses the one
  family.
* **Id**: the issue id (stable when an issue moves and its key changes); the key is in the title and URL
  (``base_url/browse/KEY``). **Text**: ``# KEY: summary``, status and type, the description, then one
  ``## Comment by author (created)`` section per comment. Comments with a ``visibility`` (restricted to a
  role or group) are left out: the issue's audience is wider than theirs.
* **Access**: an issue with a security level gets ``security_level_access`` for that level (by name, else
  id) and is private when the level is not mapped (fail closed); otherwise its project's
  ``project_access``; otherwise the source's default (private unless configured). Setting or clearing a
  security level updates the issue, so the next sync re-reads it. A change of the mappings needs
  ``citeline sync --full``.
* **Changes**: the search with JQL ``(scope) AND updated >= "yyyy/MM/dd HH:mm" ORDER BY updated ASC, key
  ASC`` (see :mod:`citeline.connectors._atlassian`); comments beyond those embedded in the search result
  are paged from ``issue/{id}/comment``.
* **Deletions**: Jira has no deletion feed: ``list_ids()`` lists every issue in scope with the same search
  (Data Center: ``startAt`` pages checked against ``total``, a total that moved while it was read raises;
  both: an issue listed twice raises, so nothing is pruned from such a listing). Deleted issues, issues
  moved out of scope or hidden from the API user are pruned. An issue found gone while its comments are
  read is a Delete.
* **Failures**: comments that cannot be read after the retries make that issue a Failure (its previous
  version stays) and put its id in the cursor's ``retry`` list: the next sync reads it again
  (``issue/{id}``) even if it did not change; 401/403 (:class:`CredentialsRejected`), an exhausted budget
  or a search that stays unavailable end the run, keeping the last checkpoint.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field, model_validator

from citeline.connectors._adf import adf_to_text
from citeline.connectors._atlassian import (
    AccessMap,
    AtlassianConfig,
    Stamped,
    access_by_name,
    atlassian_client,
    changed_items,
    parse_instant,
    query_time,
    read_position,
    require_visible,
)
from citeline.connectors._common import ItemError, coerce_config, optional_str
from citeline.connectors._http import ApiClient, ApiError, BudgetExhausted, CredentialsRejected, NotFound
from citeline.contracts.connector import Change, Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["JiraApi", "JiraConnector", "detect_api"]

log = logging.getLogger(__name__)

_FIELDS = "summary,description,comment,updated,created,project,security,status,issuetype"


class JiraApi(str, enum.Enum):
    """Which REST endpoint family a Jira site is read with."""

    CLOUD = "cloud"  # /rest/api/3: enhanced JQL search (nextPageToken), rich text as ADF
    DATACENTER = "datacenter"  # /rest/api/2: /search with startAt and total, rich text as wiki markup


def detect_api(base_url: str) -> JiraApi:
    """``api``'s default: Cloud for an ``*.atlassian.net`` site (or ``api.atlassian.com``), else Data Center."""
    host = (httpx.URL(base_url).host or "").lower().rstrip(".")
    return JiraApi.CLOUD if host.endswith(".atlassian.net") or host == "api.atlassian.com" else JiraApi.DATACENTER


def _project_key(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} is not a Jira project key (e.g. OPS)")
    return value


def _scope_jql(value: str | None) -> str | None:
    if value is not None and re.search(r"\border\s+by\b", value, re.IGNORECASE):
        raise ValueError("jql must not have an ORDER BY: the connector orders by updated")
    return value


@dataclass(frozen=True)
class _Page:
    """One page of a JQL search: its issues, the token of the next page (``None``: last) and v2's total."""

    issues: list[dict[str, Any]]
    next: Any
    total: int | None


class JiraConnector:
    """Jira issues with comments, access from security level or project; see the module docstring."""

    class Config(AtlassianConfig):
        api: JiraApi | None = Field(None, description="cloud (REST v3, /search/jql) or datacenter (REST v2, "
                                                      "/search); unset: cloud for *.atlassian.net, else datacenter")
        projects: tuple[Annotated[str, AfterValidator(_project_key)], ...] = ()
        jql: Annotated[str | None, AfterValidator(_scope_jql)] = Field(None, description="extra scope, no ORDER BY")
        project_access: AccessMap = Field(default_factory=dict)
        security_level_access: AccessMap = Field(default_factory=dict)

        @model_validator(mode="after")
        def _has_scope(self) -> JiraConnector.Config:
            if not self.projects and not (self.jql or "").strip():
                raise ValueError("set projects (keys) or jql: the connector does not read a whole site by accident")
            return self

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self.api = self.config.api or detect_api(self.config.base_url)
        self._rest = "rest/api/3" if self.api is JiraApi.CLOUD else "rest/api/2"
        self._id_fields = "id" if self.api is JiraApi.CLOUD else "created"  # the least each search answers with
        self._overlap = timedelta(minutes=self.config.overlap_minutes)
        self._projects = access_by_name(self.config.project_access, "project_access")
        self._levels = access_by_name(self.config.security_level_access, "security_level_access")

    def _client(self) -> ApiClient:
        return atlassian_client(self.config, "jira", "browse the projects")

    # -- the contract -------------------------------------------------------------------------------
    def validate(self) -> None:
        with self._client() as api:
            try:
                api.get_json(f"{self._rest}/myself")
            except NotFound as exc:
                raise ConnectorError(f"jira: {self._rest}/myself answered {exc.status}: check config.base_url is the "
                                     f"site root and config.api (now {self.api.value!r}) matches the site: 'cloud' "
                                     "for Jira Cloud, 'datacenter' for Data Center / Server") from None
            require_visible(api, "jira", "project", self.config.projects, lambda key: f"{self._rest}/project/{key}",
                            "fix config.projects or give the user Browse permission")
            # the search answers (Jira Cloud: 410 to a "datacenter" setting) and Jira accepts the jql
            self._search(api, f"{self._scope()} ORDER BY created ASC, key ASC", self._id_fields, None)

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        position = read_position(cursor, frozenset({"retry"}))
        retry = _retry(cursor)
        seen: set[str] = set()
        count = 0
        with self._client() as api:
            for position, stamped in changed_items(lambda lo, tok: self._changed_page(api, lo, tok), position,  # noqa: B020 (starts from the saved one)
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
            issue = api.get_json(f"{self._rest}/issue/{issue_id}", {"fields": _FIELDS})
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
            token: Any = None
            while True:
                page = self._search(api, f"{self._scope()} ORDER BY created ASC, key ASC", self._id_fields, token)
                ids.extend(str(issue["id"]) for issue in page.issues)
                if page.total is not None:
                    totals.add(page.total)
                if page.next is None:
                    break
                token = page.next
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

    def _search(self, api: ApiClient, jql: str, fields: str, token: Any) -> _Page:
        """One page of a JQL search in this site's family; ``token``: ``None`` first, then ``_Page.next``."""
        size = self.config.page_size
        if self.api is JiraApi.DATACENTER:
            path, start = "rest/api/2/search", token or 0
            data = self._get_search(api, path, {"jql": jql, "startAt": start, "maxResults": size, "fields": fields})
            issues, total = _issues(data, path), data.get("total")
            following = start + len(issues)
            more = bool(issues) and (following < total if isinstance(total, int) else len(issues) >= size)
            return _Page(issues, following if more else None, total if isinstance(total, int) else None)
        path = "rest/api/3/search/jql"
        params = {"jql": jql, "maxResults": size, "fields": fields}
        if token is not None:
            params["nextPageToken"] = token
        data = self._get_search(api, path, params)
        issues, following, last = _issues(data, path), data.get("nextPageToken"), data.get("isLast")
        if last is False and not following:
            raise ApiError(f"jira: {path} answered isLast=false without a nextPageToken, so the rest of the "
                           "search cannot be read: the connector and Jira Cloud disagree; report it")
        if following is not None and following == token:
            raise ApiError(f"jira: {path} answered the same nextPageToken twice (the search would never end); "
                           "report it")
        more = isinstance(following, str) and bool(following) and last is not True
        return _Page(issues, following if more else None, None)

    def _get_search(self, api: ApiClient, path: str, params: Mapping[str, Any]) -> Any:
        try:
            return api.get_json(path, params)
        except ApiError as exc:
            if exc.status != 400:
                raise
            raise ApiError(f"jira: {path} rejected the JQL {params['jql']!r}: fix config.jql (or config.projects); "
                           f"the answer was: {exc}", status=400) from None
        except NotFound as exc:
            if exc.status == 410 and self.api is JiraApi.DATACENTER:
                raise ApiError(f"jira: {path} answered 410 Gone: this is Jira Cloud, which removed that search; "
                               'set config.api = "cloud" (REST v3 /search/jql)', status=410) from None
            raise ApiError(f"jira: {path} answered {exc.status}: check config.base_url is the site root and "
                           f"config.api (now {self.api.value!r}) matches the site: 'cloud' for Jira Cloud, "
                           "'datacenter' for Data Center / Server", status=exc.status) from None

    def _changed_page(self, api: ApiClient, lower: Any, token: Any) -> tuple[list[Stamped[dict]], Any]:
        jql = self._scope()
        if lower is not None:
            jql += f' AND updated >= "{query_time(lower, self.config.time_zone, "%Y/%m/%d %H:%M")}"'
        page = self._search(api, f"{jql} ORDER BY updated ASC, key ASC", _FIELDS, token)
        items = []
        for issue in page.issues:
            try:
                items.append(Stamped(str(issue["id"]), parse_instant(issue["fields"]["updated"], "updated"), issue))
            except (KeyError, TypeError, ItemError) as exc:
                raise ApiError(f"jira: a search result lacks its id or fields.updated ({exc}): the connector and "
                               "this Jira version disagree; report it") from None
        return items, page.next

    def _comments(self, api: ApiClient, issue: Mapping[str, Any]) -> list[dict[str, Any]]:
        embedded = (issue.get("fields") or {}).get("comment") or {}
        comments = list(embedded.get("comments") or [])
        total = embedded.get("total")
        if not isinstance(total, int) or len(comments) >= total:
            return comments
        comments, start = [], 0
        while True:
            page = api.get_json(f"{self._rest}/issue/{issue['id']}/comment",
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
        description = _rich_text(fields, "description")
        if description.strip():
            parts.append(description.strip())
        for comment in comments:
            body = _rich_text(comment, "body") if isinstance(comment.get("body"), str | Mapping) else ""
            if comment.get("visibility") or not body.strip():
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


def _rich_text(data: Mapping[str, Any], key: str) -> str:
    """A rich-text field: wiki markup (v2) as it is, an ADF document (v3) as text, absent as ``""``."""
    value = data.get(key)
    if isinstance(value, Mapping):
        return adf_to_text(value)
    return optional_str(data, key) or ""


def _issues(data: Any, path: str) -> list[dict[str, Any]]:
    issues = data.get("issues") if isinstance(data, dict) else None
    if not isinstance(issues, list):
        raise ApiError(f"jira: {path} answered without an issues list: check config.base_url is the site root "
                       "(https://SITE.atlassian.net)")
    return issues
