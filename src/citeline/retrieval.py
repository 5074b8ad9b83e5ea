"""Hybrid retrieval: dense (HNSW, cosine) + lexical (PostgreSQL full text), fused by reciprocal rank.

Both candidate lists are computed in one SQL statement that runs as ``citeline_reader`` for the
asking principal, so row-level security filters inside the HNSW index scan (with
``hnsw.iterative_scan`` the scan keeps going until it has enough visible rows) and inside the GIN
scan. Nothing is filtered in Python.

The lexical query ORs the question's terms (``plainto_tsquery`` ANDs them, which finds nothing for a
natural-language question) and ranks with ``ts_rank`` normalised by document length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from citeline.db import Database
from citeline.domain import SearchHit, SearchMode
from citeline.ingest.embedding import Embedder
from citeline.settings import RetrievalSettings

__all__ = ["Retriever", "SearchResult"]

_SQL = """
WITH dense AS MATERIALIZED (
    SELECT c.id, c.embedding <=> %(vec)s AS dist
    FROM chunks c
    ORDER BY c.embedding <=> %(vec)s
    LIMIT %(n_dense)s
), dense_ranked AS (
    SELECT id, dist, row_number() OVER (ORDER BY dist, id) AS r FROM dense
), query AS (
    SELECT replace(plainto_tsquery(%(cfg)s::regconfig, %(text)s)::text, ' & ', ' | ')::tsquery AS q
), lexical AS MATERIALIZED (
    SELECT c.id, ts_rank(c.tsv, query.q, 1) AS score
    FROM chunks c, query
    WHERE %(n_lex)s > 0 AND c.tsv @@ query.q
    ORDER BY score DESC, c.id
    LIMIT %(n_lex)s
), lexical_ranked AS (
    SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS r FROM lexical
), fused AS (
    SELECT coalesce(d.id, l.id) AS id, d.r AS dense_rank, l.r AS lexical_rank, d.dist, l.score,
           coalesce(1.0 / (%(rrf_k)s + d.r), 0) + coalesce(1.0 / (%(rrf_k)s + l.r), 0) AS rrf
    FROM dense_ranked d FULL JOIN lexical_ranked l ON d.id = l.id
)
SELECT c.id, c.document_id, s.name, doc.external_id, doc.title, doc.url, c.text, c.span_start, c.span_end,
       f.dense_rank, f.lexical_rank, f.dist, f.score, f.rrf
FROM fused f
JOIN chunks c ON c.id = f.id
JOIN documents doc ON doc.id = c.document_id
JOIN sources s ON s.id = doc.source_id
ORDER BY {order}
LIMIT %(k)s
"""

_ORDER = {
    SearchMode.DENSE: "f.dist ASC NULLS LAST, c.id",
    SearchMode.LEXICAL: "f.score DESC NULLS LAST, c.id",
    SearchMode.HYBRID: "f.rrf DESC, c.id",
}


@dataclass(frozen=True)
class SearchResult:
    query: str
    user: str | None
    mode: SearchMode
    hits: tuple[SearchHit, ...]
    embed_ms: float
    db_ms: float


class Retriever:
    """Searches one namespace of the index on behalf of a principal."""

    def __init__(self, db: Database, embedder: Embedder, settings: RetrievalSettings | None = None) -> None:
        self.db = db
        self.embedder = embedder
        self.settings = settings or RetrievalSettings()

    def search(self, query: str, *, user: str | None, k: int | None = None,
               mode: SearchMode = SearchMode.HYBRID, candidates: int | None = None,
               vector: np.ndarray | None = None) -> SearchResult:
        """Top-``k`` chunks visible to ``user`` (``None``: public documents only).

        ``vector`` is the query's embedding if the caller already has it (it is computed otherwise).
        """
        k = k or self.settings.top_k
        n = max(candidates or self.settings.candidates, k)
        t0 = time.perf_counter()
        if vector is None and mode is not SearchMode.LEXICAL:
            vector = self.embedder.embed_query(query)
        t1 = time.perf_counter()
        params = {
            "vec": vector if vector is not None else _zero(self.embedder.dimension),
            "n_dense": n if mode is not SearchMode.LEXICAL else 0,
            "n_lex": n if mode is not SearchMode.DENSE else 0,
            "cfg": self.db.ts_config,
            "text": query,
            "rrf_k": self.settings.rrf_k,
            "k": k,
        }
        sql = _SQL.replace("{order}", _ORDER[mode])
        with self.db.reader(user) as conn:
            rows = conn.execute(sql, params).fetchall()  # type: ignore[call-overload]
        t2 = time.perf_counter()
        hits = tuple(_hit(row, mode) for row in rows)
        return SearchResult(query, user, mode, hits, (t1 - t0) * 1000, (t2 - t1) * 1000)


def _zero(dim: int) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[0] = 1.0
    return v


def _hit(row: tuple, mode: SearchMode) -> SearchHit:
    (chunk_id, doc_id, source, external_id, title, url, text, start, end,
     dense_rank, lexical_rank, dist, lex_score, rrf) = row
    if mode is SearchMode.DENSE:
        score = 1.0 - float(dist)
    elif mode is SearchMode.LEXICAL:
        score = float(lex_score)
    else:
        score = float(rrf)
    return SearchHit(
        chunk_id=chunk_id, document_id=doc_id, source=source, external_id=external_id, title=title, url=url,
        text=text, span_start=start, span_end=end, score=score, dense_rank=dense_rank, lexical_rank=lexical_rank,
        dense_distance=None if dist is None else float(dist),
        lexical_score=None if lex_score is None else float(lex_score),
    )
