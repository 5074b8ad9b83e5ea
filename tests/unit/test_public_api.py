"""The public API is pinned: adding or removing an export is a deliberate change to this list."""

from __future__ import annotations

import importlib.metadata

import pytest

import citeline
from citeline import plugins

pytestmark = pytest.mark.unit

EXPORTS = {
    "Access", "Chunk", "Citeline", "CitelineError", "ConfigError", "ConnectorError", "ContentType",
    "DatabaseError", "Document", "EvaluationError", "Principal", "PrincipalError", "Retriever",
    "SchemaMismatchError", "SearchHit", "SearchMode", "SearchResult", "Settings", "SourceStatus",
    "SyncLockedError", "__version__", "build_connector",
}


def test_exports_are_pinned():
    assert set(citeline.__all__) == EXPORTS
    for name in EXPORTS:
        assert hasattr(citeline, name)


def test_builtins_are_registered_as_entry_points():
    assert {"folder", "tickets", "catalog"} <= set(plugins.available(plugins.CONNECTORS))
    assert plugins.load(plugins.CHUNKERS, "structured").__name__ == "StructuredChunker"
    assert plugins.load(plugins.EMBEDDERS, "sentence-transformers").__name__ == "SentenceTransformerEmbedder"
    assert importlib.metadata.version("citeline") == citeline.__version__


def test_unknown_plugin_error_lists_what_is_installed():
    with pytest.raises(citeline.ConfigError, match=r"no plugin named 'nope'.*folder"):
        plugins.load(plugins.CONNECTORS, "nope")
