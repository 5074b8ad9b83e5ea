"""LlamaIndex's own pipeline on a BEIR corpus: ingest, then score the judged queries (run in the peer's venv).

    .venv-peer/bin/python benchmarks/peers/llamaindex_scifact.py --database-url URL --model DIR \
        --corpus corpus.jsonl --queries queries.jsonl --qrels qrels.tsv

Run by ``benchmarks/ingest_vs_llamaindex.py``, which makes the peer's venv (``benchmarks/peer-env.sh``), starts its
PostgreSQL and passes the same texts and embedding model it gives citeline. The pipeline is LlamaIndex's documented
one with its defaults: ``Document`` per corpus row (title as metadata, which LlamaIndex puts into the embedded text),
``SentenceSplitter()`` (1,024 tokens, overlap 200), ``HuggingFaceEmbedding`` over the local all-MiniLM-L6-v2 folder,
``PGVectorStore`` with ``hybrid_search=True`` and an HNSW index (m 16, ef_construction 128, ef_search 200, as
citeline's), ``VectorStoreIndex(nodes... from_documents)``. Ingest time: from the documents in memory to the index
built (the model is loaded and warmed up before; citeline's figure excludes its model load the same way).
Retrieval: top 100 nodes per query (hybrid: 100 dense + 100 sparse, LlamaIndex's own combination), collapsed to
documents (a document ranks at its best node). Writes one JSON object to ``--out``: timings, versions and each
query's ranked document ids per mode (the driver scores them with citeline's own metric code).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--database-url", "--model", "--corpus", "--queries", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.vector_stores.types import VectorStoreQueryMode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.postgres import PGVectorStore
    from sqlalchemy import make_url

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in Path(args.corpus).read_text().splitlines() if line.strip()]
    docs = [Document(id_=str(r["_id"]), text=r.get("text", ""), metadata={"title": r.get("title", "")})
            for r in rows]
    qtext = {str(q["_id"]): q["text"] for q in map(json.loads, Path(args.queries).read_text().splitlines())}

    embed = HuggingFaceEmbedding(model_name=args.model, device="cpu")
    embed.get_text_embedding_batch(["warm up"] * 10)
    Settings.embed_model = embed
    url = make_url(args.database_url)  # a Unix-socket URL (pgserver): host in the query string
    store = PGVectorStore.from_params(
        connection_string=url.set(drivername="postgresql+psycopg2"),
        async_connection_string=url.set(drivername="postgresql+asyncpg"), table_name="scifact", embed_dim=384, hybrid_search=True, text_search_config="english",
        hnsw_kwargs={"hnsw_m": 16, "hnsw_ef_construction": 128, "hnsw_ef_search": 200,
                     "hnsw_dist_method": "vector_cosine_ops"})
    t0, cpu0 = time.perf_counter(), time.process_time()
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                            transformations=[SentenceSplitter()])
    ingest_s, ingest_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    import psycopg2

    with psycopg2.connect(args.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.data_scifact")
        nodes = cur.fetchone()[0]

    modes = {"dense": {"vector_store_query_mode": VectorStoreQueryMode.DEFAULT},
             "hybrid": {"vector_store_query_mode": VectorStoreQueryMode.HYBRID, "sparse_top_k": 100}}
    rankings: dict[str, dict[str, list[str]]] = {}
    p50: dict[str, float] = {}
    for mode, kwargs in modes.items():
        retriever = index.as_retriever(similarity_top_k=100, **kwargs)
        times = []
        rankings[mode] = {}
        for qid, text in sorted(qtext.items()):
            t = time.perf_counter()
            found = retriever.retrieve(text)
            times.append((time.perf_counter() - t) * 1000)
            rankings[mode][qid] = list(dict.fromkeys(str(n.node.ref_doc_id) for n in found))[:100]
        p50[mode] = round(statistics.median(times), 1)
    Path(args.out).write_text(json.dumps({
        "pipeline": "llamaindex", "documents": len(docs), "nodes": nodes, "queries": len(qtext),
        "ingest_seconds": round(ingest_s, 2), "ingest_cpu_seconds": round(ingest_cpu, 2), "query_ms_p50": p50, "rankings": rankings,
        "threads": torch.get_num_threads(),
        "versions": {p: md.version(p) for p in ("llama-index-core", "llama-index-embeddings-huggingface",
                                                 "llama-index-vector-stores-postgres", "sentence-transformers",
                                                 "torch", "transformers")},
    }))


if __name__ == "__main__":
    main()
