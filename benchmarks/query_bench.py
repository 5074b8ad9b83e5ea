"""Query latency and recall at 100k chunks, with and without a row-level ACL filter (~10% visible).

    python benchmarks/query_bench.py [--rows 100000] [--queries 200]

Vectors: real all-MiniLM-L6-v2 embeddings of SciFact abstracts (the first ``--seed-docs``), then
normalised mixtures of two random real embeddings until there are ``--rows`` chunks, so the index has
the shape of real text embeddings rather than uniform noise (embedding 100k real chunks takes over an
hour on 2 cores). Queries: real SciFact
claims, embedded once. Every row is readable by group ``all``; 10% also by group ``tenth``.

For each principal (``everyone`` in group all; ``tenth`` in group tenth) and each query:

* dense: ``Retriever.search(mode=DENSE)``, exactly what citeline runs (RLS policy, HNSW with iterative
  scan fetching ``candidates`` rows, ordered by exact distance, joined to documents and sources);
  recall@10 = overlap of its top 10 chunk ids with the exact top 10 under the same policy (the bare
  query below with index scans off);
* bare: the bare ``ORDER BY embedding <=> q LIMIT 10`` HNSW query, as a reference;
* lexical and hybrid: ``Retriever.search`` in those modes (BM25 over the lexicon statistics, which are
  refreshed once after the load; the refresh is timed).

Latency is database time: the SQL round trip on a warm pooled connection (``SearchResult.db_ms``),
excluding the query's embedding. The exact answers are computed first, untimed; then each kind of
query runs as its own timed pass over all queries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import numpy as np
import psycopg
from _common import SCIFACT, database_url, git_revision, machine
from psycopg import sql

from citeline.access.principals import PrincipalStore
from citeline.db import Database
from citeline.db.index import refresh_lexicon
from citeline.domain import Principal, SearchMode
from citeline.evaluation.retrieval import load_queries
from citeline.ingest.embedding import SentenceTransformerEmbedder
from citeline.retrieval.search import Retriever
from citeline.settings import RetrievalSettings

DENSE = "SELECT c.id FROM chunks c ORDER BY c.embedding <=> %s LIMIT %s"


def load_rows(db: Database, vectors: np.ndarray, texts: list[str], rows: int, rng: np.random.Generator) -> float:
    """Bulk-load ``rows`` chunks; returns the seconds spent building the HNSW and GIN indexes."""
    with db.writer() as conn:
        source_id = conn.execute("INSERT INTO sources (name, connector) VALUES ('bench', 'bench') RETURNING id"
                                 ).fetchone()[0]
        # two documents, as ingest would write them: chunks carry their document's ACL
        conn.execute("INSERT INTO documents (source_id, external_id, title, content_hash, acl, access)"
                     " VALUES (%s, 'bench', 'bench', 'x', '{g:all}', '{}'),"
                     " (%s, 'bench-tenth', 'bench', 'x', '{g:all,g:tenth}', '{}')", (source_id, source_id))
    with db.writer() as conn:
        doc_ids = dict(conn.execute("SELECT external_id, id FROM documents").fetchall())
    with psycopg.connect(db.url, autocommit=True) as owner:  # bulk load: build the indexes once, at the end
        owner.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(db.namespace)))
        # the definitions the migrations created, to build again after the load
        indexes = [r[0] for r in owner.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s"
            " AND indexname IN ('chunks_embedding_hnsw', 'chunks_tsv_gin')", (db.namespace,))]
        assert len(indexes) == 2
        owner.execute("DROP INDEX chunks_embedding_hnsw, chunks_tsv_gin")
    # COPY is not allowed under row-level security, so the bulk load runs as the schema owner
    with psycopg.connect(db.url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(db.namespace)))
        with conn.cursor().copy("COPY chunks (document_id, ordinal, text, acl, public, embedding, tsv)"
                                " FROM STDIN") as copy:
            for i in range(rows):
                if i < len(vectors):
                    v = vectors[i]
                else:  # a random mixture of two real embeddings: spread like real text, no near-duplicates
                    a, b = rng.integers(0, len(vectors), 2)
                    w = rng.uniform(0.25, 0.75)
                    v = w * vectors[a] + (1 - w) * vectors[b]
                v = (v / np.linalg.norm(v)).astype(np.float32)
                tenth = i % 10 == 0
                acl = "{g:all,g:tenth}" if tenth else "{g:all}"
                doc_id = doc_ids["bench-tenth" if tenth else "bench"]
                text = texts[i % len(texts)]
                copy.write_row((doc_id, i, text, acl, False, "[" + ",".join(f"{x:.6f}" for x in v) + "]", ""))
        conn.execute("UPDATE chunks SET tsv = to_tsvector('english', text)")
    with psycopg.connect(db.url, autocommit=True) as owner:
        owner.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(db.namespace)))
        owner.execute("VACUUM ANALYZE chunks")
        owner.execute("SET maintenance_work_mem = '2GB'")
        t0 = time.perf_counter()
        for definition in indexes:
            owner.execute(definition)  # type: ignore[arg-type]  # read from the catalog above
        index_s = time.perf_counter() - t0
        owner.execute("ANALYZE chunks")
    return index_s


def measure(db: Database, retriever: Retriever, user: str, queries: list[tuple[str, np.ndarray]],
            k: int) -> dict[str, float]:
    # the exact answers first, untimed: their full scans would evict the index from the buffer cache
    # between the timed queries (the embedded server's shared_buffers, 128 MB, is smaller than the
    # HNSW index at 100k chunks); then one timed pass per kind of query
    exact = []
    for _, vec in queries:
        with db.reader(user) as conn:
            conn.execute("SET LOCAL enable_indexscan = off")
            exact.append([r[0] for r in conn.execute(DENSE, (vec, k))])
    dense_ms, recalls, counts = [], [], []
    for (text, vec), best in zip(queries, exact, strict=True):
        res = retriever.search(text, user=user, k=k, mode=SearchMode.DENSE, vector=vec)
        got = [h.chunk_id for h in res.hits]
        dense_ms.append(res.db_ms)
        recalls.append(len(set(got) & set(best)) / len(best))
        counts.append(len(got))
    bare_ms, bare_recalls = [], []
    for (_, vec), best in zip(queries, exact, strict=True):
        with db.reader(user) as conn:
            t0 = time.perf_counter()
            bare = [r[0] for r in conn.execute(DENSE, (vec, k))]
            bare_ms.append((time.perf_counter() - t0) * 1000)
        bare_recalls.append(len(set(bare) & set(best)) / len(best))
    lexical_ms = [retriever.search(text, user=user, k=k, mode=SearchMode.LEXICAL).db_ms for text, _ in queries]
    hybrid_ms = [retriever.search(text, user=user, k=k, mode=SearchMode.HYBRID, vector=vec).db_ms
                 for text, vec in queries]

    def pct(xs: list[float], p: float) -> float:
        return round(float(np.percentile(xs, p)), 2)

    return {"dense_p50_ms": pct(dense_ms, 50), "dense_p95_ms": pct(dense_ms, 95),
            "recall_at_10": round(statistics.mean(recalls), 4), "min_results": min(counts),
            "bare_p50_ms": pct(bare_ms, 50), "bare_p95_ms": pct(bare_ms, 95),
            "bare_recall_at_10": round(statistics.mean(bare_recalls), 4),
            "lexical_p50_ms": pct(lexical_ms, 50), "lexical_p95_ms": pct(lexical_ms, 95),
            "hybrid_p50_ms": pct(hybrid_ms, 50), "hybrid_p95_ms": pct(hybrid_ms, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed-docs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--ef-search", type=int, default=RetrievalSettings().ef_search)
    parser.add_argument("--candidates", type=int, default=RetrievalSettings().candidates)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    embedder = SentenceTransformerEmbedder()
    corpus = [json.loads(line) for line, _ in zip(open(SCIFACT / "corpus.jsonl"), range(args.seed_docs))]
    texts = [f"{d['title']}\n{d['text']}"[:2000] for d in corpus]
    t0 = time.perf_counter()
    vectors = embedder.embed_documents(texts)
    embed_s = time.perf_counter() - t0
    qtexts = list(load_queries(SCIFACT / "queries.train.jsonl").values())[: args.queries]
    qvecs = embedder.embed_documents(qtexts)

    db = Database(database_url(), namespace=f"bench_query_{uuid.uuid4().hex[:8]}", embedding_dim=embedder.dimension,
                  ef_search=args.ef_search)
    try:
        t0 = time.perf_counter()
        index_s = load_rows(db, vectors, texts, args.rows, rng)
        load_s = time.perf_counter() - t0
        refresh_s = []
        for _ in range(2):  # the first computes everything; the second finds nothing changed
            with db.writer() as conn:
                stats = refresh_lexicon(conn)
            refresh_s.append(round(stats.seconds, 2))
        PrincipalStore(db).put(Principal("everyone", ("all",)))
        PrincipalStore(db).put(Principal("tenth", ("tenth",)))
        retriever = Retriever(db, embedder, RetrievalSettings(candidates=args.candidates))
        queries = list(zip(qtexts, qvecs, strict=True))
        measure(db, retriever, "everyone", queries[:20], args.k)  # warm the caches
        results = {
            "no_filter (100% visible)": measure(db, retriever, "everyone", queries, args.k),
            "acl_filter (10% visible)": measure(db, retriever, "tenth", queries, args.k),
        }
    finally:
        db.close()
        db.drop_namespace()
    print(json.dumps({
        "benchmark": "query", "rows": args.rows, "queries": len(qtexts), "k": args.k,
        "ef_search": args.ef_search, "candidates": args.candidates, "results": results,
        "seed_embedding_s": round(embed_s, 1), "load_and_index_s": round(load_s, 1), "index_s": round(index_s, 1),
        "lexicon_refresh_s": refresh_s, "lexemes": stats.lexemes,
        "machine": machine(), "revision": git_revision(),
    }, indent=2))


if __name__ == "__main__":
    main()
