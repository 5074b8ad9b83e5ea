"""``POST /v1/search``: the chunks the caller may see for a query, with title, URL, span and score; audited.

What the LlamaIndex and LangChain retrievers (:mod:`citeline.integrations`) call when bound to an API key.
PostgreSQL decides what the caller sees (the facade's search runs as the key's principal); each call leaves
one audit row of kind ``search`` naming the principal and the chunks shown, before the hits are returned.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field

from citeline.domain import SearchHit, SearchMode
from citeline.serving.api.bodies import _Body
from citeline.serving.api.deps import Auth, Facade

__all__ = ["SearchBody", "router"]

router = APIRouter()


class SearchBody(_Body):
    query: str = Field(min_length=1, max_length=4000)
    k: int | None = Field(None, ge=1, le=100, description="how many chunks; default retrieval.k")
    mode: SearchMode = SearchMode.HYBRID


@router.post("/v1/search", response_model=None)
def search(body: SearchBody, who: Auth, cl: Facade) -> JSONResponse:
    p = who.principal
    result = cl.search(body.query, user=p.user, k=body.k, mode=body.mode)
    audit = cl.audit.append("search", "search", principal=p.user, team=p.team,
                            payload=_payload(body, who.key_id, p.groups, result.hits))
    hits = [_hit(h) for h in result.hits]
    return JSONResponse({"query": body.query, "mode": body.mode.value, "hits": hits, "audit_id": audit.id})


def _hit(h: SearchHit) -> dict[str, Any]:
    return {"chunk_id": h.chunk_id, "document_id": h.document_id, "source": h.source, "external_id": h.external_id,
            "title": h.title, "url": h.url, "text": h.text, "span_start": h.span_start, "span_end": h.span_end,
            "score": h.score}


def _payload(body: SearchBody, key_id: str, groups: tuple[str, ...], hits: tuple[SearchHit, ...]) -> dict[str, Any]:
    return {"query": body.query, "k": body.k, "mode": body.mode.value, "via": "rest", "key_id": key_id,
            "groups": list(groups),
            "shown": [{"n": i, "chunk_id": h.chunk_id, "document_id": h.document_id, "source": h.source,
                       "external_id": h.external_id} for i, h in enumerate(hits, 1)]}
