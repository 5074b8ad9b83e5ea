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


CONTRACTS = {"AdapterHost", "Chunker", "Connector", "ConnectorConfig", "Embedder", "GenerationBackend", "Reranker",
             "Verifier", "Listing", "PrincipalSource"}


def test_contracts_are_pinned():
    import citeline.contracts

    assert set(citeline.contracts.__all__) == CONTRACTS
    for name in CONTRACTS:
        assert hasattr(citeline.contracts, name)


def test_builtins_are_registered_as_entry_points():
    assert {"folder", "tickets", "catalog"} <= set(plugins.available(plugins.CONNECTORS))
    assert plugins.load(plugins.CHUNKERS, "structured").__name__ == "StructuredChunker"
    assert plugins.load(plugins.EMBEDDERS, "sentence-transformers").__name__ == "SentenceTransformerEmbedder"
    assert plugins.load(plugins.RERANKERS, "mmr").__name__ == "MMRReranker"
    assert importlib.metadata.version("citeline") == citeline.__version__


def test_unknown_plugin_error_lists_what_is_installed():
    with pytest.raises(citeline.ConfigError, match=r"no plugin named 'nope'.*folder"):
        plugins.load(plugins.CONNECTORS, "nope")


# what the facade hands out may change data only through audited methods (each takes the acting identity)
AUDITED = {
    "admin": {"add_principal", "delete_principal", "remove_principal", "import_principals", "create_key",
              "revoke_key"},
    "adapters": {"register", "register_from", "promote", "retire", "sync", "record_evaluation"},
    "sync_jobs": {"start"},
    "inspect": {"search_as", "ask_as", "replay"},
    "principal_sources": {"sync", "apply"},
    "scim": {"create_user", "replace_user", "patch_user", "delete_user", "create_group", "replace_group",
             "patch_group", "delete_group"},
}
READ_ONLY = {"principals": {"get", "list", "read_file"}, "keys": {"list", "authenticate"},
             "adapters": {"list", "get", "require", "active", "hosts", "base_model_dir", "upload_roots"},
             "sync_jobs": {"run", "latest_ids"}, "inspect": {"audit_search"},
             "sources": {"status", "scheduler", "retry_policy"},
             "principal_sources": {"configured", "entry", "build", "jobs"},
             "scim": {"authenticate", "get_user", "list_users", "get_group", "list_groups"}}


def _public_methods(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def _handed_out(name: str) -> type:
    import typing

    from citeline.facade import Citeline

    attr = Citeline.__dict__[name]
    fn = attr.func if hasattr(attr, "func") else attr.fget
    return typing.get_type_hints(fn)["return"]


@pytest.mark.parametrize("name", sorted(AUDITED.keys() | READ_ONLY.keys()))
def test_the_facade_hands_out_no_unaudited_change(name):
    import inspect

    cls = _handed_out(name)
    audited, reads = AUDITED.get(name, set()), READ_ONLY.get(name, set())
    assert _public_methods(cls) == audited | reads, f"cl.{name}: a new public method must be audited or read-only"
    for method in audited:
        assert "actor" in inspect.signature(getattr(cls, method)).parameters, f"cl.{name}.{method} takes no actor"


def test_the_facade_is_wiring():
    from citeline.facade import Citeline

    assert not {"add_principal", "create_key", "register_adapter", "source_status", "registry"} & set(dir(Citeline))
