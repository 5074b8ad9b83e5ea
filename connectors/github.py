"""GitHub Issues connector: the issues (and, if asked, pull requests) of some repositories, with comments.

Config (``[sources.config]``)::

    repositories = ["acme/widgets", "acme/firmware"]
    token = "env:GITHUB_TOKEN"              # a fine-grained or classic token (Issues: read); optional for
                                            # public repositories (60 requests an hour without one)
    base_url = "https://api.github.com"     # GitHub Enterprise Server: https://HOST/api/v3
    include_pull_requests = false
    public_repositories_public = true       # issues of a public repository are visible to everyone
    repository_access = {"acme/firmware" = ["firmware-team", "user:dana"]}   # private/internal repos

plus the :class:`~citeline.connectors._http.ApiConfig` keys (``page_size`` ≤ 100, ``request_budget`` per
sync and per listing, ``max_retries``, ``backoff_s``, ``max_retry_after_s``, ``timeout_s``).

* **Reading**: per repository ``GET /repos/{owner}/{repo}`` (its visibility), then
  ``GET /repos/{owner}/{repo}/issues?state=all&sort=updated&direction=asc&since=…`` following the
  ``Link: rel="next"`` pages, and ``GET …/issues/{n}/comments`` for issues that have comments. Pull
  requests (items with a ``pull_request`` key) are skipped unless ``include_pull_requests``.
* **Id**: ``owner/repo#number``; the URL is the issue's ``html_url``. The text is ``# title``, a state
  line, the body and one ``## Comment by LOGIN (created_at)`` section per comment.
* **Access** follows the repository: a public one gives every issue ``public`` access (unless
  ``public_repositories_public = false``); a private or internal one gives its ``repository_access``
  entries (``public``, ``user:NAME``, group names), else the source's default access (private unless
  set). When a repository's resulting access changes (made private, mapping edited) its cursor is
  dropped and every issue is read again with the new access.
* **Deletions**: GitHub has no deletion feed. ``list_ids()`` lists every issue number of every
  repository (no ``since``); ingest prunes what is not listed: deleted issues, issues transferred away
  (301 elsewhere) and repositories that are gone, no longer readable (404) or have issues disabled
  (410); the sync reports such a repository as a Failure and forgets its cursor, so it is read in full
  should it come back.
* **Failures**: an issue whose comments answer 5xx after the retries is a Failure and is fetched again
  (``GET …/issues/{n}``) at the end of the next sync (its id travels in the cursor's ``retry``); 410/404
  then mean it is gone. 401, a 403 that is not a rate limit, a spent budget, a long wait or an unreachable
  API end the run. Rate limits: 403/429 with ``X-RateLimit-Remaining: 0`` wait until
  ``X-RateLimit-Reset``; secondary limits wait ``Retry-After`` (see ``ApiClient``).
* **Cursor**: ``{"repos": {"owner/repo": {"since": ISO, "seen": [numbers at since], "access": {...}}},
  "retry": [ids]}``; ``since`` is requested one second early and issues already seen are skipped, so a
  resumed sync neither misses nor repeats an issue. A checkpoint every ``checkpoint_every`` issues.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from citeline.connectors._api_items import (
    GONE,
    AccessMapping,
    Gone,
    as_change,
    change_id,
    fetch_item,
    grants,
    retry_ids,
)
from citeline.connectors._common import ItemError, coerce_config, parse_datetime
from citeline.connectors._http import ApiClient, ApiConfig, NotFound, Secret
from citeline.contracts.connector import Change, Checkpoint, Failure
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["GitHubIssuesConnector"]

_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_ID = re.compile(r"^([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)#([0-9]+)$")
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


def _repositories(value: list[str]) -> list[str]:
    for name in value:
        if not _REPO.match(name):
            raise ValueError(f"{name!r} is not owner/repo (e.g. 'acme/widgets')")
    if len(set(value)) != len(value):
        raise ValueError("a repository is listed twice")
    return value


class GitHubConfig(ApiConfig):
    base_url: str = Field("https://api.github.com", description="REST API root (GHES: https://HOST/api/v3)")
    token: Secret | None = Field(None, description="token with read access to the issues, or env:NAME")
    repositories: Annotated[list[str], AfterValidator(_repositories)] = Field(min_length=1,
                                                                              description="owner/repo names")
    include_pull_requests: bool = Field(False, description="index pull requests too")
    public_repositories_public: bool = Field(True, description="issues of public repositories are public")
    repository_access: AccessMapping = Field(default_factory=dict,
                                                    description="owner/repo → entries, for private repos")
    page_size: int = Field(100, ge=1, le=100, description="items per page (GitHub allows at most 100)")

    @model_validator(mode="after")
    def _mapped_repositories_are_listed(self) -> GitHubConfig:
        for name in self.repository_access:
            if name not in self.repositories:
                raise ValueError(f"repository_access names {name!r}, which is not in repositories: add it there "
                                 "or remove the mapping")
        return self


class GitHubIssuesConnector:
    """Issues of GitHub repositories; see the module docstring."""

    Config = GitHubConfig

    def __init__(self, config: GitHubConfig | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(GitHubConfig, config)
        self.default_access = default_access or Access.private()

    # -- the contract -------------------------------------------------------------------------------
    def validate(self) -> None:
        """The credentials work (a repository that is gone is reported by the sync, not here)."""
        with self._client() as client:
            for name in self.config.repositories:
                try:
                    client.get_json(f"/repos/{name}")
                except NotFound:
                    continue

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        states, retry = _read_cursor(cursor)
        run = _Run(states, retry)
        with self._client() as client:
            for name in self.config.repositories:
                try:
                    yield from self._sync_repository(client, name, run)
                except NotFound as exc:  # the repository, or its issues (410: issues disabled), are gone
                    states.pop(name, None)  # read in full should it come back; list_ids() drops its issues
                    yield Failure(name, f"repository {name} or its issues are gone or not readable with this "
                                        f"token ({exc}); its issues are removed from the index: fix "
                                        "config.repositories or the token's access")
            for external_id in retry:
                if external_id not in run.seen:
                    yield run.record(self._refetch(client, external_id))
        yield Checkpoint(_cursor(states, run.failed))

    def list_ids(self) -> list[str]:
        ids: list[str] = []
        with self._client() as client:
            for name in self.config.repositories:
                try:
                    client.get_json(f"/repos/{name}")
                    ids.extend(_issue_id(name, issue) for issue in self._issues(client, name, None)
                               if self.config.include_pull_requests or not _is_pull_request(issue))
                except NotFound:
                    ids = [i for i in ids if not i.startswith(f"{name}#")]  # gone: none of its issues stays
        return ids

    def _sync_repository(self, client: ApiClient, name: str, run: _Run) -> Iterator[Change]:
        access = self._repo_access(client, name)
        state = run.states.get(name)
        if state is None or state.get("access") != access.as_dict():
            state = {"access": access.as_dict()}  # new, or its access changed: read every issue again
        run.states[name] = state
        for issue in self._issues(client, name, state.get("since")):
            if not _advance(state, issue):
                continue
            if _is_pull_request(issue) and not self.config.include_pull_requests:
                continue
            yield run.record(self._change(client, name, issue, access))
            run.count += 1
            if run.count % self.config.checkpoint_every == 0:
                yield Checkpoint(_cursor(run.states, run.retry + run.failed))

    # -- issues -------------------------------------------------------------------------------------
    def _issues(self, client: ApiClient, name: str, since: str | None) -> Iterator[Mapping[str, Any]]:
        first: dict[str, Any] = {"state": "all", "sort": "updated", "direction": "asc",
                                 "per_page": self.config.page_size}
        if since:  # one second early: GitHub's since is inclusive, but nothing is lost if it is not
            first["since"] = _iso(parse_datetime(since, "since") - timedelta(seconds=1))
        params: dict[str, Any] | None = first  # later pages: the next link carries the query
        url: str | None = f"/repos/{name}/issues"
        while url:
            response = client.request("GET", url, params=params)
            page = client.json(response)
            if not isinstance(page, list):
                raise ConnectorError(f"github: GET /repos/{name}/issues answered {type(page).__name__}, not a list: "
                                     "check config.base_url points at the REST API root")
            yield from (item for item in page if isinstance(item, Mapping))
            url, params = _next_link(response.headers.get("Link")), None

    def _change(self, client: ApiClient, name: str, issue: Mapping[str, Any], access: Access) -> Change:
        external_id = _issue_id(name, issue)
        result = fetch_item(external_id, lambda: self._document(client, name, issue, access))
        return as_change(external_id, result)

    def _refetch(self, client: ApiClient, external_id: str) -> Change:
        name, number = _parse_id(external_id)

        def build() -> Document | Gone:
            if name not in self.config.repositories:
                return GONE
            access = self._repo_access(client, name)
            issue = client.get_json(f"/repos/{name}/issues/{number}")
            if not isinstance(issue, Mapping) or issue.get("number") != number or \
                    not str(issue.get("repository_url", "")).endswith(f"/repos/{name}"):
                return GONE  # transferred: a 301 led elsewhere; the other repository lists it if configured
            return self._document(client, name, issue, access)

        return as_change(external_id, fetch_item(external_id, build))

    def _document(self, client: ApiClient, name: str, issue: Mapping[str, Any], access: Access) -> Document:
        number = issue.get("number")
        title = str(issue.get("title") or "").strip() or f"{name}#{number}"
        comments: list[Mapping[str, Any]] = []
        if issue.get("comments"):
            url: str | None = f"/repos/{name}/issues/{number}/comments"
            params: dict[str, Any] | None = {"per_page": self.config.page_size}
            while url:
                response = client.request("GET", url, params=params)
                page = client.json(response)
                if not isinstance(page, list):
                    raise ItemError(f"comments of {name}#{number}: the answer is not a list")
                comments.extend(c for c in page if isinstance(c, Mapping))
                url, params = _next_link(response.headers.get("Link")), None
        updated = issue.get("updated_at")
        labels = [str(label.get("name")) for label in issue.get("labels") or [] if isinstance(label, Mapping)]
        author = issue.get("user")
        user = author if isinstance(author, Mapping) else {}
        metadata = {"repository": name, "state": issue.get("state"), "labels": ", ".join(labels),
                    "author": user.get("login"), "kind": "pull request" if _is_pull_request(issue) else "issue"}
        return Document(
            external_id=_issue_id(name, issue),
            title=title,
            text=_render(title, issue, labels, comments),
            access=access,
            url=issue.get("html_url") if isinstance(issue.get("html_url"), str) else None,
            content_type=ContentType.MARKDOWN,
            updated_at=parse_datetime(updated, "updated_at") if updated is not None else None,
            metadata={k: str(v) for k, v in metadata.items() if v},
        )

    def _repo_access(self, client: ApiClient, name: str) -> Access:
        repo = client.get_json(f"/repos/{name}")
        if not isinstance(repo, Mapping) or not isinstance(repo.get("private"), bool):
            raise ConnectorError(f"github: GET /repos/{name} answered without a 'private' flag: check "
                                 "config.base_url points at the REST API root")
        public = not repo["private"] and repo.get("visibility", "public") == "public"
        if public and self.config.public_repositories_public:
            return Access.everyone()
        if name in self.config.repository_access:  # entries checked when the config loaded
            return grants(self.config.repository_access[name], f"repository_access[{name!r}]")
        return self.default_access

    # -- plumbing -----------------------------------------------------------------------------------
    def _client(self) -> ApiClient:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        return ApiClient(self.config, source=f"github {self.config.base_url}", headers=headers,
                         fix_credentials="the token is invalid, expired or lacks read access to these "
                         "repositories' issues: create a new one (Settings > Developer settings > Personal "
                         "access tokens) and update config.token")


@dataclass
class _Run:
    """One sync's progress: repository positions, ids to retry, what failed and what was seen."""

    states: dict[str, dict[str, Any]]
    retry: list[str]
    failed: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    count: int = 0

    def record(self, change: Change) -> Change:
        self.seen.add(change_id(change))
        if isinstance(change, Failure):
            self.failed.append(change.external_id)
        return change


def _read_cursor(cursor: Mapping[str, Any] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    if not cursor:
        return {}, []
    repos = cursor.get("repos", {})
    if set(cursor) - {"repos", "retry"} or not isinstance(repos, Mapping) or not all(
            isinstance(v, Mapping) for v in repos.values()):
        raise ConnectorError(f"cursor {dict(cursor)!r} was not written by the github connector (expected "
                             "{'repos': {...}, 'retry': [...]}): reset the source's sync state to start over")
    return {name: dict(state) for name, state in repos.items()}, retry_ids(cursor)


def _cursor(states: Mapping[str, Mapping[str, Any]], retry: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"repos": {name: {**state, "seen": list(state.get("seen", []))}
                                     for name, state in states.items()}}
    if retry:
        out["retry"] = sorted(set(retry))
    return out


def _advance(state: dict[str, Any], issue: Mapping[str, Any]) -> bool:
    """Move the repository's position past ``issue``; False if an earlier sync already had it."""
    updated, number = issue.get("updated_at"), issue.get("number")
    if not isinstance(updated, str) or not isinstance(number, int):
        raise ConnectorError(f"github: an issue without updated_at/number ({number!r}): the API format changed")
    when = parse_datetime(updated, "updated_at")
    since = parse_datetime(state["since"], "since") if state.get("since") else None
    if since is not None and (when < since or (when == since and number in state.get("seen", []))):
        return False
    if since is None or when > since:
        state["since"], state["seen"] = _iso(when), [number]
    else:
        state["seen"] = [*state.get("seen", []), number]
    return True


def _is_pull_request(issue: Mapping[str, Any]) -> bool:
    return issue.get("pull_request") is not None


def _issue_id(name: str, issue: Mapping[str, Any]) -> str:
    return f"{name}#{issue.get('number')}"


def _parse_id(external_id: str) -> tuple[str, int]:
    match = _ID.match(external_id)
    if not match:
        raise ConnectorError(f"cursor retry id {external_id!r} is not owner/repo#number: reset the sync state")
    return match.group(1), int(match.group(2))


def _next_link(header: str | None) -> str | None:
    match = _NEXT.search(header or "")
    return match.group(1) if match else None


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")




def _render(title: str, issue: Mapping[str, Any], labels: list[str], comments: list[Mapping[str, Any]]) -> str:
    parts = [f"# {title}"]
    facts = [f"State: {issue['state']}"] if issue.get("state") else []
    if labels:
        facts.append(f"Labels: {', '.join(labels)}")
    if facts:
        parts.append("\n".join(facts))
    if str(issue.get("body") or "").strip():
        parts.append(str(issue["body"]).strip())
    for comment in comments:
        body = str(comment.get("body") or "").strip()
        if not body:
            continue
        author = comment.get("user")
        user = author if isinstance(author, Mapping) else {}
        when = f" ({comment['created_at']})" if comment.get("created_at") else ""
        parts.append(f"## Comment by {user.get('login') or 'unknown'}{when}\n\n{body}")
    return "\n\n".join(parts) + "\n"
