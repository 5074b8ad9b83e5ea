"""What BM25 statistics per visibility class cost: ranking (nDCG@10) and latency, visible vs global.

    python benchmarks/lexical_statistics.py [--docs 5183] [--queries 809] [--json out.json]

``retrieval.lexical_statistics = "visible"`` (the default) computes a principal's document frequencies,
chunk count and mean length from the chunks it may see (per-class statistics, migration 0006);
``"global"`` from every chunk (a principal can then learn from its results' scores whether documents it
may not see contain a word). SciFact (``../shared/benchmarks/scifact``, train queries) is ingested once
into its own namespace (kept between runs: ``--docs`` takes the judged documents first, then the rest in
file order), then the same index is given four access layouts by rewriting the ACLs in SQL:

* ``public``: every document public (one class: the two options must rank identically);
* ``g20 all``: each document in one of 20 groups (by a hash of its id), the principal in all 20 (it sees
  everything: per-class sums equal the global statistics, so only latency may differ);
* ``g20 quarter``: the same groups, the principal in 5 of them (sees about a quarter): scored on the
  judged queries with a visible relevant document, against only the visible relevant documents;
* ``g500 all``: 500 groups, the principal in all of them (500 classes: the worst lookup of these).

For each layout: the statistics refresh time, then every query in lexical and hybrid mode with each
option (query vectors computed once; latency = database time per search, ``SearchResult.db_ms``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _common import HOME, SCIFACT, database_url, git_revision, machine

from citeline.access.principals import PrincipalStore
from citeline.db import Database
from citeline.db.index import refresh_lexicon
from citeline.domain import Access, ContentType, Document, Principal, SearchMode
from citeline.evaluation.retrieval import load_qrels, load_queries, metrics_for
from citeline.ingest.chunking import StructuredChunker
from citeline.ingest.embedding import SentenceTransformerEmbedder
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from citeline.settings import RetrievalSettings

LAYOUTS = {  # name: (groups, the principal's groups)
    "public": (0, 0),
    "g20 all": (20, 20),
    "g20 quarter": (20, 5),
    "g500 all": (500, 500),
}


class Corpus:
    """The first ``docs`` SciFact documents, judged ones first; every document public."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs

    def validate(self) -> None:
        pass

    def sync(self, cursor):
        from citeline.contracts.connector import Checkpoint, Upsert

        for d in self.docs:
            yield Upsert(Document(external_id=str(d["_id"]), title=str(d.get("title") or ""),
                                  text=str(d.get("text") or " "), access=Access.everyone(),
                                  content_type=ContentType.PLAIN))
        yield Checkpoint({})

    def list_ids(self) -> list[str]:
        return [str(d["_id"]) for d in self.docs]


def layout(db: Database, groups: int) -> None:
    """Rewrite every document's and chunk's access: public, or one of ``groups`` groups by a hash of its id."""
    with db.writer() as conn:
        if groups == 0:
            conn.execute("UPDATE documents SET public = true, acl = '{}'")
        else:
            conn.execute("UPDATE documents SET public = false,"
                         " acl = ARRAY['g:grp' || (abs(hashtext(external_id)) %% %s)]", (groups,))
        conn.execute("UPDATE chunks c SET public = d.public, acl = d.acl FROM documents d WHERE d.id = c.document_id")


def visible_docs(db: Database, user: str) -> set[str]:
    with db.reader(user) as conn:
        return {r[0] for r in conn.execute("SELECT external_id FROM documents")}


def run(retriever: Retriever, user: str | None, queries, judged, mode: SearchMode) -> dict:
    sums = {"ndcg@10": 0.0, "recall@100": 0.0}
    times = []
    for qid, text, vec in queries:
        res = retriever.search(text, user=user, k=100, mode=mode, candidates=100,
                               vector=None if mode is SearchMode.LEXICAL else vec)
        times.append(res.db_ms)
        ranking = list(dict.fromkeys(h.external_id for h in res.hits))[:100]
        m = metrics_for(ranking, judged[qid])
        sums["ndcg@10"] += m["ndcg@10"]
        sums["recall@100"] += m["recall@100"]
    times.sort()
    return {**{k: round(v / len(queries), 4) for k, v in sums.items()},
            "p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=0, help="corpus size (0: all 5,183)")
    parser.add_argument("--queries", type=int, default=0, help="judged train queries to run (0: all 809)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    judged_all = load_qrels(SCIFACT / "qrels" / "train.tsv")
    texts = load_queries(SCIFACT / "queries.train.jsonl")
    corpus = [json.loads(line) for line in open(SCIFACT / "corpus.jsonl", encoding="utf-8")]
    wanted = {d for rel in judged_all.values() for d in rel}
    corpus.sort(key=lambda d: str(d["_id"]) not in wanted)  # stable: judged first, then file order
    if args.docs:
        corpus = corpus[: args.docs]
    ids = {str(d["_id"]) for d in corpus}
    qids = sorted(q for q, rel in judged_all.items() if set(rel) & ids)
    if args.queries:
        qids = qids[: args.queries]

    embedder = SentenceTransformerEmbedder()
    chunker = StructuredChunker(tokenize=embedder.tokenize)
    db = Database(database_url(), namespace=f"bench_lexstats_{len(corpus)}", embedding_dim=embedder.dimension)
    out: dict = {"benchmark": "lexical_statistics", "commit": git_revision(), "machine": machine(),
                 "documents": len(corpus), "queries": len(qids), "layouts": {}}
    try:
        t0 = time.perf_counter()
        report = SyncRunner(db, embedder, chunker, batch_size=256).run("scifact", "beir", Corpus(corpus))
        out["ingest_s"] = round(time.perf_counter() - t0, 1)
        out["chunks"] = report.chunks
        t0 = time.perf_counter()
        qvecs = [embedder.embed_query(texts[q]) for q in qids]  # the query encoder, as search uses
        out["query_embedding_s"] = round(time.perf_counter() - t0, 1)
        queries = [(q, texts[q], v) for q, v in zip(qids, qvecs, strict=True)]
        retrievers = {s: Retriever(db, embedder, RetrievalSettings(lexical_statistics=s))
                      for s in ("visible", "global")}
        store = PrincipalStore(db)
        for name, (groups, mine) in LAYOUTS.items():
            layout(db, groups)
            with db.writer() as conn:
                stats = refresh_lexicon(conn)  # without if_stale it always recomputes and returns the stats
            with db.writer() as conn:
                classes = conn.execute("SELECT count(*) FROM lexicon_classes").fetchone()[0]
                rows = conn.execute("SELECT count(*) FROM class_lexemes").fetchone()[0]
            user = None
            if groups:
                user = f"bench_{groups}_{mine}"
                store.put(Principal(user, tuple(f"grp{i}" for i in range(mine))))
            seen = visible_docs(db, user)
            judged = {q: {d: g for d, g in judged_all[q].items() if d in seen} for q in qids}
            these = [q for q in queries if judged[q[0]]]
            entry = {"groups": groups, "principal_groups": mine, "visible_documents": len(seen),
                     "queries": len(these), "classes": classes, "class_lexeme_rows": rows,
                     "refresh_s": round(stats.seconds, 2), "results": {}}
            for mode in (SearchMode.LEXICAL, SearchMode.HYBRID):
                for s, retriever in retrievers.items():
                    run(retriever, user, these[:20], judged, mode)  # warm
                    entry["results"][f"{mode.value} {s}"] = run(retriever, user, these, judged, mode)
                    print(name, mode.value, s, entry["results"][f"{mode.value} {s}"], file=sys.stderr, flush=True)
            out["layouts"][name] = entry
        layout(db, 0)
        with db.writer() as conn:
            refresh_lexicon(conn)
    finally:
        db.close()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    print(f"[bench] home {HOME}", file=sys.stderr)
    main()
