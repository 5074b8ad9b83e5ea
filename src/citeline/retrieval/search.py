"""Hybrid retrieval: dense (HNSW, cosine) + lexical (BM25 over PostgreSQL full text), fused by score.

Both candidate lists are computed in one SQL statement that runs as ``citeline_reader`` for the
asking principal, so row-level security filters inside the HNSW index scan (with
``hnsw.iterative_scan`` the scan keeps going until it has enough visible rows) and every chunk row the
statement reads. Nothing is filtered in Python.

Dense: the HNSW scan returns ``candidates`` rows, which are then ordered by their exact distance
(an iterative scan in ``relaxed_order`` may return them slightly out of order), so the top ``k`` are
the ``k`` nearest of a candidate set larger than ``k`` (recall and cost: docs/benchmarks.md).

Lexical matching goes through the GIN index on ``tsv`` via ``lexical_match()`` (migration 0002): under
row-level security PostgreSQL will not use an index for ``@@`` (the operator is not leakproof) and would
read every row's ``tsv``. That function returns only ids of chunks the principal may see; the rows
themselves are then read here, under row-level security.

Lexical (BM25): the question's lexemes (``to_tsvector`` of the question, so stemming and stop words
match the index) are looked up in the corpus statistics (per-lexeme document frequencies, chunk count,
mean length; refreshed by :func:`citeline.db.index.refresh_lexicon` after each sync that changed chunks or
their access, so they may lag the chunks in between). With ``retrieval.lexical_statistics = "visible"``
(the default) they are those of the chunks the asking principal may see: migration 0006 keeps them per
visibility class (public, or one distinct ACL) and sums the classes the principal may see, so the
scores and order of its results do not depend on documents it may not see. ``"global"`` uses every
chunk's (migration 0002): a known channel, traded for ranking (docs/security.md). Rows are *matched* only through the
rarest terms whose document frequencies add up to at most ``lexical_row_budget`` (the rarest term
is always used): that bounds the rows the GIN scan and the ranking visit, whatever the question.
Every matched row is then *scored* with all of the question's terms::

    score = sum over terms t in the row of  idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))

with ``tf`` the term's number of positions in the chunk and ``dl`` the chunk's number of distinct
lexemes (``length(tsv)``). The tsquery is assembled in SQL from quoted lexemes; the question's text
is only ever a bound parameter. A question made only of stop words has no lexemes and no lexical hits.

Fusion (``retrieval.fusion``): ``convex`` (the default) takes the union of the two candidate lists and
gives every candidate both scores, computed in the same statement as the same principal: its cosine from
its stored embedding and its BM25 from its ``tsv`` with the question's terms and statistics (a chunk that
holds none of them scores 0). Each score is scaled from its theoretical minimum (cosine -1, BM25 0) to the
best candidate's (Bruch et al. 2023, "An Analysis of Fusion Functions for Hybrid Retrieval": their TM2C2,
a convex combination that beats RRF and needs few labelled queries to set) and the chunk ranks by
``fusion_weight * dense + (1 - fusion_weight) * lexical``; ``fusion_second_chunk`` adds that share of the
best other candidate chunk of the same document. Every hybrid hit so carries ``dense_distance`` and
``lexical_score`` (0 without a question term); ``dense_rank`` / ``lexical_rank`` stay those of the list
that found it. It lives in SQL, not in a reranker, because a candidate found by one method needs the other
method's score, which only the database can compute under row-level security, and because the statement
then returns ``k`` rows instead of the whole union. ``rrf`` is reciprocal rank fusion (``rrf_k``). Quality
of each choice on SciFact: docs/benchmarks.md ("Retrieval levers").

Reranking (``retrieval.reranker``, unset by default): the statement then returns ``candidates`` hits
instead of ``k`` and the reranker (:mod:`citeline.contracts.reranker`, built-ins ``mmr`` and
``cross-encoder``) picks and orders ``k`` of them. It runs after the statement, on rows row-level security
already let through: it can reorder and prune what the principal may see, never add to it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg.rows import dict_row

from citeline import plugins
from citeline.contracts.embedder import Embedder
from citeline.contracts.reranker import Reranker
from citeline.db import Database
from citeline.domain import SearchHit, SearchMode
from citeline.settings import Fusion, RetrievalSettings

__all__ = ["Retriever", "SearchResult"]

# The statement is assembled per mode: WITH <dense CTEs>, <lexical CTEs>, <fused> <select>; a mode
# plans and runs only its own half.
_DENSE = """
dense AS MATERIALIZED (
    SELECT c.id, c.embedding <=> %(vec)s AS dist
    FROM chunks c
    ORDER BY c.embedding <=> %(vec)s
    LIMIT %(n_dense)s
), dense_ranked AS (
    -- "+ 0": the planner takes the CTE's rows as already sorted by dist and would stop reading them once
    -- it has k; a relaxed-order HNSW scan returns them only roughly sorted, so all are read and sorted
    SELECT id, dist, row_number() OVER (ORDER BY dist + 0, id) AS r FROM dense
)"""

_LEXICAL = """
terms AS MATERIALIZED (
    -- the question's lexemes with document frequency, IDF, whether they are used to match rows (the
    -- rarest ones within the row budget), and each quoted as a tsquery operand
    SELECT t.lexeme, t.ndoc AS df,
           ln(1 + (greatest(corpus.n, t.ndoc) - t.ndoc + 0.5) / (t.ndoc + 0.5))::float8 AS idf,
           (row_number() OVER w = 1 OR sum(t.ndoc) OVER w <= %(budget)s) AS matching,
           chr(39) || replace(replace(t.lexeme, chr(92), chr(92) || chr(92)), chr(39), chr(39) || chr(39))
               || chr(39) AS operand
    FROM {lookup}(CASE WHEN %(n_lex)s > 0
                       THEN tsvector_to_array(to_tsvector(%(cfg)s::regconfig, %(text)s)) END) t,
         (SELECT coalesce(max(chunks), 0) AS n FROM {corpus}) corpus
    WINDOW w AS (ORDER BY t.ndoc, t.lexeme)
), hits AS MATERIALIZED (
    -- rows holding a matching term, found through the GIN index by lexical_match() (migration 0002:
    -- under row-level security `@@` cannot use the index) and read here under row-level security,
    -- with only the question's terms kept from their tsv
    SELECT c.id, length(c.tsv) AS dl,
           ts_filter(setweight(c.tsv, 'A', (SELECT array_agg(lexeme) FROM terms)), '{a}') AS found
    FROM chunks c
    WHERE c.id = ANY (ARRAY(
        SELECT m.id FROM lexical_match((SELECT string_agg(operand, ' | ')::tsquery FROM terms WHERE matching)) m))
), lexical AS MATERIALIZED (
    SELECT h.id,
           sum(t.idf * f.tf * (%(k1)s + 1)
               / (f.tf + %(k1)s * (1 - %(b)s + %(b)s * h.dl / coalesce(s.avgdl, h.dl)))) AS score
    FROM hits h
    CROSS JOIN LATERAL (SELECT u.lexeme, coalesce(cardinality(u.positions), 1) AS tf FROM unnest(h.found) u) f
    JOIN terms t ON t.lexeme = f.lexeme
    CROSS JOIN (SELECT max(nullif(avg_length, 0)) AS avgdl FROM {corpus}) s
    GROUP BY h.id
    ORDER BY score DESC, h.id
    LIMIT %(n_lex)s
), lexical_ranked AS (
    SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS r FROM lexical
)"""

_FUSED = {
    SearchMode.DENSE: """
fused AS (
    SELECT id, r AS dense_rank, NULL::bigint AS lexical_rank, dist, NULL::float8 AS score,
           1.0 / (%(rrf_k)s + r) AS fused
    FROM dense_ranked
)""",
    SearchMode.LEXICAL: """
fused AS (
    SELECT id, NULL::bigint AS dense_rank, r AS lexical_rank, NULL::float8 AS dist, score,
           1.0 / (%(rrf_k)s + r) AS fused
    FROM lexical_ranked
)""",
    SearchMode.HYBRID: """
fused AS (
    -- CASE, not coalesce(): under row-level security only leakproof join keys reach the chunks index
    SELECT CASE WHEN d.id IS NULL THEN l.id ELSE d.id END AS id, d.r AS dense_rank, l.r AS lexical_rank,
           d.dist, l.score,
           coalesce(1.0 / (%(rrf_k)s + d.r), 0) + coalesce(1.0 / (%(rrf_k)s + l.r), 0) AS fused
    FROM dense_ranked d FULL JOIN lexical_ranked l ON d.id = l.id
)""",
}

# Hybrid with convex fusion: every candidate of either list gets both scores (the cosine from its stored
# embedding, BM25 from its tsv with the same terms and statistics as the lexical list), each scaled to 0..1
# from its theoretical minimum to the best candidate's score, then alpha * dense + (1 - alpha) * lexical. A
# chunk then gains ``second`` times the best other candidate chunk of its document (the best chunk of a
# document stays ahead of its others; off by default: it gained nothing on SciFact).
_CONVEX = """
pool AS MATERIALIZED (
    SELECT id FROM dense UNION SELECT id FROM lexical
), scored AS MATERIALIZED (
    SELECT c.id, c.document_id, c.embedding <=> %(vec)s AS dist,
           coalesce((SELECT sum(t.idf * f.tf * (%(k1)s + 1) / (f.tf + %(k1)s * (1 - %(b)s + %(b)s * length(c.tsv)
                                                                                   / coalesce(s.avgdl, length(c.tsv)))))
                     FROM unnest(ts_filter(setweight(c.tsv, 'A', (SELECT array_agg(lexeme) FROM terms)), '{a}')) u
                     CROSS JOIN LATERAL (SELECT coalesce(cardinality(u.positions), 1) AS tf) f
                     JOIN terms t ON t.lexeme = u.lexeme), 0)::float8 AS score
    FROM chunks c
    CROSS JOIN (SELECT max(nullif(avg_length, 0)) AS avgdl FROM {corpus}) s
    WHERE c.id = ANY (ARRAY(SELECT id FROM pool))
), scaled AS (
    -- each score from its theoretical minimum (cosine -1, BM25 0) to the best candidate's: 1 - dist + 1 = 2 - dist
    SELECT id, document_id, dist, score,
           %(alpha)s * coalesce((2 - dist) / nullif(2 - min(dist) OVER (), 0), 0)
           + (1 - %(alpha)s) * coalesce(score / nullif(max(score) OVER (), 0), 0) AS own
    FROM scored
), fused AS (
    SELECT x.id, d.r AS dense_rank, l.r AS lexical_rank, x.dist, x.score,
           x.own + %(second)s * coalesce(CASE WHEN x.pos = 1 THEN x.runner_up ELSE x.best END, 0) AS fused
    FROM (SELECT *, row_number() OVER doc AS pos, first_value(own) OVER doc AS best,
                 nth_value(own, 2) OVER doc AS runner_up
          FROM scaled
          WINDOW doc AS (PARTITION BY document_id ORDER BY own DESC, id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) x
    LEFT JOIN dense_ranked d ON d.id = x.id
    LEFT JOIN lexical_ranked l ON l.id = x.id
)"""

_SELECT = """
SELECT c.id, c.document_id, s.name, doc.external_id, doc.title, doc.url, c.text, c.span_start, c.span_end,
       c.heading, f.dense_rank, f.lexical_rank, f.dist, f.score, f.fused
FROM fused f
JOIN chunks c ON c.id = f.id
JOIN documents doc ON doc.id = c.document_id
JOIN sources s ON s.id = doc.source_id
ORDER BY {order}
LIMIT %(k)s
"""

_ORDER = {
    SearchMode.DENSE: "f.dense_rank",
    SearchMode.LEXICAL: "f.score DESC NULLS LAST, c.id",
    SearchMode.HYBRID: "f.fused DESC, c.id",
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

    def __init__(self, db: Database, embedder: Embedder, settings: RetrievalSettings | None = None, *,
                 reranker: Reranker | None = None) -> None:
        """``reranker`` (or, without one, ``settings.reranker`` built with its ``reranker_options``) reorders
        and prunes each search's candidates; neither: no reranking."""
        self.db = db
        self.embedder = embedder
        self.settings = settings or RetrievalSettings()
        if reranker is None and self.settings.reranker:
            reranker = plugins.create(plugins.RERANKERS, self.settings.reranker, self.settings.reranker_options,
                                      section="retrieval.reranker_options", embedder=embedder)
        self.reranker = reranker

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
            "budget": self.settings.lexical_row_budget,
            "k1": self.settings.bm25_k1,
            "b": self.settings.bm25_b,
            "alpha": self.settings.fusion_weight,
            "second": self.settings.fusion_second_chunk,
            "k": n if self.reranker is not None else k,
        }
        sql = _statement(mode, self.settings.lexical_statistics, self.settings.fusion)
        with self.db.reader(user) as conn:
            rows = conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()
        t2 = time.perf_counter()
        hits = tuple(_hit(row, mode) for row in rows)
        if self.reranker is not None:
            hits = tuple(self.reranker.rerank(query, hits, k))
        return SearchResult(query, user, mode, hits, (t1 - t0) * 1000, (t2 - t1) * 1000)


# where BM25's statistics come from (retrieval.lexical_statistics): the chunks the principal may see
# (per-class statistics summed over its classes, migration 0006), or every chunk (migration 0002)
_STATISTICS = {
    "visible": {"{lookup}": "lexicon_lookup_visible", "{corpus}": "lexicon_corpus_visible()"},
    "global": {"{lookup}": "lexicon_lookup", "{corpus}": "lexicon_corpus_global()"},
}


@functools.cache
def _statement(mode: SearchMode, statistics: str = "visible", fusion: Fusion = Fusion.CONVEX) -> str:
    parts = [_DENSE] if mode is not SearchMode.LEXICAL else []
    parts += [_LEXICAL] if mode is not SearchMode.DENSE else []
    fused = _CONVEX if mode is SearchMode.HYBRID and fusion is Fusion.CONVEX else _FUSED[mode]
    text = "WITH" + ",".join([*parts, fused]) + _SELECT.replace("{order}", _ORDER[mode])
    for name, value in _STATISTICS[statistics].items():
        text = text.replace(name, value)
    return text


def _zero(dim: int) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[0] = 1.0
    return v


def _hit(row: dict[str, Any], mode: SearchMode) -> SearchHit:
    """One row of :data:`_SELECT`, read by column name."""
    dist, lex_score = row["dist"], row["score"]
    if mode is SearchMode.DENSE:
        score = 1.0 - float(dist)
    elif mode is SearchMode.LEXICAL:
        score = float(lex_score)
    else:
        score = float(row["fused"])
    return SearchHit(
        chunk_id=row["id"], document_id=row["document_id"], source=row["name"], external_id=row["external_id"],
        title=row["title"], url=row["url"], text=row["text"], span_start=row["span_start"],
        span_end=row["span_end"], score=score, dense_rank=row["dense_rank"], lexical_rank=row["lexical_rank"],
        dense_distance=None if dist is None else float(dist),
        lexical_score=None if lex_score is None else float(lex_score), heading=row["heading"] or "",
    )
