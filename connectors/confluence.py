"""Confluence connector: pages of chosen spaces over the Confluence REST API (v1; Cloud and Data Center).

Config (``[[sources]] connector = "confluence"``)::

    [sources.config]
    base_url = "https://acme.atlassian.net/wiki"   # Data Center: https://confluence.example.com
    email = "bot@acme.example"                     # Cloud: Basic email:API token; leave out for a DC PAT (Bearer)
    token = "env:CONFLUENCE_TOKEN"
    spaces = ["ENG", "OPS"]
    space_access = {ENG = ["eng"], OPS = ["ops", "user:dana"]}   # "public", "user:NAME" or group names
    user_field = "email"          # which restriction-user field is the citeline user: email, accountId, username
    time_zone = "UTC"             # the API user's profile time zone (CQL reads dates in it)
    overlap_minutes = 5           # re-read before the cursor
    read_trash = true             # delete trashed pages at once (else the complete listing prunes them)

plus :class:`~citeline.connectors._http.ApiConfig`'s retry, backoff, ``request_budget`` and ``page_size``.

* **Id**: the page id (stable across renames and moves). **Text**: ``# title`` and the storage format
  (XHTML) as Markdown-ish text: code macros as fenced code with their language, info/note/warning/tip/panel
  macros as quoted blocks with their label, page links as the linked title with its URL
  (:func:`citeline.connectors._html.parse_html` with ``storage``). **URL**: ``base_url`` + the page's ``_links.webui``.
* **Access**: a page's read restrictions (``restrictions.read``: users by ``user_field``, groups by
  name) and those of its ancestors (Confluence inherits view restrictions): every restricted level must
  admit a reader, so the page gets the users and groups common to all of them (possibly nobody but an
  admin: fail closed). A page without restrictions gets its space's ``space_access``, else the source's
  default (private unless configured). Names citeline cannot hold (with spaces) and users lacking
  ``user_field`` are left out, which only narrows access. The restriction replaces the space's access:
  keep ``space_access`` no wider than the space's real audience.
* **Changes**: CQL ``lastmodified >= "yyyy-MM-dd HH:mm" ORDER BY lastmodified ASC`` from the cursor
  (see :mod:`citeline.connectors._atlassian`). A restriction change does not touch ``lastmodified``, so
  every sync also reads all pages' restrictions (one listing without bodies) and re-yields the pages
  whose effective restrictions differ from the fingerprints kept in the cursor (``restricted``).
  A change of ``space_access`` needs ``citeline sync --full``.
* **Deletions**: trashed pages listed in each space's trash are yielded as Deletes; purged pages,
  pages moved out of the spaces or no longer visible to the API user are pruned by ``list_ids()``
  (a complete CQL listing; an inconsistent listing raises so nothing is pruned from it).
* **Failures**: a page whose body cannot be read is a Failure; 401/403 (:class:`CredentialsRejected`),
  an exhausted budget or a source that stays unavailable end the run, keeping the last checkpoint.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from citeline.connectors._atlassian import (
    AccessMap,
    AtlassianConfig,
    Position,
    Stamped,
    access_by_name,
    atlassian_client,
    changed_items,
    parse_instant,
    query_time,
    read_position,
    require_visible,
)
from citeline.connectors._common import ItemError, coerce_config
from citeline.connectors._html import StorageLinks, parse_html
from citeline.connectors._http import ApiClient, ApiError, CredentialsRejected, NotFound
from citeline.contracts.connector import Change, Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConnectorError

__all__ = ["ConfluenceConnector", "UserField"]

log = logging.getLogger(__name__)

_SWEEP_EXPAND = "ancestors,restrictions.read.restrictions.user,restrictions.read.restrictions.group"
_CONTENT_EXPAND = f"body.storage,version,space,{_SWEEP_EXPAND}"


class UserField(str, enum.Enum):
    """Which field of a restriction's user is the citeline user name."""

    EMAIL = "email"
    ACCOUNT_ID = "accountId"  # Cloud
    USERNAME = "username"  # Data Center / Server


def _space_key(value: str) -> str:
    if not value or not all(c.isalnum() or c in "_~" for c in value):
        raise ValueError(f"{value!r} is not a Confluence space key (letters, digits, '~' for personal spaces)")
    return value


@dataclass(frozen=True)
class _Node:
    """A page's own read restriction (``None``: unrestricted) and its ancestors' ids."""

    own: frozenset[str] | None
    ancestors: tuple[str, ...]


class ConfluenceConnector:
    """Confluence pages with their view restrictions; see the module docstring."""

    class Config(AtlassianConfig):
        spaces: tuple[Annotated[str, AfterValidator(_space_key)], ...] = Field(min_length=1)
        space_access: AccessMap = Field(default_factory=dict)
        user_field: UserField = UserField.EMAIL
        read_trash: bool = Field(True, description="yield trashed pages as Deletes")

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        self._overlap = timedelta(minutes=self.config.overlap_minutes)
        self._space_access = access_by_name(self.config.space_access, "space_access")

    def _client(self) -> ApiClient:
        return atlassian_client(self.config, "confluence", "view the spaces")

    # -- the contract -------------------------------------------------------------------------------
    def validate(self) -> None:
        with self._client() as api:
            require_visible(api, "confluence", "space", self.config.spaces, lambda key: f"rest/api/space/{key}",
                            "fix config.spaces or give the user view permission")

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        position = read_position(cursor, frozenset({"restricted"}))
        restricted = _restricted(cursor)
        every = self.config.checkpoint_every
        with self._client() as api:
            nodes = self._sweep(api)
            emitted: set[str] = set()
            count = 0
            for position, stamped in changed_items(lambda lo, tok: self._changed_page(api, lo, tok), position,  # noqa: B020 (starts from the saved one)
                                                   self._overlap):
                yield self._page_change(stamped.item, nodes, restricted)
                emitted.add(stamped.id)
                count += 1
                if count % every == 0:
                    yield Checkpoint(_cursor(position, restricted))
            for page_id in sorted(set(restricted) | {i for i in nodes if _fingerprint(i, nodes) is not None}):
                if page_id in emitted or _fingerprint(page_id, nodes) == restricted.get(page_id):
                    continue
                if page_id not in nodes:  # gone: list_ids prunes it
                    restricted.pop(page_id, None)
                    continue
                yield self._refetch(api, page_id, nodes, restricted)
                count += 1
                if count % every == 0:
                    yield Checkpoint(_cursor(position, restricted))
            if self.config.read_trash:
                for page_id in self._trashed(api):
                    restricted.pop(page_id, None)
                    yield Delete(page_id)
        yield Checkpoint(_cursor(position.final(), restricted))

    def list_ids(self) -> list[str]:
        with self._client() as api:
            ids = [str(page["id"]) for page in self._search(api, self._scope_cql(), expand=None, complete=True)]
        if len(ids) != len(set(ids)):
            raise ApiError("confluence: the page listing repeated pages (it changed while it was read); "
                           "nothing is pruned this time")
        return ids

    # -- reading ------------------------------------------------------------------------------------
    def _scope_cql(self) -> str:
        spaces = ",".join(f'"{key}"' for key in self.config.spaces)
        return f"type = page AND space in ({spaces})"

    def _search(self, api: ApiClient, cql: str, expand: str | None, complete: bool = False) -> Iterator[dict[str, Any]]:
        """Every result of a CQL content search, following ``_links.next``; ``complete``: check ``totalSize``."""
        params: dict[str, Any] = {"cql": cql, "limit": self.config.page_size}
        if expand:
            params["expand"] = expand
        data = api.get_json("rest/api/content/search", params)
        total, seen = data.get("totalSize"), 0
        while True:
            results = _results(data, "rest/api/content/search")
            seen += len(results)
            yield from results
            link = (data.get("_links") or {}).get("next")
            if not link:
                break
            data = api.get_json(link)
        if complete and isinstance(total, int) and total != seen:
            raise ApiError(f"confluence: the search {cql!r} announced {total} pages but returned {seen} (pages "
                           "changed while it was read); nothing is pruned this time, the next sync reads again")

    def _sweep(self, api: ApiClient) -> dict[str, _Node]:
        """Every page in scope with its own read restriction and its ancestors (no bodies)."""
        nodes = {}
        for page in self._search(api, self._scope_cql(), _SWEEP_EXPAND):
            nodes[str(page["id"])] = _Node(self._own_restriction(page), _ancestors(page))
        return nodes

    def _changed_page(self, api: ApiClient, lower: Any, token: Any) -> tuple[list[Stamped[dict]], Any]:
        if token is None:
            cql = self._scope_cql()
            if lower is not None:
                cql += f' AND lastmodified >= "{query_time(lower, self.config.time_zone, "%Y-%m-%d %H:%M")}"'
            cql += " ORDER BY lastmodified ASC"
            data = api.get_json("rest/api/content/search",
                                {"cql": cql, "limit": self.config.page_size, "expand": _CONTENT_EXPAND})
        else:
            data = api.get_json(token)
        items = []
        for page in _results(data, "rest/api/content/search"):
            try:
                items.append(Stamped(str(page["id"]), parse_instant((page.get("version") or {}).get("when"),
                                                                    "version.when"), page))
            except (KeyError, ItemError) as exc:
                raise ApiError(f"confluence: a search result lacks its id or version.when ({exc}): the connector "
                               "and this Confluence version disagree; report it") from None
        return items, (data.get("_links") or {}).get("next") or None

    def _refetch(self, api: ApiClient, page_id: str, nodes: dict[str, _Node], restricted: dict[str, str]) -> Change:
        """A page whose restrictions changed without an edit."""
        try:
            page = api.get_json(f"rest/api/content/{page_id}", {"expand": _CONTENT_EXPAND})
        except NotFound:
            restricted.pop(page_id, None)
            return Delete(page_id)
        except ApiError as exc:
            if isinstance(exc, CredentialsRejected) or exc.status is None or exc.status < 500:
                raise
            return Failure(page_id, f"restrictions changed but the page cannot be read: {exc}")
        return self._page_change(page, nodes, restricted)

    def _trashed(self, api: ApiClient) -> Iterator[str]:
        for key in self.config.spaces:
            params = {"spaceKey": key, "type": "page", "status": "trashed", "limit": self.config.page_size}
            try:
                data = api.get_json("rest/api/content", params)
                while True:
                    for page in _results(data, "rest/api/content"):
                        yield str(page["id"])
                    link = (data.get("_links") or {}).get("next")
                    if not link:
                        break
                    data = api.get_json(link)
            except CredentialsRejected as exc:
                if exc.status != 403:
                    raise
                log.warning("confluence: the trash of space %s is not readable (%s); trashed pages are pruned "
                            "by the complete listing instead", key, exc)

    # -- mapping ------------------------------------------------------------------------------------
    def _own_restriction(self, page: Mapping[str, Any]) -> frozenset[str] | None:
        read = ((page.get("restrictions") or {}).get("read") or {}).get("restrictions")
        if not isinstance(read, Mapping) or not all(isinstance((read.get(k) or {}).get("results"), list)
                                                    for k in ("user", "group")):
            # never guess "unrestricted": a server that ignores the expansion would leak every restricted page
            raise ApiError(f"confluence: page {page.get('id')} came without restrictions.read.restrictions.user/"
                           "group although they were expanded: this Confluence does not expand restrictions in "
                           "searches; report it with the version (nothing was indexed from this answer)")
        users, groups = read["user"]["results"], read["group"]["results"]
        if not users and not groups:
            return None
        tokens = set()
        for user in users:
            name = user.get(self.config.user_field.value)
            if _valid_name(name):
                tokens.add(f"u:{name}")
            else:
                log.warning("confluence: page %s: restriction user %s has no usable %s; left out (narrower access)",
                            page.get("id"), user.get("displayName") or user.get("accountId"),
                            self.config.user_field.value)
        for group in groups:
            if _valid_name(group.get("name")):
                tokens.add(f"g:{group['name']}")
        for kind in ("user", "group"):
            if ((read.get(kind) or {}).get("_links") or {}).get("next"):
                log.warning("confluence: page %s: the read restriction lists more %ss than embedded; only those "
                            "embedded get access (narrower)", page.get("id"), kind)
        return frozenset(tokens)

    def _access(self, page_id: str, space: str | None, nodes: Mapping[str, _Node]) -> Access:
        tokens = _effective(page_id, nodes)
        if tokens is None:
            return self._space_access.get(space or "", self.default_access)
        return Access(users=tuple(t[2:] for t in tokens if t.startswith("u:")),
                      groups=tuple(t[2:] for t in tokens if t.startswith("g:")))

    def _page_change(self, page: Mapping[str, Any], nodes: dict[str, _Node], restricted: dict[str, str]) -> Change:
        page_id = str(page["id"])
        # the page's own expansion is fresher than the sweep (and the only source for a page created since)
        nodes[page_id] = _Node(self._own_restriction(page), _ancestors(page))
        fingerprint = _fingerprint(page_id, nodes)
        if fingerprint is None:
            restricted.pop(page_id, None)
        else:
            restricted[page_id] = fingerprint
        try:
            return Upsert(self._document(page_id, page, nodes))
        except (ItemError, KeyError, TypeError) as exc:
            return Failure(page_id, f"page {page_id}: {exc}")

    def _document(self, page_id: str, page: Mapping[str, Any], nodes: Mapping[str, _Node]) -> Document:
        title = (page.get("title") or "").strip()
        if not title:
            raise ItemError("has no title")
        body = ((page.get("body") or {}).get("storage") or {}).get("value")
        if not isinstance(body, str):
            raise ItemError("has no body.storage value (expand=body.storage was ignored?)")
        space = (page.get("space") or {}).get("key")
        text = parse_html(body, storage=StorageLinks(self.config.base_url, space)).text.strip()
        version = page.get("version") or {}
        webui = (page.get("_links") or {}).get("webui")
        return Document(
            external_id=page_id,
            title=title,
            text=f"# {title}\n\n{text}\n" if text else f"# {title}\n",
            access=self._access(page_id, space, nodes),
            url=f"{self.config.base_url}/{webui.lstrip('/')}" if isinstance(webui, str) else None,
            content_type=ContentType.MARKDOWN,
            updated_at=parse_instant(version.get("when"), "version.when") if version.get("when") else None,
            metadata={k: str(v) for k, v in (("space", space), ("version", version.get("number"))) if v is not None},
        )


def _results(data: Any, where: str) -> list[dict[str, Any]]:
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise ApiError(f"confluence: {where} answered without a results list: check config.base_url is the wiki "
                       "root (Cloud: https://SITE.atlassian.net/wiki)")
    return results


def _ancestors(page: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(a["id"]) for a in page.get("ancestors") or ())


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 200 and not any(c.isspace() or ord(c) < 32 for c in name)


def _effective(page_id: str, nodes: Mapping[str, _Node]) -> frozenset[str] | None:
    """Tokens admitted by every restricted level (the page and its ancestors); ``None``: no restriction."""
    node = nodes[page_id]
    levels: list[frozenset[str]] = []
    for level in (*node.ancestors, page_id):
        if level not in nodes:  # an ancestor we cannot see: its restrictions are unknown, fail closed
            levels.append(frozenset())
        elif (own := nodes[level].own) is not None:
            levels.append(own)
    if not levels:
        return None
    return frozenset.intersection(*levels)


def _fingerprint(page_id: str, nodes: Mapping[str, _Node]) -> str | None:
    if page_id not in nodes:
        return None
    tokens = _effective(page_id, nodes)
    if tokens is None:
        return None
    return hashlib.sha256(json.dumps(sorted(tokens)).encode()).hexdigest()[:16]


def _restricted(cursor: Mapping[str, Any] | None) -> dict[str, str]:
    value = (cursor or {}).get("restricted", {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConnectorError(f"cursor's 'restricted' is not a map of page id to fingerprint: {value!r}; reset the "
                             "source's sync state")
    return dict(value)


def _cursor(position: Position, restricted: dict[str, str]) -> dict[str, Any]:
    cursor = position.cursor()
    if restricted:
        cursor["restricted"] = dict(sorted(restricted.items()))
    return cursor
