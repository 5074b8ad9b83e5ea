"""Retrieval evaluation on BEIR-format files: nDCG@10, Recall@100 and MRR@10 per search mode.

The corpus is ingested through the normal pipeline (chunk → embed → write) into its own namespace
(a separate Postgres schema named after the corpus' content hash), so evaluation never touches the
live index and a second run over the same corpus reuses what is stored. Chunk hits are collapsed
to documents (a document ranks at its best chunk). Before scoring, the corpus statistics that lexical
(BM25) ranking reads are recomputed if they are missing or older than the chunks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from citeline.contracts.connector import Change, Checkpoint, Connector, ConnectorConfig, Upsert
from citeline.domain import Access, ContentType, Document, SearchMode
from citeline.errors import EvaluationError

__all__ = ["BeirCorpus", "EvalReport", "evaluate_retrieval", "load_qrels", "load_queries", "metrics_for"]


def _read_jsonl(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    with handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path}:{n}: not valid JSON ({exc.msg}); each line must be one object") from exc
            if not isinstance(obj, dict) or "_id" not in obj:
                raise EvaluationError(f"{path}:{n}: each {what} line needs an \"_id\" field")
            yield n, obj


def load_queries(path: Path) -> dict[str, str]:
    return {str(o["_id"]): str(o.get("text", "")) for _, o in _read_jsonl(path, "queries")}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id corpus-id score`` TSV with a header line."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
    except OSError as exc:
        raise EvaluationError(f"cannot read qrels file {path}: {exc.strerror}") from exc
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 3:
            raise EvaluationError(f"{path}:{n}: expected 3 tab-separated columns (query-id, corpus-id, score)")
        try:
            score = int(row[2])
        except ValueError as exc:
            raise EvaluationError(f"{path}:{n}: score {row[2]!r} is not an integer") from exc
        if score > 0:
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


class BeirCorpus:
    """A BEIR ``corpus.jsonl`` as a connector: every document public, plain text with its title."""

    class Config(ConnectorConfig):
        path: Path

    def __init__(self, config: Config, default_access: Access | None = None) -> None:
        self.path = config.path

    def validate(self) -> None:
        if not self.path.is_file():
            raise EvaluationError(f"corpus file {self.path} does not exist")

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        for n, obj in _read_jsonl(self.path, "corpus"):
            text = str(obj.get("text") or "")
            yield Upsert(Document(external_id=str(obj["_id"]), title=str(obj.get("title") or ""), text=text or " ",
                                  access=Access.everyone(), content_type=ContentType.PLAIN))
            if n % 500 == 0:
                yield Checkpoint({"line": n})
        yield Checkpoint({})

    def list_ids(self) -> list[str]:
        return [str(o["_id"]) for _, o in _read_jsonl(self.path, "corpus")]


def corpus_namespace(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return f"eval_{h.hexdigest()[:16]}"


def metrics_for(ranking: list[str], relevant: Mapping[str, int]) -> dict[str, float]:
    """nDCG@10 (graded), Recall@100 and MRR@10 of one ranked list of document ids."""
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    recall = len({d for d in ranking[:100] if d in relevant}) / len(relevant) if relevant else 0.0
    mrr = next((1.0 / (i + 1) for i, d in enumerate(ranking[:10]) if d in relevant), 0.0)
    return {"ndcg@10": dcg / idcg if idcg else 0.0, "recall@100": recall, "mrr@10": mrr}


@dataclass(frozen=True)
class EvalReport:
    namespace: str
    documents: int
    queries: int
    metrics: dict[str, dict[str, float]]  # mode -> metric -> mean
    ingest_seconds: float
    query_ms_p50: dict[str, float]
    ingest_cpu_seconds: float = 0.0  # CPU time of this process (all its threads) while ingesting; not the database's

    def as_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "documents": self.documents, "queries": self.queries,
                "metrics": self.metrics, "ingest_seconds": round(self.ingest_seconds, 2),
                "ingest_cpu_seconds": round(self.ingest_cpu_seconds, 2), "query_ms_p50": self.query_ms_p50}


def evaluate_retrieval(citeline_factory: Callable[[str], Any], corpus: Path, queries: Path, qrels: Path, *,
                       modes: tuple[SearchMode, ...] = tuple(SearchMode), keep: bool = True,
                       on_progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Ingest ``corpus`` into an isolated namespace and score every judged query in each mode.

    ``citeline_factory(namespace)`` returns a :class:`citeline.Citeline` bound to that namespace.
    """
    import statistics
    import time

    from citeline.db import index as store
    from citeline.ingest.sync import SyncRunner

    judged = load_qrels(qrels)
    texts = load_queries(queries)
    missing = sorted(set(judged) - set(texts))
    if missing:
        raise EvaluationError(f"qrels name {len(missing)} queries not in {queries} (e.g. {missing[:3]})")
    namespace = corpus_namespace(corpus)
    cl = citeline_factory(namespace)
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        runner = SyncRunner(cl.db, cl.embedder, cl.chunker, batch_size=256)
        corpus_connector = cast(Connector, BeirCorpus(BeirCorpus.Config(path=corpus)))  # (Config is a nested class)
        report = runner.run("beir", "beir", corpus_connector)
        with cl.db.writer() as conn:  # the sync refreshes them too; this covers a namespace synced before
            store.refresh_lexicon(conn, if_stale=True)
        ingest_s, ingest_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        documents = report.added + report.updated + report.unchanged
        results: dict[str, dict[str, float]] = {}
        latency: dict[str, float] = {}
        for mode in modes:
            sums = {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
            times = []
            for i, (qid, relevant) in enumerate(sorted(judged.items())):
                res = cl.retriever.search(texts[qid], user=None, k=300, mode=mode, candidates=300)
                times.append(res.db_ms + res.embed_ms)
                ranking = list(dict.fromkeys(h.external_id for h in res.hits))[:100]
                for key, value in metrics_for(ranking, relevant).items():
                    sums[key] += value
                if on_progress:
                    on_progress(mode.value, i + 1, len(judged))
            results[mode.value] = {k: round(v / len(judged), 4) for k, v in sums.items()}
            latency[mode.value] = round(statistics.median(times), 2)
        return EvalReport(namespace, documents, len(judged), results, ingest_s, latency, ingest_cpu)
    finally:
        if not keep:
            cl.db.drop_namespace()
        cl.close()
