"""MediaWiki connector: the pages of a wiki through its Action API (``api.php``).

* **Credentials**: a bot password (``username = "User@app"`` and ``password``, made at
  ``Special:BotPasswords`` with the ``basic`` grant, ``highvolume`` for bigger batches), used with
  ``action=login``; every request then asserts the login (``assert=user``), so a revoked or expired bot
  password stops the run with :class:`~citeline.connectors._http.CredentialsRejected` instead of reading
  as an anonymous visitor. Without a username the wiki is read anonymously (a public wiki).
* **Scope**: the pages of ``namespaces`` (ids; default ``[0]``, the main namespace); redirects are not
  documents.
* **Id**: the page id (``pageid``) as a string: it survives renames and moves, so a page moved into a
  private namespace keeps its id and only its access changes.
* **Text**: ``# Title`` then the current revision's wikitext converted to Markdown-ish text
  (:mod:`citeline.connectors._wikitext`; templates are dropped), or with ``render = "parsed"`` the HTML
  the wiki renders (``action=parse``, one request per page, templates expanded). URL: the page's
  canonical URL; ``updated_at``: the revision's time.
* **Access** (MediaWiki core has no per-page read permissions, so access comes from configuration):

  - ``restriction_access`` maps a page protection ``"type=level"`` onto access entries, e.g.
    ``{"read=sysop" = ["wiki-admins"]}`` for a wiki that adds a ``read`` restriction type
    (``$wgRestrictionTypes[] = 'read'`` with an extension enforcing it) or ``{"edit=sysop" = [...]}``.
    A page with a configured protection gets that access (the first configured key the page has);
  - else ``namespace_access`` maps a namespace id onto entries, e.g. ``{3000 = ["staff"]}`` for a
    namespace only staff may read (Lockdown's ``$wgNamespacePermissionLockdown``);
  - else the source's default access (private unless the source says otherwise).

  Entries are ``public``, ``user:NAME`` or group names. Cascading and expiring protections are not
  read: an expired protection keeps its restricted access until the page next changes (fail closed).
* **Sync**: the first sync lists ``allpages`` per namespace and reads the pages in batches of
  ``content_batch`` ids (``prop=info|revisions``). Later syncs read what happened since the cursor:
  ``list=recentchanges`` (edits and new pages in the namespaces) and ``list=logevents`` (deletions,
  restores, moves, protections, imports, merges, content-model changes; deleted pages lose their
  recent-changes rows, so these come from the log), and read each page they name again as it is now:
  gone, a redirect or moved out of the namespaces is a :class:`Delete`. Both feeds are re-read from
  ``overlap_s`` before the cursor (rows committed late are not missed; re-reading is harmless; with 0 the
  feeds resume exactly after the cursor's rows). A cursor
  older than ``rc_max_age_days`` (the wiki's ``$wgRCMaxAge``: older recent changes are purged) starts a
  full sync again. ``list_ids()`` is the complete ``allpages`` listing, so anything the feeds missed is
  pruned after every sync.
* **Failures**: a page whose revision cannot be read (hidden by revision deletion, or an API error for
  that page alone) is a :class:`Failure`; its id is retried at the next sync (the cursor's ``retry``).
* **Rate limits**: ``maxlag`` is sent with every request; ``maxlag``/``ratelimited``/``readonly`` errors
  (in 200 responses), 429 and 5xx are retried with ``Retry-After`` or backoff, within ``request_budget``.
* **Cursor**: ``{"phase": "full", "since", "ns", "after", "failed"}`` during the first sync (resume after
  page ``after`` of namespace ``ns``); then ``{"phase": "changes", "log": [time, logid], "rc": [time,
  rcid], "retry": [pageid, ...]}`` (the cursor and the two feeds: :mod:`citeline.connectors._mediawiki_feeds`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from itertools import islice
from typing import Any

from pydantic import Field, field_validator, model_validator

from citeline.connectors._common import ItemError, access_from_entries, coerce_config
from citeline.connectors._html import parse_html
from citeline.connectors._http import ApiConfig, Secret
from citeline.connectors._mediawiki import WikiError, WikiSession
from citeline.connectors._mediawiki_feeds import (
    ChangeFeeds,
    ChangesCursor,
    FullCursor,
    Ref,
    format_ts,
    parse_ts,
    positions_upto,
    read_cursor,
    server_time,
)
from citeline.connectors._wikitext import wikitext_to_markdown
from citeline.contracts.connector import Change, Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access, ContentType, Document
from citeline.errors import ConfigError, ConnectorError

__all__ = ["MediaWikiConnector", "Rendering"]

log = logging.getLogger(__name__)

_FIX_CREDENTIALS = ("make a bot password at Special:BotPasswords on the wiki (grant 'basic'; 'highvolume' for "
                    "bigger batches), then set config.username ('User@app') and config.password (e.g. "
                    "'env:WIKI_BOT_PASSWORD'); a revoked or reset bot password needs a new one")
_PAGE_PROPS = {"prop": "info|revisions", "inprop": "protection|url", "rvprop": "content|ids|timestamp",
               "rvslots": "main"}


class Rendering(str, enum.Enum):
    """Where a page's text comes from."""

    WIKITEXT = "wikitext"  # the revision's wikitext, converted here (batched: fast)
    PARSED = "parsed"  # the wiki's rendered HTML (action=parse: one request per page, templates expanded)


class MediaWikiConnector:
    """Reads a MediaWiki's pages through its Action API; see the module docstring."""

    class Config(ApiConfig):
        # base_url (from ApiConfig): the wiki's root, where api.php is, e.g. https://wiki.example.com/w
        api_path: str | None = Field(None, description="api.php's path under base_url when it is not found")
        username: str | None = Field(None, description="bot password user name 'User@app'; none: anonymous")
        password: Secret | None = Field(None, description="the bot password, or env:NAME")
        namespaces: tuple[int, ...] = Field((0,), min_length=1, description="namespace ids to index")
        namespace_access: dict[int, tuple[str, ...]] = Field(
            default_factory=dict, description="namespace id -> access entries (public, user:NAME, groups)")
        restriction_access: dict[str, tuple[str, ...]] = Field(
            default_factory=dict, description='page protection "type=level" -> access entries')
        render: Rendering = Field(Rendering.WIKITEXT, description="wikitext (converted here) or parsed HTML")
        page_size: int = Field(500, ge=1, le=5000, description="rows per list request (500 is the API's "
                               "limit; 5000 with the highvolume grant)")
        content_batch: int = Field(50, ge=1, le=50, description="pages read per request")
        maxlag_s: int | None = Field(5, ge=0, description="maxlag sent with every request (none: not sent)")
        overlap_s: float = Field(10.0, ge=0, description="re-read the change feeds from this long before the cursor")
        rc_max_age_days: float = Field(90.0, gt=0, description="the wiki's $wgRCMaxAge in days")

        @field_validator("namespaces")
        @classmethod
        def _unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
            if len(set(value)) != len(value) or any(n < 0 for n in value):
                raise ValueError("namespaces must be distinct ids >= 0 (0 is the main namespace)")
            return value

        @field_validator("restriction_access")
        @classmethod
        def _restriction_keys(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
            for key in value:
                kind, _, level = key.partition("=")
                if not kind.strip() or not level.strip():
                    raise ValueError(f"{key!r} is not 'type=level', e.g. 'read=sysop' or 'edit=sysop'")
            return value

        @model_validator(mode="after")
        def _credentials(self) -> MediaWikiConnector.Config:
            if (self.username is None) != (self.password is None):
                raise ValueError("set both username ('User@app') and password (a bot password), or neither "
                                 "to read a public wiki anonymously")
            unindexed = sorted(set(self.namespace_access) - set(self.namespaces))
            if unindexed:
                raise ValueError(f"namespace_access names namespaces {unindexed} that are not in namespaces")
            return self

    def __init__(self, config: Config | Mapping[str, Any], default_access: Access | None = None) -> None:
        self.config = coerce_config(self.Config, config)
        self.default_access = default_access or Access.private()
        try:
            self._ns_access = {ns: access_from_entries(entries, f"namespace_access[{ns}]")
                               for ns, entries in self.config.namespace_access.items()}
            self._restricted = {key.replace(" ", ""): access_from_entries(entries, f"restriction_access[{key}]")
                                for key, entries in self.config.restriction_access.items()}
        except ItemError as exc:
            raise ConfigError(f"invalid connector config: {exc}") from None

    # -- the contract -------------------------------------------------------------------------------
    def validate(self) -> None:
        with self._session() as wiki:
            wiki.open()
            info = wiki.query({"meta": "siteinfo", "siprop": "namespaces"})["query"]["namespaces"]
            known = {int(ns) for ns in info}
            missing = [ns for ns in self.config.namespaces if ns not in known]
            if missing:
                raise ConnectorError(f"{wiki.source}: namespaces {missing} do not exist on this wiki (it has "
                                     f"{sorted(known)}): fix config.namespaces")

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        state = read_cursor(cursor, self.config.namespaces)
        with self._session() as wiki:
            wiki.open()
            now = server_time(wiki)
            if isinstance(state, ChangesCursor):
                oldest = min(parse_ts(state.log[0]), parse_ts(state.rc[0]))
                if now - oldest <= timedelta(days=self.config.rc_max_age_days):
                    yield from self._changes(wiki, state)
                    return
                log.warning("%s: cursor from %s is older than rc_max_age_days=%s; reading every page again",
                            wiki.source, oldest.isoformat(), self.config.rc_max_age_days)
                state = None
            if state is None:
                state = FullCursor(since=format_ts(now), ns=self.config.namespaces[0])
            yield from self._full(wiki, state)

    def list_ids(self) -> list[str]:
        with self._session() as wiki:
            wiki.open()
            return [str(pageid) for ns in self.config.namespaces for pageid, _ in self._allpages(wiki, ns, None)]

    # -- full sync ----------------------------------------------------------------------------------
    def _full(self, wiki: WikiSession, state: FullCursor) -> Iterator[Change]:
        failed = list(state.failed)
        count = 0
        start = self.config.namespaces.index(state.ns)
        for ns in self.config.namespaces[start:]:
            after = state.after if ns == state.ns else None
            for batch in _batched(self._allpages(wiki, ns, after), self.config.content_batch):
                changes = self._read_pages(wiki, [("id", pageid) for pageid, _ in batch])
                for (pageid, title), change in zip(batch, changes, strict=True):
                    if isinstance(change, Failure):
                        failed.append(pageid)
                    yield change or Delete(str(pageid))
                    count += 1
                    if count % self.config.checkpoint_every == 0:
                        position = FullCursor(since=state.since, ns=ns, after=title, failed=tuple(failed))
                        yield Checkpoint(position.model_dump(mode="json"))
        start_pos = (state.since, 0)
        yield Checkpoint(ChangesCursor(log=start_pos, rc=start_pos, retry=tuple(sorted(set(failed))))
                         .model_dump(mode="json"))

    def _allpages(self, wiki: WikiSession, ns: int, after: str | None) -> Iterator[tuple[int, str]]:
        """``(pageid, title)`` of the namespace's pages in title order, after ``after`` (a title)."""
        params: dict[str, Any] = {"list": "allpages", "apnamespace": ns, "apfilterredir": "nonredirects",
                                  "aplimit": self.config.page_size}
        if after is not None:
            params["apfrom"] = _without_namespace(after, ns)
        for row in wiki.query_all(params, "allpages"):
            if row["title"] != after:
                yield int(row["pageid"]), row["title"]

    # -- incremental sync ---------------------------------------------------------------------------
    def _changes(self, wiki: WikiSession, state: ChangesCursor) -> Iterator[Change]:
        feeds = ChangeFeeds(wiki, namespaces=self.config.namespaces, page_size=self.config.page_size,
                            overlap_s=self.config.overlap_s)
        log_rows, log_end = feeds.log_rows(state.log)
        rc_rows, rc_end = feeds.rc_rows(state.rc)
        rows = sorted(log_rows + rc_rows, key=lambda r: r[0][0])
        latest = {ref: index for index, (_, _, ref) in enumerate(rows)}
        retries = [pageid for pageid in state.retry if ("id", pageid) not in latest]
        work: list[tuple[int | None, Ref]] = [(None, ("id", pageid)) for pageid in retries]
        work += [(index, rows[index][2]) for index in sorted(latest.values())]
        positions = {"log": state.log, "rc": state.rc}
        upto = positions_upto(rows, positions)
        failed: list[int] = []
        yielded: set[str] = set()
        count = retried = 0
        for batch in _batched(work, self.config.content_batch):
            changes = self._read_pages(wiki, [ref for _, ref in batch])
            for (index, _), change in zip(batch, changes, strict=True):
                if index is None:
                    retried += 1
                else:
                    positions = upto[index]
                if change is None or _external_id(change) in yielded:
                    continue
                yielded.add(_external_id(change))
                if isinstance(change, Failure):
                    failed.append(int(change.external_id))
                yield change
                count += 1
                if count % self.config.checkpoint_every == 0:
                    retry = tuple(retries[retried:]) + tuple(failed)
                    yield Checkpoint(ChangesCursor(log=positions["log"], rc=positions["rc"], retry=retry)
                                     .model_dump(mode="json"))
        final = ChangesCursor(log=max(log_end, state.log), rc=max(rc_end, state.rc), retry=tuple(sorted(set(failed))))
        yield Checkpoint(final.model_dump(mode="json"))

    # -- reading pages ------------------------------------------------------------------------------
    def _read_pages(self, wiki: WikiSession, refs: list[Ref]) -> list[Change | None]:
        """Each ref's change (None: a title that names no page); an API error for the batch is retried per page."""
        try:
            pages = self._fetch(wiki, refs)
        except WikiError as exc:
            if len(refs) > 1:
                return [change for ref in refs for change in self._read_pages(wiki, [ref])]
            kind, value = refs[0]
            return [Failure(str(value), f"page {value}: {exc}") if kind == "id" else None]
        out: list[Change | None] = []
        for kind, value in refs:
            page = pages.get((kind, value))
            if page is None or page.get("missing") or page.get("invalid"):
                out.append(Delete(str(value)) if kind == "id" else None)
            else:
                out.append(self._page_change(wiki, page))
        return out

    def _fetch(self, wiki: WikiSession, refs: list[Ref]) -> dict[Ref, dict[str, Any]]:
        """The pages' info and current revision, keyed by the refs that asked for them (over ``continue``)."""
        found: dict[Ref, dict[str, Any]] = {}
        for kind in ("id", "title"):
            values = [value for k, value in refs if k == kind]
            if not values:
                continue
            params = {**_PAGE_PROPS, ("pageids" if kind == "id" else "titles"): "|".join(map(str, values))}
            extra: dict[str, Any] = {}
            while True:
                body = wiki.query({**params, **extra})
                for page in body.get("query", {}).get("pages", []):
                    key: Ref = ("id", page["pageid"]) if kind == "id" and "pageid" in page else ("title", page["title"])
                    merged = found.setdefault(key, {})
                    merged.update({k: v for k, v in page.items() if k != "revisions" or v})
                if kind == "title":
                    for item in body.get("query", {}).get("normalized", []):
                        if ("title", item["to"]) in found:
                            found[("title", item["from"])] = found[("title", item["to"])]
                if "continue" not in body:
                    break
                extra = body["continue"]
        return found

    def _page_change(self, wiki: WikiSession, page: dict[str, Any]) -> Change:
        pageid = str(page["pageid"])
        if page.get("redirect") or page.get("ns") not in self.config.namespaces:
            return Delete(pageid)
        revisions = page.get("revisions") or []
        if not revisions:
            return Failure(pageid, f"{page.get('title')}: the API returned no current revision; retried next sync")
        revision = revisions[0]
        slot = (revision.get("slots") or {}).get("main") or {}
        if revision.get("texthidden") or slot.get("texthidden"):
            return Failure(pageid, f"{page.get('title')}: the current revision's text is hidden (revision deletion); "
                                   "restore its visibility or grant the bot 'deletedtext'")
        if "content" not in slot:
            return Failure(pageid, f"{page.get('title')}: revision {revision.get('revid')} has no readable content")
        try:
            body = self._render(wiki, page, slot)
        except WikiError as exc:
            return Failure(pageid, f"{page.get('title')}: action=parse failed: {exc}")
        title = page["title"]
        return Upsert(Document(
            external_id=pageid,
            title=title,
            text=f"# {title}\n\n{body}\n" if body.strip() else f"# {title}\n",
            access=self._access(page),
            url=page.get("canonicalurl") or page.get("fullurl"),
            content_type=ContentType.MARKDOWN,
            updated_at=parse_ts(revision["timestamp"]) if revision.get("timestamp") else None,
            metadata={"namespace": str(page["ns"]), "revision": str(revision.get("revid", "")),
                      "content_model": str(slot.get("contentmodel") or page.get("contentmodel") or "")},
        ))

    def _render(self, wiki: WikiSession, page: dict[str, Any], slot: dict[str, Any]) -> str:
        model = slot.get("contentmodel") or page.get("contentmodel")
        if model != "wikitext":
            return str(slot["content"]).strip()
        if self.config.render is Rendering.PARSED:
            html = wiki.query({"action": "parse", "pageid": page["pageid"], "prop": "text",
                               "disablelimitreport": "1", "disableeditsection": "1"})["parse"]["text"]
            return parse_html(f"<html><body>{html}</body></html>").text
        return wikitext_to_markdown(str(slot["content"]))

    def _access(self, page: Mapping[str, Any]) -> Access:
        protections = {f"{p.get('type')}={p.get('level')}" for p in page.get("protection") or []}
        for key, access in self._restricted.items():
            if key in protections:
                return access
        return self._ns_access.get(page["ns"], self.default_access)

    def _session(self) -> WikiSession:
        password = self.config.password.get_secret_value() if self.config.password else None
        return WikiSession(self.config, username=self.config.username, password=password,
                           api_path=self.config.api_path, maxlag_s=self.config.maxlag_s,
                           fix_credentials=_FIX_CREDENTIALS)


# -- helpers --------------------------------------------------------------------------------------------
def _without_namespace(title: str, ns: int) -> str:
    """``Staff:Page`` → ``Page`` (allpages' ``apfrom`` takes titles without their namespace)."""
    return title if ns == 0 else title.partition(":")[2] or title


def _external_id(change: Change) -> str:
    if isinstance(change, Upsert):
        return change.document.external_id
    if isinstance(change, Checkpoint):  # not produced by a page read
        raise TypeError("a checkpoint has no external id")
    return change.external_id


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
