"""A fake GitHub REST API: repositories, issues, pull requests and comments that tests change.

Every answer is rendered from the recorded responses under ``tests/fixtures/replay/github/`` (documented
shapes, ids and names changed): ``GET /repos/{owner}/{repo}`` with ``private``/``visibility``; the issues
list (pull requests included, with their ``pull_request`` key) filtered by ``state`` and ``since``
(inclusive, as GitHub does), sorted by ``updated`` in either direction, paged with ``per_page``/``page``
and a ``Link`` header whose URLs use ``/repositories/{id}/...`` as GitHub's do; one issue (``410`` with
"This issue was deleted", ``301`` to its new place when transferred); issue comments, paged the same
way; ``X-RateLimit-*`` headers on every answer; and ``{"message": ..., "documentation_url": ...}`` errors.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.replay import FakeApi, Reply, Request

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "replay" / "github"
TOKEN = "ghp_fake_token"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Issue:
    number: int
    title: str
    body: str
    author: str = "octo-dana"
    state: str = "open"
    pull_request: bool = False
    labels: list[str] = field(default_factory=list)
    comments: list[tuple[str, str]] = field(default_factory=list)  # (author, body)
    updated_at: datetime = T0


@dataclass
class Repo:
    id: int
    full_name: str
    private: bool = False
    visibility: str = "public"
    issues: dict[int, Issue] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    moved: dict[int, tuple[str, int]] = field(default_factory=dict)
    issues_disabled: bool = False


class GitHubApi(FakeApi):
    """State a test changes between syncs; see the module docstring."""

    def __init__(self) -> None:
        self._repo_template = _fixture("repo.json")
        issues = _fixture("issues.json")
        self._issue_template, self._pr_template = issues[0], issues[1]
        self._comment_template = _fixture("issue_comments.json")[0]
        self._errors = _fixture("errors.json")
        self.repos: dict[str, Repo] = {}
        self.clock = T0
        self.rate_remaining = 5000

    # -- state tests change -------------------------------------------------------------------------
    def add_repo(self, full_name: str, private: bool = False) -> Repo:
        repo = Repo(700_001 + len(self.repos), full_name, private, "private" if private else "public")
        self.repos[full_name] = repo
        return repo

    def add_issue(self, full_name: str, number: int, title: str, body: str = "", *comments: tuple[str, str],
                  at: datetime | None = None, **fields: Any) -> Issue:
        issue = Issue(number, title, body or f"Body of {title}.", comments=list(comments), **fields)
        issue.updated_at = at or self._tick()
        self.repos[full_name].issues[number] = issue
        return issue

    def update_issue(self, full_name: str, number: int, **fields: Any) -> None:
        issue = self.repos[full_name].issues[number]
        for key, value in fields.items():
            setattr(issue, key, value)
        issue.updated_at = self._tick()

    def add_comment(self, full_name: str, number: int, author: str, body: str) -> None:
        self.repos[full_name].issues[number].comments.append((author, body))
        self.repos[full_name].issues[number].updated_at = self._tick()

    def delete_issue(self, full_name: str, number: int) -> None:
        repo = self.repos[full_name]
        repo.issues.pop(number)
        repo.deleted.add(number)

    def transfer_issue(self, full_name: str, number: int, to: str, new_number: int) -> None:
        issue = self.repos[full_name].issues.pop(number)
        self.repos[full_name].moved[number] = (to, new_number)
        issue.number = new_number
        issue.updated_at = self._tick()
        self.repos[to].issues[new_number] = issue

    def set_visibility(self, full_name: str, visibility: str) -> None:
        repo = self.repos[full_name]
        repo.visibility, repo.private = visibility, visibility != "public"

    def _tick(self) -> datetime:
        self.clock += timedelta(minutes=1)
        return self.clock

    # -- FakeApi ------------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") in (f"Bearer {TOKEN}", f"token {TOKEN}")

    def error(self, status: int, message: str) -> Reply:
        body = copy.deepcopy(self._errors.get(str(status), {"message": message}))
        return Reply(status, body, self._rate_headers())

    def handle(self, request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts[0] == "repositories" and len(parts) > 1:  # Link URLs name the repository by id
            repo = next((r for r in self.repos.values() if str(r.id) == parts[1]), None)
            parts = ["repos", *(repo.full_name.split("/") if repo else ["?", "?"]), *parts[2:]]
        if parts[0] != "repos" or len(parts) < 3:
            return self.error(404, "no route")
        repo = self.repos.get(f"{parts[1]}/{parts[2]}")
        if repo is None:
            return self.error(404, "no such repository")
        rest = parts[3:]
        if not rest:
            return self._reply(self._render_repo(repo))
        if rest and rest[0] == "issues" and repo.issues_disabled:
            reply = self.error(410, "disabled")
            reply.body["message"] = "Issues are disabled for this repo"
            return reply
        if rest == ["issues"]:
            listed = [i for i in repo.issues.values() if request.arg("state", "open") in ("all", i.state)]
            if request.arg("since"):
                since = datetime.fromisoformat(str(request.arg("since")).replace("Z", "+00:00"))
                listed = [i for i in listed if i.updated_at >= since]
            if request.arg("sort") == "updated":
                listed.sort(key=lambda i: (i.updated_at, i.number), reverse=request.arg("direction") != "asc")
            else:
                listed.sort(key=lambda i: i.number, reverse=True)
            return self._page(request, repo, [self._render_issue(repo, i) for i in listed])
        if len(rest) >= 2 and rest[0] == "issues" and rest[1].isdigit():
            number = int(rest[1])
            if number in repo.moved:
                to, new_number = repo.moved[number]
                location = f"http://{request.headers.get('host')}/repos/{to}/issues/{new_number}"
                reply = self.error(301, "moved")
                reply.body["url"] = location
                reply.headers["Location"] = location
                return reply
            if number in repo.deleted:
                return self.error(410, "deleted")
            issue = repo.issues.get(number)
            if issue is None:
                return self.error(404, "no such issue")
            if rest[2:] == ["comments"]:
                return self._page(request, repo, [self._render_comment(repo, issue, n, c)
                                                  for n, c in enumerate(issue.comments)])
            if len(rest) == 2:
                return self._reply(self._render_issue(repo, issue))
        return self.error(404, "no route")

    # -- rendering ----------------------------------------------------------------------------------
    def _rate_headers(self) -> dict[str, str]:
        self.rate_remaining = max(0, self.rate_remaining - 1)
        return {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": str(self.rate_remaining),
                "X-RateLimit-Reset": str(int(T0.timestamp()) + 3600),
                "X-RateLimit-Used": str(5000 - self.rate_remaining),
                "X-RateLimit-Resource": "core", "X-GitHub-Api-Version-Selected": "2022-11-28"}

    def _reply(self, body: Any, headers: dict[str, str] | None = None) -> Reply:
        return Reply(200, body, {**self._rate_headers(), **(headers or {})})

    def _page(self, request: Request, repo: Repo, items: list[dict[str, Any]]) -> Reply:
        per_page = min(int(request.arg("per_page") or 30), 100)
        page = int(request.arg("page") or 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        last = max(1, -(-len(items) // per_page))
        if page >= last:
            return self._reply(chunk)
        tail = "/".join(request.path.strip("/").split("/")[3:]) if request.path.startswith("/repos/") \
            else "/".join(request.path.strip("/").split("/")[2:])
        query = "&".join(f"{k}={v[0]}" for k, v in request.query.items() if k != "page")
        base = f"http://{request.headers.get('host')}/repositories/{repo.id}/{tail}?{query}"
        link = f'<{base}&page={page + 1}>; rel="next", <{base}&page={last}>; rel="last"'
        return self._reply(chunk, {"Link": link})

    def _render_repo(self, repo: Repo) -> dict[str, Any]:
        owner, name = repo.full_name.split("/")
        out = copy.deepcopy(self._repo_template)
        out.update(id=repo.id, name=name, full_name=repo.full_name, private=repo.private,
                   visibility=repo.visibility, html_url=f"https://github.com/{repo.full_name}",
                   url=f"https://api.github.com/repos/{repo.full_name}")
        out["owner"].update(login=owner, html_url=f"https://github.com/{owner}")
        return out

    def _render_issue(self, repo: Repo, issue: Issue) -> dict[str, Any]:
        out = copy.deepcopy(self._pr_template if issue.pull_request else self._issue_template)
        label_template = self._issue_template["labels"][0]
        api = f"https://api.github.com/repos/{repo.full_name}"
        kind = "pull" if issue.pull_request else "issues"
        out.update(url=f"{api}/issues/{issue.number}", repository_url=api, number=issue.number,
                   id=900_000 + repo.id % 1000 * 1000 + issue.number, title=issue.title, body=issue.body,
                   state=issue.state, comments=len(issue.comments), updated_at=_iso(issue.updated_at),
                   html_url=f"https://github.com/{repo.full_name}/{kind}/{issue.number}",
                   labels=[dict(label_template, name=n) for n in issue.labels])
        out["user"] = dict(out["user"], login=issue.author)
        if "comments_url" in out:
            out["comments_url"] = f"{api}/issues/{issue.number}/comments"
        return out

    def _render_comment(self, repo: Repo, issue: Issue, number: int, comment: tuple[str, str]) -> dict[str, Any]:
        out = copy.deepcopy(self._comment_template)
        out.update(id=300_000 + issue.number * 100 + number, body=comment[1],
                   issue_url=f"https://api.github.com/repos/{repo.full_name}/issues/{issue.number}",
                   html_url=f"https://github.com/{repo.full_name}/issues/{issue.number}#issuecomment-{number}")
        out["user"] = dict(out["user"], login=comment[0])
        return out
