"""A third-party package's plugins (tests/support/third_party.py, registered by tests/support/plugins) for every
extension point: found through their entry points, built by plugins.create from their own config section, and
held to the same contract suites as the built-ins."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from citeline import plugins
from citeline.errors import ConfigError
from citeline.testing.chunkers import ChunkerContract
from citeline.testing.embedders import EmbedderContract
from citeline.testing.generators import GeneratorContract
from citeline.testing.rerankers import RerankerContract
from citeline.testing.verifiers import VerifierContract
from tests.conftest import REPO

pytestmark = pytest.mark.unit

PLUGINS = REPO / "tests" / "support" / "plugins"
KEY = "sk-third-party-0123456789"


@pytest.fixture(scope="module", autouse=True)
def third_party_installed() -> Iterator[None]:
    """The plugin package on sys.path, as `pip install` would put it (entry points are read from sys.path)."""
    added = [p for p in (str(PLUGINS), str(REPO)) if p not in sys.path]
    sys.path[:0] = added
    yield
    for p in added:
        sys.path.remove(p)


def _create(group: str, name: str, options: dict, section: str, **context):
    return plugins.create(group, name, options, section=section, **context)


class TestHashingEmbedder(EmbedderContract):
    @pytest.fixture(scope="class")
    def embedder(self, third_party_installed):
        return _create(plugins.EMBEDDERS, "test-hashing", {"api_key": KEY, "dimension": 48}, "embedding.options",
                       home=Path("/nonexistent"))


class TestParagraphChunker(ChunkerContract):
    @pytest.fixture
    def chunker(self):
        return _create(plugins.CHUNKERS, "test-paragraphs", {"max_tokens": 30}, "chunking.options",
                       tokenize=str.split)


class TestPerDocumentReranker(RerankerContract):
    @pytest.fixture
    def reranker(self):
        return _create(plugins.RERANKERS, "test-per-document", {"per_document": 1}, "retrieval.reranker_options",
                       embedder=None)


class TestOverlapVerifier(VerifierContract):
    @pytest.fixture
    def verifier(self):
        return _create(plugins.VERIFIERS, "test-overlap", {"min_overlap": 0.8}, "answer.verifier_options",
                       embedder=None)


class TestEchoGenerator(GeneratorContract):
    @pytest.fixture
    def backend(self):
        return _create(plugins.GENERATORS, "test-echo", {"prefix": "Per the docs:"}, "generation.options",
                       home=Path("/nonexistent"), generation=None)


def test_every_point_has_a_third_party_plugin():
    for group, name in [(plugins.EMBEDDERS, "test-hashing"), (plugins.CHUNKERS, "test-paragraphs"),
                        (plugins.RERANKERS, "test-per-document"), (plugins.VERIFIERS, "test-overlap"),
                        (plugins.GENERATORS, "test-echo"), (plugins.CONNECTORS, "test-generated")]:
        assert name in plugins.available(group), (group, name)


def test_each_plugin_gets_its_own_section_validated():
    embedder = _create(plugins.EMBEDDERS, "test-hashing", {"api_key": KEY}, "embedding.options")
    assert embedder.config.api_key.get_secret_value() == KEY and embedder.dimension == 64
    assert KEY not in repr(embedder.config) and KEY not in str(embedder.config)
    with pytest.raises(ConfigError, match=r"\[embedding.options\].*HashingEmbedder") as err:
        _create(plugins.EMBEDDERS, "test-hashing", {"api_key": KEY, "batch_size": 8}, "embedding.options")
    assert "batch_size" in str(err.value) and KEY not in str(err.value)
    with pytest.raises(ConfigError, match=r"\[retrieval.reranker_options\]"):
        _create(plugins.RERANKERS, "test-per-document", {"per_document": 0}, "retrieval.reranker_options")
    with pytest.raises(ConfigError, match=r"\[chunking.options\]"):
        _create(plugins.CHUNKERS, "test-paragraphs", {"diversity": 1}, "chunking.options", tokenize=str.split)


def test_citeline_toml_builds_the_third_party_plugins_with_their_own_sections(tmp_path, monkeypatch):
    from citeline.facade import Citeline
    from tests.support.third_party import HashingEmbedder, ParagraphChunker

    monkeypatch.setenv("CITELINE_HOME", str(tmp_path / "home"))
    config = tmp_path / "citeline.toml"
    config.write_text(f'''
[embedding]
provider = "test-hashing"

[embedding.options]
api_key = "{KEY}"
dimension = 32

[chunking]
chunker = "test-paragraphs"

[chunking.options]
max_tokens = 20
''')
    cl = Citeline.open(config)
    embedder = cl.embedder
    assert isinstance(embedder, HashingEmbedder) and embedder.dimension == 32
    assert embedder.config.api_key.get_secret_value() == KEY, "the key reached the plugin's own Config"
    assert KEY not in repr(embedder.config) and KEY not in repr(cl.settings) and KEY not in str(cl.settings)
    assert isinstance(cl.chunker, ParagraphChunker) and cl.chunker.tokenize == embedder.tokenize
    assert cl.chunker.config.max_tokens == 20

    config.write_text(config.read_text().replace("dimension = 32", 'dimension = "wide"'))
    with pytest.raises(ConfigError, match=r"\[embedding.options\]") as err:
        _ = Citeline.open(config).embedder
    assert "dimension" in str(err.value) and KEY not in str(err.value)
