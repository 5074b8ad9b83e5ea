"""A fake Jira (REST v2) for the connector tests: projects, issues, comments, issue security levels.

Every answer is rendered from the recorded shapes in ``tests/fixtures/replay/jira/`` (an issue with the
fields the connector asks for, the search and comment envelopes, ``myself``, a project, the error body
``{"errorMessages": [...], "errors": {}}``):

* ``GET /rest/api/2/myself``, ``GET /rest/api/2/project/{key}``
* ``GET /rest/api/2/search?jql=...&startAt=...&maxResults=...&fields=...`` — a JQL subset (``project = K`` /
  ``project in (...)``, ``updated >= "yyyy/MM/dd HH:mm"`` read in the user's time zone, ``labels = x``,
  clauses in parentheses, ``ORDER BY updated|created ASC[, key ASC]``); anything else is Jira's 400. Only the
  requested fields are returned; ``maxResults`` is capped at 100; the embedded ``comment`` field holds at
  most ``embedded_comments`` comments with the real ``total``.
* ``GET /rest/api/2/issue/{idOrKey}?fields=...``, ``GET /rest/api/2/issue/{id}/comment?startAt=...&maxResults=...``

Tests change the state between syncs (:meth:`add_issue`, :meth:`edit`, :meth:`comment`, :meth:`secure`,
:meth:`delete`); the clock moves ``step`` per change.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.support.replay import FakeApi, Reply, Request

__all__ = ["FakeJira", "Issue"]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "replay" / "jira"


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@dataclass
class Comment:
    id: str
    author: str
    body: str
    created: datetime
    visibility: dict | None = None


@dataclass
class Issue:
    id: str
    key: str
    project: str
    summary: str
    description: str | None
    created: datetime
    updated: datetime
    security: str | None = None  # a security level id
    labels: list[str] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)


class FakeJira(FakeApi):
    def __init__(self, *, email: str = "bot@acme.example", token: str = "good-token", pat: str = "good-pat",
                 time_zone: str = "UTC", start: datetime = datetime(2024, 5, 1, 8, 0, tzinfo=UTC),
                 step: timedelta = timedelta(hours=1), embedded_comments: int = 2) -> None:
        self.basic = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
        self.bearer = f"Bearer {pat}"
        self.zone = ZoneInfo(time_zone)
        self.now, self.step = start, step
        self.embedded_comments = embedded_comments
        self.projects: dict[str, str] = {}
        self.levels: dict[str, str] = {}  # id -> name
        self.issues: dict[str, Issue] = {}
        self._ids = 10000

    # -- state changes (tests) ----------------------------------------------------------------------
    def tick(self) -> datetime:
        self.now += self.step
        return self.now

    def _new_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def add_project(self, key: str, name: str | None = None) -> None:
        self.projects[key] = name or key.title()

    def add_level(self, level_id: str, name: str) -> None:
        self.levels[level_id] = name

    def add_issue(self, project: str, summary: str, description: str | None = None, *, security: str | None = None,
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

    def comment(self, issue_id: str, author: str, body: str, visibility: dict | None = None) -> None:
        issue = self.issues[issue_id]
        issue.comments.append(Comment(self._new_id(), author, body, self.tick(), visibility))
        issue.updated = self.now

    def secure(self, issue_id: str, level_id: str | None) -> None:
        """Set or clear the issue security level (an issue edit: ``updated`` moves)."""
        self.edit(issue_id, security=level_id)

    def delete(self, issue_id: str) -> None:
        del self.issues[issue_id]

    # -- FakeApi ------------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") in (self.basic, self.bearer)

    def error(self, status: int, message: str) -> Reply:
        body = _fixture("error.json")
        body["errorMessages"] = [message]
        return Reply(status, body)

    def handle(self, request: Request) -> Reply:
        path = request.path
        if path == "/rest/api/2/myself":
            return Reply(200, _fixture("myself.json"))
        if match := re.fullmatch(r"/rest/api/2/project/([^/]+)", path):
            key = match.group(1)
            if key not in self.projects:
                return self.error(404, f"No project could be found with key '{key}'.")
            body = json.loads(json.dumps(_fixture("project.json")).replace("OPS", key))
            body["name"] = self.projects[key]
            return Reply(200, body)
        if path == "/rest/api/2/search":
            return self._search(request)
        if match := re.fullmatch(r"/rest/api/2/issue/([^/]+)", path):
            issue = self.issues.get(match.group(1)) or next(
                (i for i in self.issues.values() if i.key == match.group(1)), None)
            if issue is None:
                return self.error(404, "Issue does not exist or you do not have permission to see it.")
            return Reply(200, self._render(issue, set((request.arg("fields") or "*all").split(","))))
        if match := re.fullmatch(r"/rest/api/2/issue/([^/]+)/comment", path):
            issue = self.issues.get(match.group(1))
            if issue is None:
                return self.error(404, "Issue does not exist or you do not have permission to see it.")
            start, limit = int(request.arg("startAt") or 0), min(int(request.arg("maxResults") or 50), 100)
            body = _fixture("comments.json")
            body.update(startAt=start, maxResults=limit, total=len(issue.comments),
                        comments=[self._comment(issue, c) for c in issue.comments[start:start + limit]])
            return Reply(200, body)
        return self.error(404, f"null for uri: {path}")

    # -- search -------------------------------------------------------------------------------------
    def _search(self, request: Request) -> Reply:
        jql = request.arg("jql") or ""
        try:
            issues = self._jql(jql)
        except ValueError as exc:
            return Reply(400, {"errorMessages": [f"Error in the JQL Query: {exc}"], "errors": {}})
        start, limit = int(request.arg("startAt") or 0), min(int(request.arg("maxResults") or 50), 100)
        fields = set((request.arg("fields") or "*navigable").split(","))
        body = _fixture("search.json")
        body.update(startAt=start, maxResults=limit, total=len(issues),
                    issues=[self._render(i, fields) for i in issues[start:start + limit]])
        return Reply(200, body)

    def _jql(self, jql: str) -> list[Issue]:
        order = re.search(r"\s+ORDER\s+BY\s+(updated|created)\s+ASC(\s*,\s*key\s+ASC)?\s*$", jql, re.IGNORECASE)
        where = jql[:order.start()] if order else jql
        tests = []
        for clause in re.split(r"\s+AND\s+", where.strip(), flags=re.IGNORECASE):
            clause = clause.strip()
            while clause.startswith("(") and clause.endswith(")"):
                clause = clause[1:-1].strip()
            if m := re.fullmatch(r'project\s*(?:=\s*"?(\w+)"?|in\s*\(([^)]*)\))', clause, re.IGNORECASE):
                keys = {m.group(1)} if m.group(1) else {k.strip().strip('"') for k in m.group(2).split(",")}
                tests.append(lambda i, keys=keys: i.project in keys)
            elif m := re.fullmatch(r'updated\s*>=\s*"(\d{4}/\d\d/\d\d \d\d:\d\d)"', clause, re.IGNORECASE):
                since = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M").replace(tzinfo=self.zone)
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
    def _render(self, issue: Issue, wanted: set[str]) -> dict:
        template = json.loads(json.dumps(_fixture("issue.json")).replace("10042", issue.id)
                              .replace("OPS-17", issue.key))
        fields = template["fields"]
        fields["project"] = json.loads(json.dumps(fields["project"]).replace("OPS", issue.project))
        fields["project"]["name"] = self.projects.get(issue.project, issue.project)
        fields.update(summary=issue.summary, description=issue.description, created=_jira_time(issue.created),
                      updated=_jira_time(issue.updated), labels=list(issue.labels))
        if issue.security is None:
            fields["security"] = None
        else:
            fields["security"] = {**fields["security"], "id": issue.security, "name": self.levels[issue.security],
                                  "self": fields["security"]["self"].replace("10100", issue.security)}
        embedded = issue.comments[:self.embedded_comments]
        fields["comment"].update(comments=[self._comment(issue, c) for c in embedded], total=len(issue.comments),
                                 maxResults=len(embedded), startAt=0)
        if fields["security"] is None:
            del fields["security"]  # Jira leaves the field out when the issue has no level
        if "*all" not in wanted and "*navigable" not in wanted:
            template["fields"] = {k: v for k, v in fields.items() if k in wanted}
        return template

    def _comment(self, issue: Issue, comment: Comment) -> dict:
        template = _fixture("issue.json")["fields"]["comment"]["comments"][0]
        out = json.loads(json.dumps(template).replace("10042", issue.id).replace("10500", comment.id))
        out["author"]["displayName"] = out["updateAuthor"]["displayName"] = comment.author
        out.update(body=comment.body, created=_jira_time(comment.created), updated=_jira_time(comment.created))
        if comment.visibility:
            out["visibility"] = copy.deepcopy(comment.visibility)
        return out


def _jira_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"
