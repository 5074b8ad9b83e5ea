"""A fake Jira (REST v2, and v3 as Cloud) for the connector tests: projects, issues, comments, security levels.

Every answer is rendered from the recorded shapes in ``tests/fixtures/replay/jira/`` (an issue with the
fields the connector asks for, the search, enhanced-search and comment envelopes, ``myself``, a project,
the error body ``{"errorMessages": [...], "errors": {}}``). ``V`` is ``2`` or ``3``:

* ``GET /rest/api/V/myself``, ``GET /rest/api/V/project/{key}``
* ``GET /rest/api/2/search?jql=...&startAt=...&maxResults=...&fields=...`` — a JQL subset (``project = K`` /
  ``project in (...)``, ``updated >= "yyyy/MM/dd HH:mm"`` read in the user's time zone, ``labels = x``,
  clauses in parentheses, ``ORDER BY updated|created ASC[, key ASC]``); anything else is Jira's 400. Only the
  requested fields are returned (default: the navigable ones); ``maxResults`` is capped at 100; the embedded
  ``comment`` field holds at most ``embedded_comments`` comments with the real ``total``.
* ``GET /rest/api/3/search/jql?jql=...&nextPageToken=...&maxResults=...&fields=...`` — Cloud's enhanced search:
  the same JQL, but no ``startAt`` (ignored) and no ``total``; a page carries ``nextPageToken`` (opaque, bound
  to its query: another JQL with it is a 400) and ``isLast: false``, the last page has no ``nextPageToken``
  and ``isLast: true``. ``fields`` defaults to ``id`` (only ids); ``maxResults`` defaults to 50 and is capped
  at 100 (5000 when only ``id``/``key`` are asked for).
* ``GET /rest/api/V/issue/{idOrKey}?fields=...``, ``GET /rest/api/V/issue/{id}/comment?startAt=...&maxResults=...``

Rich text differs by version as on the real sites: v2 answers descriptions and comment bodies as strings
(wiki markup), v3 as Atlassian Document Format. An issue's text may be given either way: a string is served
to v3 as ADF paragraphs (one per blank-line block, ``hardBreak`` per line break), an ADF document to v2 as
its text nodes joined (enough for these tests; real Jira renders wiki markup).

``FakeJira(cloud=True)`` is a Cloud site: v3 is served and ``/rest/api/{2,3}/search`` answer ``410 Gone`` with
Cloud's removal message; the default is a Data Center site, which has no v3 (404).

Tests change the state between syncs (:meth:`add_issue`, :meth:`edit`, :meth:`comment`, :meth:`secure`,
:meth:`delete`); the clock moves ``step`` per change.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.support.apis._atlassian import AtlassianFake, clauses, keys_of, page_token, read_page_token, retarget
from tests.support.replay import Reply, Request

__all__ = ["FakeJira", "Issue"]

Rich = str | dict[str, Any]
"""Rich text as a test gives it: a string (v2's wiki markup) or an ADF document (v3)."""


@dataclass
class Comment:
    id: str
    author: str
    body: Rich
    created: datetime
    visibility: dict | None = None


@dataclass
class Issue:
    id: str
    key: str
    project: str
    summary: str
    description: Rich | None
    created: datetime
    updated: datetime
    security: str | None = None  # a security level id
    labels: list[str] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)


class FakeJira(AtlassianFake):
    product = "jira"

    def __init__(self, *, embedded_comments: int = 2, cloud: bool = False, **site: Any) -> None:
        """``cloud``: a Jira Cloud site (v3, no /search); ``site``: :class:`AtlassianFake`'s credentials and clock."""
        super().__init__(**site)
        self.embedded_comments = embedded_comments
        self.cloud = cloud
        self.projects: dict[str, str] = {}
        self.levels: dict[str, str] = {}  # id -> name
        self.issues: dict[str, Issue] = {}
        self._ids = 10000

    # -- state changes (tests) ----------------------------------------------------------------------
    def _new_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def add_project(self, key: str, name: str | None = None) -> None:
        self.projects[key] = name or key.title()

    def add_level(self, level_id: str, name: str) -> None:
        self.levels[level_id] = name

    def add_issue(self, project: str, summary: str, description: Rich | None = None, *, security: str | None = None,
                  labels: tuple[str, ...] = ()) -> str:
        issue_id = self._new_id()
        number = 1 + sum(1 for i in self.issues.values() if i.project == project)
        when = self.tick()
        self.issues[issue_id] = Issue(issue_id, f"{project}-{number}", project, summary, description, when, when,
                                      security, list(labels))
        return issue_id

    def edit(self, issue_id: str, **changes: object) -> None:
        issue = self.issues[issue_id]
        for name, value in changes.items():
            setattr(issue, name, value)
        issue.updated = self.tick()

    def comment(self, issue_id: str, author: str, body: Rich, visibility: dict | None = None) -> None:
        issue = self.issues[issue_id]
        issue.comments.append(Comment(self._new_id(), author, body, self.tick(), visibility))
        issue.updated = self.now

    def secure(self, issue_id: str, level_id: str | None) -> None:
        """Set or clear the issue security level (an issue edit: ``updated`` moves)."""
        self.edit(issue_id, security=level_id)

    def delete(self, issue_id: str) -> None:
        del self.issues[issue_id]

    # -- FakeApi ------------------------------------------------------------------------------------
    def error(self, status: int, message: str) -> Reply:
        body = self.fixture("error.json")
        body["errorMessages"] = [message]
        return Reply(status, body)

    def handle(self, request: Request) -> Reply:
        match = re.fullmatch(r"/rest/api/([23])/(.+)", request.path)
        if match is None or (match.group(1) == "3" and not self.cloud):  # Data Center has no v3
            return self.error(404, f"null for uri: {request.path}")
        version, route = int(match.group(1)), match.group(2)
        if route == "myself":
            return Reply(200, retarget(self.fixture("myself.json"), "/rest/api/2/", f"/rest/api/{version}/"))
        if m := re.fullmatch(r"project/([^/]+)", route):
            if m.group(1) not in self.projects:
                return self.error(404, f"No project could be found with key '{m.group(1)}'.")
            body = retarget(self.fixture("project.json"), "OPS", m.group(1))
            body["name"] = self.projects[m.group(1)]
            return Reply(200, retarget(body, "/rest/api/2/", f"/rest/api/{version}/"))
        if route == "search" and self.cloud:
            return Reply(410, self.fixture("search_removed.json"))
        if route == "search" and version == 2:
            return self._search(request)
        if route == "search/jql" and version == 3:
            return self._search_jql(request)
        if m := re.fullmatch(r"issue/([^/]+)(/comment)?", route):
            issue = self.issues.get(m.group(1)) or next((i for i in self.issues.values() if i.key == m.group(1)), None)
            if issue is None:
                return self.error(404, "Issue does not exist or you do not have permission to see it.")
            if not m.group(2):
                return Reply(200, self._render(issue, set((request.arg("fields") or "*all").split(",")), version))
            start, limit = int(request.arg("startAt") or 0), min(int(request.arg("maxResults") or 50), 100)
            body = retarget(self.fixture("comments.json"), "/rest/api/2/", f"/rest/api/{version}/")
            body.update(startAt=start, maxResults=limit, total=len(issue.comments),
                        comments=[self._comment(issue, c, version) for c in issue.comments[start:start + limit]])
            return Reply(200, body)
        return self.error(404, f"null for uri: {request.path}")

    # -- search -------------------------------------------------------------------------------------
    def _search(self, request: Request) -> Reply:
        jql = request.arg("jql") or ""
        try:
            issues = self._jql(jql)
        except ValueError as exc:
            return self.error(400, f"Error in the JQL Query: {exc}")
        start, limit = int(request.arg("startAt") or 0), min(int(request.arg("maxResults") or 50), 100)
        fields = set((request.arg("fields") or "*navigable").split(","))
        body = self.fixture("search.json")
        body.update(startAt=start, maxResults=limit, total=len(issues),
                    issues=[self._render(i, fields, 2) for i in issues[start:start + limit]])
        return Reply(200, body)

    def _search_jql(self, request: Request) -> Reply:
        jql = request.arg("jql") or ""
        query = hashlib.sha256(jql.encode()).hexdigest()[:16]
        start = 0
        if token := request.arg("nextPageToken"):
            try:
                state = read_page_token(token)
            except ValueError:
                state = {}
            if state.get("query") != query:  # a token belongs to the search that handed it out
                return self.error(400, "The provided next page token is invalid or expired.")
            start = int(state["start"])
        try:
            issues = self._jql(jql)
        except ValueError as exc:
            return self.error(400, f"Error in the JQL Query: {exc}")
        fields = set((request.arg("fields") or "id").split(","))
        cap = 5000 if fields <= {"id", "key"} else 100
        limit = min(int(request.arg("maxResults") or 50), cap)
        body = self.fixture("search_jql.json")
        body["issues"] = [self._render(i, fields, 3) for i in issues[start:start + limit]]
        if start + limit < len(issues):
            body.update(nextPageToken=page_token(query=query, start=start + limit), isLast=False)
        else:
            del body["nextPageToken"]  # Cloud leaves the key out on the last page (JRACLOUD-92184)
            body["isLast"] = True
        return Reply(200, body)

    def _jql(self, jql: str) -> list[Issue]:
        order = re.search(r"\s+ORDER\s+BY\s+(updated|created)\s+ASC(\s*,\s*key\s+ASC)?\s*$", jql, re.IGNORECASE)
        where = jql[:order.start()] if order else jql
        tests = []
        for clause in clauses(where):
            if (keys := keys_of("project", clause)) is not None:
                tests.append(lambda i, keys=keys: i.project in keys)
            elif (since := self.since("updated", clause, "%Y/%m/%d %H:%M")) is not None:
                tests.append(lambda i, since=since: i.updated >= since)
            elif m := re.fullmatch(r'labels\s*=\s*"?([\w-]+)"?', clause, re.IGNORECASE):
                tests.append(lambda i, label=m.group(1): label in i.labels)
            else:
                raise ValueError(f"The value or operator in {clause!r} is not supported here.")
        issues = [i for i in self.issues.values() if all(t(i) for t in tests)]
        if order:
            field_name = order.group(1).lower()
            issues.sort(key=lambda i: (getattr(i, field_name), i.project, int(i.key.split("-")[1])))
        return issues

    # -- rendering ----------------------------------------------------------------------------------
    def _render(self, issue: Issue, wanted: set[str], version: int) -> dict:
        template = retarget(retarget(self.fixture("issue.json"), "10042", issue.id), "OPS-17", issue.key)
        template = retarget(template, "/rest/api/2/", f"/rest/api/{version}/")
        fields = template["fields"]
        fields["project"] = retarget(fields["project"], "OPS", issue.project)
        fields["project"]["name"] = self.projects.get(issue.project, issue.project)
        description = None if issue.description is None else _rich(issue.description, version)
        fields.update(summary=issue.summary, description=description, created=_jira_time(issue.created),
                      updated=_jira_time(issue.updated), labels=list(issue.labels))
        if issue.security is None:
            fields["security"] = None
        else:
            fields["security"] = {**fields["security"], "id": issue.security, "name": self.levels[issue.security],
                                  "self": fields["security"]["self"].replace("10100", issue.security)}
        embedded = issue.comments[:self.embedded_comments]
        fields["comment"].update(comments=[self._comment(issue, c, version) for c in embedded],
                                 total=len(issue.comments),
                                 maxResults=len(embedded), startAt=0)
        if fields["security"] is None:
            del fields["security"]  # Jira leaves the field out when the issue has no level
        if "*all" not in wanted and "*navigable" not in wanted:
            template["fields"] = {k: v for k, v in fields.items() if k in wanted}
        return template

    def _comment(self, issue: Issue, comment: Comment, version: int) -> dict:
        template = self.fixture("issue.json")["fields"]["comment"]["comments"][0]
        out = retarget(retarget(template, "10042", issue.id), "10500", comment.id)
        out = retarget(out, "/rest/api/2/", f"/rest/api/{version}/")
        out["author"]["displayName"] = out["updateAuthor"]["displayName"] = comment.author
        out.update(body=_rich(comment.body, version), created=_jira_time(comment.created),
                   updated=_jira_time(comment.created))
        if comment.visibility:
            out["visibility"] = copy.deepcopy(comment.visibility)
        return out


def _jira_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def _rich(value: Rich, version: int) -> Any:
    """Rich text as ``version`` answers it: v2 a string, v3 an ADF document."""
    if version == 3:
        return copy.deepcopy(value) if isinstance(value, Mapping) else _adf(value)
    return value if isinstance(value, str) else "".join(_texts(value))


def _adf(text: str) -> dict:
    """Plain text as Cloud stores it in ADF: a paragraph per blank-line block, a hardBreak per line break."""
    paragraphs = []
    for block in (b for b in re.split(r"\n\s*\n", text) if b.strip()):
        content: list[dict] = []
        for number, line in enumerate(block.split("\n")):
            if number:
                content.append({"type": "hardBreak"})
            if line:
                content.append({"type": "text", "text": line})
        paragraphs.append({"type": "paragraph", "content": content})
    return {"type": "doc", "version": 1, "content": paragraphs}


def _texts(node: Any) -> list[str]:
    if not isinstance(node, Mapping):
        return []
    own = [node["text"]] if isinstance(node.get("text"), str) else []
    return own + [t for child in node.get("content") or [] for t in _texts(child)]
