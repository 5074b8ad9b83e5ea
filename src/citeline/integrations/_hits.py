"""Where the LlamaIndex and LangChain retrievers get their hits: in process or from a citeline server.

Both are bound to one principal when they are made, never per query: :class:`InProcess` searches through a
:class:`citeline.facade.Citeline` as a known user; :class:`OverHTTP` calls a citeline server's
``POST /v1/search`` with an API key (the server decides the principal from the key, PostgreSQL decides what
it sees, and the call is audited there). Either way a hit's text has passed the index's access check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from citeline.domain import SearchHit, SearchMode
from citeline.errors import AuthError, CitelineError, ConfigError
from citeline.facade import Citeline

__all__ = ["HitSource", "InProcess", "OverHTTP", "hit_metadata"]

# what every integration puts in a node's / document's metadata, and what a prompt leaves out of it
METADATA_KEYS = ("title", "url", "source", "external_id", "document_id", "chunk_id", "span_start", "span_end",
                 "score")
NOT_FOR_PROMPTS = ("external_id", "document_id", "chunk_id", "span_start", "span_end", "score")


class HitSource(Protocol):
    """The chunks a query finds, best first, as the principal the source is bound to may see them."""

    def hits(self, query: str) -> list[SearchHit]: ...


def hit_metadata(hit: SearchHit) -> dict[str, Any]:
    """A hit's citation fields: title, URL, source, external id, chunk id, span and score."""
    return {key: getattr(hit, key) for key in METADATA_KEYS}


class InProcess:
    """Search through ``cl`` as ``user`` (a principal that must exist: a typo fails here, not as an empty
    result set)."""

    def __init__(self, cl: Citeline, user: str, *, k: int | None = None,
                 mode: SearchMode = SearchMode.HYBRID) -> None:
        self.cl, self.k, self.mode = cl, k, mode
        self.user = cl.principals.get(user).user  # PrincipalError naming `citeline principals add`

    def __repr__(self) -> str:
        return f"InProcess(user={self.user!r}, k={self.k}, mode={self.mode.value})"

    def hits(self, query: str) -> list[SearchHit]:
        return list(self.cl.search(query, user=self.user, k=self.k, mode=self.mode).hits)


class OverHTTP:
    """Search a citeline server (``citeline serve``) with an API key: ``POST {url}/v1/search``.

    ``client``: an ``httpx.Client`` to send through (its base URL is ignored; ``url`` is joined to the path);
    by default one is made with ``timeout`` seconds. The key is sent as ``Authorization: Bearer`` and never
    appears in a repr or an error message.
    """

    def __init__(self, url: str, api_key: str, *, k: int | None = None, mode: SearchMode = SearchMode.HYBRID,
                 timeout: float = 30.0, client: httpx.Client | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"citeline server URL {url!r} must start with http:// or https://")
        if not api_key or not api_key.strip():
            raise ConfigError("no API key for the citeline server: create one with `citeline keys create USER`")
        self.url = url.rstrip("/")
        self.k, self.mode = k, mode
        self._key = api_key.strip()
        self._client = client or httpx.Client(timeout=timeout)

    def __repr__(self) -> str:  # never the key
        return f"OverHTTP(url={self.url!r}, k={self.k}, mode={self.mode.value})"

    def hits(self, query: str) -> list[SearchHit]:
        body: dict[str, Any] = {"query": query, "mode": self.mode.value}
        if self.k is not None:
            body["k"] = self.k
        endpoint = f"{self.url}/v1/search"
        try:
            reply = self._client.post(endpoint, json=body, headers={"Authorization": f"Bearer {self._key}"})
        except httpx.HTTPError as exc:
            raise CitelineError(f"cannot reach the citeline server at {self.url} ({type(exc).__name__}: {exc}); "
                                "check the URL and that `citeline serve` is running") from exc
        if reply.status_code in (401, 403):
            raise AuthError(f"the citeline server at {self.url} refused the API key ({reply.status_code}: "
                            f"{_message(reply)}); check the key, or create one with `citeline keys create USER`")
        if reply.status_code == 404:
            raise ConfigError(f"{endpoint} does not exist: is {self.url} a citeline server of this version "
                              "(with POST /v1/search)?")
        if reply.status_code != 200:
            raise CitelineError(f"search at {endpoint} failed ({reply.status_code}: {_message(reply)})")
        try:
            return [_hit(h) for h in reply.json()["hits"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CitelineError(f"{endpoint} answered something that is not a citeline search reply "
                                f"({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        self._client.close()


def _hit(data: Mapping[str, Any]) -> SearchHit:
    return SearchHit(chunk_id=int(data["chunk_id"]), document_id=int(data["document_id"]), source=data["source"],
                     external_id=data["external_id"], title=data["title"], url=data.get("url"), text=data["text"],
                     span_start=data.get("span_start"), span_end=data.get("span_end"), score=float(data["score"]),
                     heading=str(data.get("heading") or ""))


def _message(reply: httpx.Response) -> str:
    """The error's message from an OpenAI-shaped error body (or the start of the text)."""
    try:
        data = reply.json()
    except ValueError:
        return reply.text[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
