"""A sync worker process for the crash test: yields slowly so the test can SIGKILL it mid-way."""

from __future__ import annotations

import sys
import time

from citeline.db import Database
from citeline.ingest.chunking import StructuredChunker
from citeline.ingest.embedding import SentenceTransformerEmbedder
from citeline.ingest.sync import SyncRunner
from tests.support.connectors import ListConnector, doc


def documents(n: int) -> list:
    return [doc(f"s{i}", f"# Slow {i}\n\nThis is item {i} of the slow corpus.") for i in range(n)]


class SlowConnector(ListConnector):
    def sync(self, cursor):
        for change in super().sync(cursor):
            time.sleep(0.15)
            yield change


def main(url: str, namespace: str, total: int) -> None:
    embedder = SentenceTransformerEmbedder()
    db = Database(url, namespace=namespace, embedding_dim=embedder.dimension)
    runner = SyncRunner(db, embedder, StructuredChunker(tokenize=embedder.tokenize), batch_size=5)
    runner.run("slow", "list", SlowConnector(documents(total), every=5))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
