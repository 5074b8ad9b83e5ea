from __future__ import annotations

import math

import pytest

from citeline.errors import EvaluationError
from citeline.evaluation.retrieval import load_qrels, load_queries, metrics_for

pytestmark = pytest.mark.unit


def test_metrics_of_a_perfect_and_a_poor_ranking():
    rel = {"a": 1, "b": 1}
    assert metrics_for(["a", "b", "c"], rel) == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    m = metrics_for(["x", "a"], rel)
    assert m["mrr@10"] == 0.5 and m["recall@100"] == 0.5
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert metrics_for(["x"] * 10 + ["a"], rel)["mrr@10"] == 0.0


def test_graded_relevance_in_ndcg():
    rel = {"a": 2, "b": 1}
    assert metrics_for(["b", "a"], rel)["ndcg@10"] < metrics_for(["a", "b"], rel)["ndcg@10"] == 1.0


def test_beir_files_are_validated(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"_id": "1", "text": "hello"}\n\n{"_id": 2, "text": "x"}\n')
    assert load_queries(q) == {"1": "hello", "2": "x"}
    q.write_text('{"_id": "1"}\nnot json\n')
    with pytest.raises(EvaluationError, match=r"q.jsonl:2: not valid JSON"):
        load_queries(q)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t0\n2\td3\t2\n")
    assert load_qrels(qrels) == {"1": {"d1": 1}, "2": {"d3": 2}}
    qrels.write_text("query-id\tcorpus-id\tscore\n1\td1\n")
    with pytest.raises(EvaluationError, match="3 tab-separated columns"):
        load_qrels(qrels)
