"""The LlamaHub reader bridge, with a real reader from llama-index-core (SimpleDirectoryReader) over a tmp folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llama_index.core.readers.file.base import default_file_metadata_func

from citeline.connectors.llamahub import LlamaHubConnector
from citeline.contracts.connector import Checkpoint, Failure, Upsert
from citeline.domain import Access, ContentType
from citeline.errors import ConfigError, ConnectorError
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync

pytestmark = pytest.mark.unit

STAFF = Access(groups=("staff",))
READER = "llama_index.core:SimpleDirectoryReader"


def acl_from_folder(path: str) -> dict[str, Any]:
    """SimpleDirectoryReader's file_metadata hook: its default metadata (file_path, file_name, ...), and files
    under hr/ say who may read them."""
    meta: dict[str, Any] = default_file_metadata_func(path)
    if "/hr/" in path:
        meta["allowed_groups"] = "hr, managers"
    if path.endswith("carol.md"):
        meta["allowed_users"] = ["carol"]
    if path.endswith("open.md"):
        meta["is_public"] = "true"
    return meta


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    for rel, text in {"welcome.md": "# Welcome\n\nHello staff.", "open.md": "# Open\n\nEveryone may read this.",
                      "hr/salaries.md": "# Salaries\n\nBands are secret.", "hr/carol.md": "# Review\n\nCarol only.",
                      "eng/deploy.txt": "Deploy with the pipeline.\nRoll back with one command."}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def make(root: Path, default: Access = STAFF, **config: Any) -> LlamaHubConnector:
    options = {"recursive": True, "file_metadata": acl_from_folder, **config.pop("reader_options", {})}
    return LlamaHubConnector({"reader": READER, "path": root, "reader_options": options,
                              "access_keys": {"users": "allowed_users", "groups": "allowed_groups",
                                              "public": "is_public"}, **config}, default)


def docs(connector: LlamaHubConnector) -> dict[str, Any]:
    return {c.document.external_id: c.document for c in run_sync(connector) if isinstance(c, Upsert)}


class TestLlamaHubContract(ConnectorContract):
    @pytest.fixture
    def connector(self, folder: Path) -> LlamaHubConnector:
        return make(folder, checkpoint_every=2)


def test_ids_are_relative_paths_sorted_and_stable(folder: Path) -> None:
    connector = make(folder)
    expected = ["eng/deploy.txt", "hr/carol.md", "hr/salaries.md", "open.md", "welcome.md"]
    assert item_ids(run_sync(connector)) == expected
    assert item_ids(run_sync(make(folder))) == expected  # a new reader (new random doc_ids): the same ids
    assert connector.list_ids() == expected


def test_metadata_keys_map_to_access_and_the_rest_takes_the_default(folder: Path) -> None:
    found = docs(make(folder))
    assert found["welcome.md"].access == STAFF
    assert found["eng/deploy.txt"].access == STAFF
    assert found["hr/salaries.md"].access == Access(groups=("hr", "managers"))  # not staff: metadata decides whole
    assert found["hr/carol.md"].access == Access(users=("carol",), groups=("hr", "managers"))
    assert found["open.md"].access == Access(public=True)
    doc = found["hr/salaries.md"]
    assert doc.title == "Salaries" and doc.text.startswith("# Salaries") and doc.content_type is ContentType.MARKDOWN
    assert "allowed_groups" not in doc.metadata and "file_path" not in doc.metadata  # no absolute server paths
    assert str(folder) not in " ".join(doc.metadata.values())


def test_a_bad_access_value_is_a_failure_naming_the_key(folder: Path) -> None:
    def hostile(path: str) -> dict[str, Any]:
        bad = {"allowed_groups": ["ok", "bad group"]} if path.endswith("open.md") else {"is_public": 1}
        return {**default_file_metadata_func(path), **bad}

    changes = run_sync(make(folder, reader_options={"file_metadata": hostile}))
    failures = {c.external_id: c.reason for c in changes if isinstance(c, Failure)}
    assert "open.md" in failures and "invalid group name 'bad group'" in failures["open.md"]
    assert "'is_public' must be true or false" in failures["welcome.md"]
    assert not [c for c in changes if isinstance(c, Upsert)]  # none indexed with a guessed access


def test_resume_after_a_checkpoint_and_a_base_url(folder: Path) -> None:
    connector = make(folder, checkpoint_every=2, base_url="https://kb.example/")
    changes = run_sync(connector)
    assert [c.cursor for c in changes if isinstance(c, Checkpoint)] == [{"after": "hr/carol.md"},
                                                                         {"after": "open.md"}, {}]
    assert item_ids(run_sync(connector, {"after": "hr/carol.md"})) == ["hr/salaries.md", "open.md", "welcome.md"]
    assert docs(connector)["eng/deploy.txt"].url == "https://kb.example/eng/deploy.txt"
    assert docs(connector)["eng/deploy.txt"].title == "deploy.txt"  # no heading: the file name
    with pytest.raises(ConnectorError, match="not written by this connector"):
        run_sync(connector, {"page": 3})


def test_a_removed_file_leaves_the_listing(folder: Path) -> None:
    connector = make(folder)
    assert "hr/carol.md" in connector.list_ids()
    (folder / "hr" / "carol.md").unlink()
    run_sync(connector)
    assert connector.list_ids() == ["eng/deploy.txt", "hr/salaries.md", "open.md", "welcome.md"]


def test_documents_without_the_id_keys_fail_and_nothing_is_pruned(folder: Path) -> None:
    connector = make(folder, id_keys=["source_url"])
    changes = run_sync(connector)
    assert all(isinstance(c, Failure | Checkpoint) for c in changes)
    assert "none of the id keys ['source_url']" in next(c for c in changes if isinstance(c, Failure)).reason
    with pytest.raises(ConnectorError, match="listing is incomplete, nothing is deleted"):
        connector.list_ids()


def test_the_readers_own_doc_id_when_it_is_stable(folder: Path) -> None:
    ids = item_ids(run_sync(make(folder, id_keys=["doc_id"], reader_options={"filename_as_id": True})))
    assert "hr/salaries.md" in ids  # filename_as_id: the absolute path, made relative to path


def test_config_errors_name_the_problem(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the module 'llama_index.readers'.*pip install llama-index-readers-"):
        LlamaHubConnector({"reader": "llama_index.readers.nosuch:NoReader"}).validate()
    with pytest.raises(ConfigError, match="is not a LlamaIndex reader"):
        LlamaHubConnector({"reader": "llama_index.core:Document"}).validate()
    with pytest.raises(ConfigError, match="module:Class"):
        LlamaHubConnector({"reader": "os.system"})
    with pytest.raises(ConfigError, match="keep path"):
        LlamaHubConnector({"reader": READER, "path": folder, "reader_options": {"input_dir": "/etc"}})
    with pytest.raises(ConnectorError, match="cannot be built"):
        LlamaHubConnector({"reader": READER, "path": tmp_path / "missing"}).validate()
    with pytest.raises(ConnectorError, match="failed to load: TypeError"):  # nothing yielded, so nothing pruned
        run_sync(make(folder, load_options={"no_such_option": 1}))
