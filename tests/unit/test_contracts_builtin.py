"""Every built-in plugin, built by plugins.create from its entry point exactly as a third-party one is, runs its
extension point's contract suite (citeline.testing). The embedded and openai generators run theirs in
tests/integration/test_contracts_embedded.py and tests/e2e/test_contracts_openai.py (they need a model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from citeline import plugins
from citeline.testing.chunkers import ChunkerContract
from citeline.testing.embedders import EmbedderContract
from citeline.testing.generators import GeneratorContract
from citeline.testing.rerankers import RerankerContract, sample_hits
from citeline.testing.verifiers import VerifierContract

pytestmark = pytest.mark.unit


class TestSentenceTransformersEmbedder(EmbedderContract):
    @pytest.fixture(scope="class")
    def embedder(self, embedder):  # the session's real all-MiniLM-L6-v2
        return embedder

    def test_built_from_its_entry_point(self, tmp_path):
        built = plugins.create(plugins.EMBEDDERS, "sentence-transformers", {"query_cache": 0},
                               section="embedding.options", home=tmp_path)
        assert built.dimension == 384 and built.name.startswith("sentence-transformers:")


class TestStructuredChunker(ChunkerContract):
    @pytest.fixture
    def chunker(self, embedder):
        return plugins.create(plugins.CHUNKERS, "structured", {"chunk_tokens": 48, "overlap_tokens": 8},
                              section="chunking.options", tokenize=embedder.tokenize)


class TestMMRRerankerOnTokens(RerankerContract):
    @pytest.fixture
    def reranker(self):
        return plugins.create(plugins.RERANKERS, "mmr", {}, section="retrieval.reranker_options", embedder=None)

    def test_near_copies_give_way_to_other_hits(self, reranker):
        hits = sample_hits()  # hits 0 and 1 say almost the same thing
        assert [h.chunk_id for h in reranker.rerank("q", hits, 2)] == [hits[0].chunk_id, hits[2].chunk_id]

    def test_no_diversity_keeps_retrievals_order(self):
        plain = plugins.create(plugins.RERANKERS, "mmr", {"diversity": 0}, section="retrieval.reranker_options")
        hits = sample_hits()
        assert plain.rerank("q", hits, 4) == list(hits[:4])


class TestMMRRerankerOnEmbeddings(RerankerContract):
    @pytest.fixture
    def reranker(self, embedder):
        return plugins.create(plugins.RERANKERS, "mmr", {"similarity": "embeddings", "diversity": 0.5},
                              section="retrieval.reranker_options", embedder=embedder)


class TestLexicalVerifier(VerifierContract):
    @pytest.fixture
    def verifier(self, embedder):
        return plugins.create(plugins.VERIFIERS, "lexical", {}, section="answer.verifier_options", embedder=embedder)


class TestExtractiveGenerator(GeneratorContract):
    @pytest.fixture
    def backend(self, tmp_path):
        from citeline.settings import GenerationSettings

        return plugins.create(plugins.GENERATORS, "extractive", {}, section="generation.options",
                              home=Path(tmp_path), generation=GenerationSettings(backend="extractive"))
