"""Ingest throughput: the whole pipeline vs the bare encoder on the same texts, in one run.

    python benchmarks/ingest_bench.py [--docs 1500]

1. warm up the encoder;
2. the bare encoder: ``embed_documents`` over exactly the chunk texts the pipeline will embed;
3. the pipeline: connector → chunk → embed → write (one transaction per batch) into a fresh namespace;
4. a re-sync of the unchanged corpus (hash skip).

Prints one JSON object: chunks/s of both, their ratio, and the first-sync / re-sync time ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
import uuid
from pathlib import Path

from _common import SCIFACT, database_url, git_revision, machine

from citeline.db import Database
from citeline.evaluation.retrieval import BeirCorpus
from citeline.ingest.chunking import StructuredChunker
from citeline.ingest.embedding import SentenceTransformerEmbedder
from citeline.ingest.sync import SyncRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1500, help="SciFact documents to ingest")
    parser.add_argument("--batch-size", type=int, default=256, help="documents per transaction")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with (SCIFACT / "corpus.jsonl").open() as src:
            corpus.write_text("".join(itertools.islice(src, args.docs)))
        embedder = SentenceTransformerEmbedder()
        chunker = StructuredChunker(tokenize=embedder.tokenize)
        connector = BeirCorpus(BeirCorpus.Config(path=corpus))
        docs = [c.document for c in connector.sync(None) if hasattr(c, "document")]
        texts = [f"{d.title}\n{c.text}" if d.title and not c.text.startswith(d.title) else c.text
                 for d in docs for c in chunker.chunk(d)]
        embedder.embed_documents(texts[:256])  # warm-up

        t0 = time.perf_counter()
        embedder.embed_documents(texts)
        bare_s = time.perf_counter() - t0

        db = Database(database_url(), namespace=f"bench_ingest_{uuid.uuid4().hex[:8]}",
                      embedding_dim=embedder.dimension)
        try:
            runner = SyncRunner(db, embedder, chunker, batch_size=args.batch_size)
            t0 = time.perf_counter()
            first = runner.run("scifact", "beir", connector)
            pipeline_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = runner.run("scifact", "beir", connector)
            resync_s = time.perf_counter() - t0
        finally:
            db.close()
            db.drop_namespace()

    assert first.chunks == len(texts), (first.chunks, len(texts))
    assert again.unchanged == len(docs) and again.chunks == 0
    result = {
        "benchmark": "ingest",
        "documents": len(docs),
        "chunks": len(texts),
        "bare_encoder_chunks_per_s": round(len(texts) / bare_s, 1),
        "pipeline_chunks_per_s": round(first.chunks / pipeline_s, 1),
        "pipeline_vs_bare": round(bare_s / pipeline_s, 3),
        "first_sync_s": round(pipeline_s, 2),
        "unchanged_resync_s": round(resync_s, 3),
        "first_vs_resync_speedup": round(pipeline_s / resync_s, 1),
        "batch_size": args.batch_size,
        "machine": machine(),
        "revision": git_revision(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
