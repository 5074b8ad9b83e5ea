"""A fake Confluence (REST v1) for the connector tests: spaces, pages, view restrictions, trash.

Every answer is rendered from the recorded shapes in ``tests/fixtures/replay/confluence/`` (a page with all
the expansions the connector asks for, the search and list envelopes, a space, the error body
``{"statusCode", "data", "message"}``). It answers under the Cloud context path ``/wiki``:

* ``GET /wiki/rest/api/space/{key}``
* ``GET /wiki/rest/api/content/search?cql=...&expand=...&limit=...`` — a CQL subset (``type = page``,
  ``space = "K"`` / ``space in (...)``, ``lastmodified >= "yyyy-MM-dd HH:mm"`` read in the user's time zone,
  ``ORDER BY lastmodified|created ASC|DESC``); anything else is a 400 like Confluence's parse error. Like
  Confluence, it caps ``limit`` (50 with a body expansion, 200 otherwise) and pages with ``_links.next``
  carrying an opaque ``cursor``.
* ``GET /wiki/rest/api/content?spaceKey=...&type=page&status=trashed`` and ``GET /wiki/rest/api/content/{id}``

Tests change the state between syncs: :meth:`add_page`, :meth:`edit`, :meth:`restrict`, :meth:`trash`,
:meth:`purge`. The clock moves ``step`` per change, so timestamps order like the real thing.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from tests.support.apis._atlassian import AtlassianFake, clauses, keys_of, page_token, read_page_token, retarget
from tests.support.replay import Reply, Request

__all__ = ["FakeConfluence", "Page", "user"]

CONTEXT = "/wiki"


def user(name: str) -> dict:
    """A restriction user as Cloud shows it (``email`` is ``NAME@acme.example``)."""
    return {"type": "known", "accountId": f"557058:{name}", "accountType": "atlassian",
            "email": f"{name}@acme.example", "publicName": name, "displayName": name.title()}


@dataclass
class Page:
    id: str
    space: str
    title: str
    body: str
    when: datetime
    version: int = 1
    status: str = "current"
    parent: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    users: list[dict] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


class FakeConfluence(AtlassianFake):
    product = "confluence"

    def __init__(self, **site: Any) -> None:
        """``site``: :class:`AtlassianFake`'s credentials, time zone and clock."""
        super().__init__(**site)
        self.spaces: dict[str, str] = {}
        self.pages: dict[str, Page] = {}
        self._next_id = 1000

    # -- state changes (tests) ----------------------------------------------------------------------
    def add_space(self, key: str, name: str | None = None) -> None:
        self.spaces[key] = name or key.title()

    def add_page(self, space: str, title: str, body: str, *, parent: str | None = None, users: tuple[str, ...] = (),
                 groups: tuple[str, ...] = ()) -> str:
        self._next_id += 1
        page_id = str(self._next_id)
        when = self.tick()
        self.pages[page_id] = Page(page_id, space, title, body, when, parent=parent, created=when,
                                   users=[user(u) for u in users], groups=list(groups))
        return page_id

    def edit(self, page_id: str, body: str | None = None, title: str | None = None) -> None:
        page = self.pages[page_id]
        page.body = body if body is not None else page.body
        page.title = title if title is not None else page.title
        page.version += 1
        page.when = self.tick()

    def restrict(self, page_id: str, users: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> None:
        """Set the page's view restriction (empty: none). Like Confluence, this does not touch lastmodified."""
        page = self.pages[page_id]
        page.users, page.groups = [user(u) for u in users], list(groups)

    def trash(self, page_id: str) -> None:
        self.pages[page_id].status = "trashed"
        self.pages[page_id].when = self.tick()

    def purge(self, page_id: str) -> None:
        del self.pages[page_id]

    # -- FakeApi ------------------------------------------------------------------------------------
    def error(self, status: int, message: str) -> Reply:
        body = self.fixture("error.json")
        body["statusCode"], body["message"] = status, message
        return Reply(status, body)

    def handle(self, request: Request) -> Reply:
        path = request.path
        if not path.startswith(f"{CONTEXT}/rest/api/"):
            return self.error(404, f"null for uri: {path}")
        route = path[len(f"{CONTEXT}/rest/api/"):]
        if match := re.fullmatch(r"space/([^/]+)", route):
            return self._space(match.group(1))
        if route == "content/search":
            return self._search(request)
        if route == "content":
            return self._list(request)
        if match := re.fullmatch(r"content/(\d+)", route):
            page = self.pages.get(match.group(1))
            if page is None or page.status != "current":
                return self.error(404, f"No content found with id: ContentId{{id={match.group(1)}}}")
            return Reply(200, self._render(page, request.arg("expand") or ""))
        return self.error(404, f"null for uri: {path}")

    # -- routes -------------------------------------------------------------------------------------
    def _space(self, key: str) -> Reply:
        if key not in self.spaces:
            return self.error(404, f"No space found with key : {key}")
        body = retarget(self.fixture("space.json"), "ENG", key)
        body["name"] = self.spaces[key]
        return Reply(200, body)

    def _search(self, request: Request) -> Reply:
        cql, expand = request.arg("cql") or "", request.arg("expand") or ""
        try:
            match = self._cql(cql)
        except ValueError as exc:
            return self.error(400, f"Could not parse cql : {cql} ({exc})")
        start = _cursor_start(request)
        cap = 50 if "body" in expand else 200
        limit = min(int(request.arg("limit") or 25), cap)
        pages = match
        window = pages[start:start + limit]
        body = self.fixture("content_search.json")
        body.update(results=[self._render(p, expand) for p in window], start=start, limit=limit, size=len(window),
                    totalSize=len(pages), cqlQuery=cql)
        params = {"cql": cql, "limit": limit, "expand": expand}
        self._links(request, body, "/rest/api/content/search", params, start + limit, len(pages), cursor=True)
        return Reply(200, body)

    def _list(self, request: Request) -> Reply:
        space, status = request.arg("spaceKey"), request.arg("status") or "current"
        start, limit = int(request.arg("start") or 0), min(int(request.arg("limit") or 25), 200)
        pages = [p for p in self.pages.values() if p.status == status and (space is None or p.space == space)]
        window = pages[start:start + limit]
        body = self.fixture("content_list.json")
        body.update(results=[self._render(p, request.arg("expand") or "") for p in window], start=start,
                    limit=limit, size=len(window))
        params = {k: v for k, v in {"spaceKey": space, "type": "page", "status": status, "limit": limit}.items() if v}
        self._links(request, body, "/rest/api/content", params, start + limit, len(pages), cursor=False)
        return Reply(200, body)

    def _links(self, request: Request, body: dict, route: str, params: dict, following: int, total: int, *,
               cursor: bool) -> None:
        base = body["_links"]["base"] = f"http://{request.headers.get('host', '127.0.0.1')}{CONTEXT}"
        body["_links"]["self"] = f"{base}{route}?{urlencode(params)}"
        body["_links"].pop("next", None)
        if following < total:
            extra = {"next": "true", "cursor": page_token(start=following)} if cursor else {"start": following}
            body["_links"]["next"] = f"{route}?{urlencode({**extra, **params})}"

    # -- CQL ----------------------------------------------------------------------------------------
    def _cql(self, cql: str) -> list[Page]:
        order = re.search(r"\s+ORDER\s+BY\s+(lastmodified|created)\s+(ASC|DESC)\s*$", cql, re.IGNORECASE)
        where = cql[:order.start()] if order else cql
        tests = []
        for clause in clauses(where):
            if re.fullmatch(r"type\s*=\s*page", clause, re.IGNORECASE):
                continue
            if (keys := keys_of("space", clause)) is not None:
                tests.append(lambda p, keys=keys: p.space in keys)
            elif (since := self.since("lastmodified", clause, "%Y-%m-%d %H:%M")) is not None:
                tests.append(lambda p, since=since: p.when >= since)
            else:
                raise ValueError(f"unsupported clause {clause!r}")
        pages = [p for p in self.pages.values() if p.status == "current" and all(t(p) for t in tests)]
        if order:
            key = (lambda p: p.when) if order.group(1).lower() == "lastmodified" else (lambda p: p.created)
            pages.sort(key=key, reverse=order.group(2).upper() == "DESC")
        return pages

    # -- rendering ----------------------------------------------------------------------------------
    def _render(self, page: Page, expand: str) -> dict:
        template = self.fixture("page.json")
        wanted = set(expand.split(",")) if expand else set()
        out = retarget({k: v for k, v in template.items()
                         if k not in ("space", "version", "ancestors", "body", "restrictions")}, "393219", page.id)
        out.update(id=page.id, title=page.title, status=page.status)
        out["_links"]["webui"] = f"/spaces/{page.space}/pages/{page.id}/{page.title.replace(' ', '+')}"
        if "space" in wanted:
            out["space"] = retarget(template["space"], "ENG", page.space)
            out["space"]["name"] = self.spaces.get(page.space, page.space)
        if "version" in wanted:
            out["version"] = retarget(template["version"], "393219", page.id)
            out["version"].update(number=page.version, when=_iso(page.when))
        if "ancestors" in wanted:
            out["ancestors"] = [self._ancestor(template["ancestors"][0], a) for a in self._ancestry(page)]
        if "body.storage" in wanted:
            out["body"] = copy.deepcopy(template["body"])
            out["body"]["storage"]["value"] = page.body
        if any(w.startswith("restrictions.read") for w in wanted):
            out["restrictions"] = retarget(template["restrictions"], "393219", page.id)
            read = out["restrictions"]["read"]["restrictions"]
            read["user"].update(results=copy.deepcopy(page.users), size=len(page.users))
            groups = [{**read["group"]["results"][0], "name": g, "id": f"group-{g}"} for g in page.groups]
            read["group"].update(results=groups, size=len(groups))
        return out

    def _ancestry(self, page: Page) -> list[Page]:
        chain, parent = [], page.parent
        while parent is not None and parent in self.pages:
            chain.insert(0, self.pages[parent])
            parent = self.pages[parent].parent
        return chain

    def _ancestor(self, template: dict, page: Page) -> dict:
        out = retarget(template, "262160", page.id)
        out.update(id=page.id, title=page.title, status=page.status)
        return out


def _cursor_start(request: Request) -> int:
    cursor = request.arg("cursor")
    if cursor:
        return int(read_page_token(cursor)["start"])
    return int(request.arg("start") or 0)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
