"""Files from folders an attacker can write: the folder connector and ``citeline adapter register`` (issue 13,
items 2 and 10c).

The attacker can write the synced folder (or an adapter folder an admin is asked to register) but nothing
outside it. Whatever they put there (symbolic links swapped in between the listing and the read, named pipes,
links to files outside, malformed adapter configs) must not be read from outside the folder, must not hang
the sync, and must fail with an error naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from citeline.connectors.folder import FolderConnector, _Entry
from citeline.contracts.connector import Failure, Upsert
from citeline.domain import Access, Principal
from citeline.errors import ConfigError
from citeline.facade import Citeline, build_connector
from citeline.ingest.sync import SyncRunner
from citeline.settings import Settings
from citeline.testing.connectors import run_sync

pytestmark = [pytest.mark.security]

SECRET = "The vault combination is 7741-QUOKKA-9902."


def write(root: Path, rel: str, content: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """(the synced folder an attacker can write, a secret outside it that the sync's user can read)"""
    root, outside = tmp_path / "wiki", tmp_path / "private"
    write(outside, "vault.md", f"# Vault\n\n{SECRET}\n")
    write(outside / "guides", "deploy.md", f"# Deploy\n\n{SECRET}\n")
    write(root, "welcome.md", "# Welcome\n\nWelcome to the wiki.\n")
    write(root, "notes.md", "# Notes\n\nPlain notes about the build farm.\n")
    write(root, "guides/deploy.md", "# Deploy\n\nRoll back with acme deploy --undo.\n")
    return root, outside


class SwapAfterListing(FolderConnector):
    """Runs ``swap`` right after the folder is first listed (the race, made deterministic) and ``restore``
    before it is listed again (for pruning), so that the listing sees regular files both times."""

    swap = staticmethod(lambda: None)
    restore = staticmethod(lambda: None)
    walks = 0

    def _walk(self) -> list[_Entry]:
        self.walks += 1
        if self.walks == 2:
            type(self).restore()
        entries = super()._walk()
        if self.walks == 1:
            type(self).swap()
        return entries


def racing(root: Path, swap, restore=lambda: None) -> FolderConnector:
    cls = type("Racing", (SwapAfterListing,), {"swap": staticmethod(swap), "restore": staticmethod(restore)})
    return cls(FolderConnector.Config(path=root), Access.everyone())


def texts(changes) -> str:
    return "\n".join(c.document.text for c in changes if isinstance(c, Upsert))


def failures(changes) -> dict[str, str]:
    return {c.external_id: c.reason for c in changes if isinstance(c, Failure)}


# -- item 2: the folder connector --------------------------------------------------------------------------


@pytest.mark.unit
def test_a_file_swapped_for_a_symlink_after_listing_is_not_followed(site) -> None:
    root, outside = site

    def swap() -> None:
        (root / "notes.md").unlink()
        (root / "notes.md").symlink_to(outside / "vault.md")

    changes = run_sync(racing(root, swap))
    assert SECRET not in texts(changes)
    reason = failures(changes)["notes.md"]
    assert "notes.md" in reason and "symbolic link" in reason
    assert "welcome.md" in {c.document.external_id for c in changes if isinstance(c, Upsert)}


@pytest.mark.unit
def test_a_folder_swapped_for_a_symlink_after_listing_is_not_followed(site) -> None:
    root, outside = site

    def swap() -> None:
        (root / "guides" / "deploy.md").unlink()
        (root / "guides").rmdir()
        (root / "guides").symlink_to(outside / "guides", target_is_directory=True)

    changes = run_sync(racing(root, swap))
    assert SECRET not in texts(changes)
    reason = failures(changes)["guides/deploy.md"]
    assert "guides" in reason and "symbolic link" in reason


@pytest.mark.unit
def test_a_symlink_inside_the_folder_to_a_file_inside_is_read_and_one_outside_is_refused(site) -> None:
    root, outside = site
    (root / "alias.md").symlink_to(root / "welcome.md")
    (root / "leak.md").symlink_to(outside / "vault.md")
    (root / "leakdir").symlink_to(outside / "guides", target_is_directory=True)
    (root / "inner").symlink_to(root / "guides", target_is_directory=True)
    changes = run_sync(FolderConnector(FolderConnector.Config(path=root), Access.everyone()))
    upserts = {c.document.external_id: c.document.text for c in changes if isinstance(c, Upsert)}
    assert SECRET not in "\n".join(upserts.values())
    assert "Welcome to the wiki" in upserts["alias.md"]
    assert not any(k.startswith(("leakdir/", "inner/")) for k in upserts)  # linked folders are never entered
    assert "outside the folder" in failures(changes)["leak.md"]


@pytest.mark.unit
def test_a_named_pipe_does_not_hang_the_sync(site) -> None:
    root, _ = site
    pipe = root / "pipe.md"
    os.mkfifo(pipe)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(run_sync(FolderConnector(
        FolderConnector.Config(path=root), Access.everyone()))), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader so the thread ends, then fail
        fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=5)
        pytest.fail("the sync blocked on a named pipe for 10 s")
    changes = result[0]
    assert "named pipe" in failures(changes)["pipe.md"]
    assert {"welcome.md", "notes.md", "guides/deploy.md"} <= {
        c.document.external_id for c in changes if isinstance(c, Upsert)}


@pytest.mark.unit
def test_a_file_replaced_by_a_named_pipe_after_listing_does_not_hang(site) -> None:
    root, _ = site

    def swap() -> None:
        (root / "notes.md").unlink()
        os.mkfifo(root / "notes.md")

    result: list = []
    worker = threading.Thread(target=lambda: result.append(run_sync(racing(root, swap))), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():
        os.close(os.open(root / "notes.md", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("the sync blocked on a named pipe swapped in after the listing")
    assert "named pipe" in failures(result[0])["notes.md"]


# -- item 2: sources.allowed_roots (setting source_policy.allowed_roots) -----------------------------------


def settings_for(tmp_path: Path, folder: Path, allowed: list[str] | None) -> Settings:
    policy = {} if allowed is None else {"allowed_roots": allowed}
    return Settings(home=tmp_path / "home", source_policy=policy,
                    sources=[{"name": "wiki", "connector": "folder", "config": {"path": str(folder)}}])


@pytest.mark.unit
def test_allowed_roots_refuse_a_folder_outside_them(site, tmp_path: Path) -> None:
    root, outside = site
    settings = settings_for(tmp_path, outside, [str(root.parent / "wiki")])
    with pytest.raises(ConfigError) as err:
        build_connector(settings.source("wiki"), settings)
    message = str(err.value)
    assert "'wiki'" in message and str(outside) in message and "source_policy.allowed_roots" in message


@pytest.mark.unit
def test_allowed_roots_follow_symlinks_before_deciding(site, tmp_path: Path) -> None:
    root, outside = site
    (root / "sneaky").symlink_to(outside, target_is_directory=True)  # inside by name, outside in fact
    settings = settings_for(tmp_path, root / "sneaky", [str(root)])
    with pytest.raises(ConfigError, match="outside every allowed root"):
        build_connector(settings.source("wiki"), settings)


@pytest.mark.unit
def test_allowed_roots_allow_a_folder_inside_them_and_unset_allows_any(site, tmp_path: Path) -> None:
    root, _ = site
    for allowed in ([str(root.parent)], [str(root)], None):
        connector = build_connector(settings_for(tmp_path, root, allowed).source("wiki"),
                                    settings_for(tmp_path, root, allowed))
        connector.validate()
        assert "welcome.md" in connector.list_ids()


# -- item 2 end to end: real database, real embedder, search and answers ----------------------------------


@pytest.fixture
def opened(tmp_path: Path, pg_url: str, embedder) -> Iterator[Citeline]:
    namespace = f"s_{uuid.uuid4().hex[:10]}"
    settings = Settings(home=tmp_path / "home", database_url=pg_url, database={"namespace": namespace},
                        generation={"backend": "extractive"})
    try:
        with Citeline(settings, embedder=embedder) as cl:
            yield cl
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


@pytest.mark.integration
def test_the_outside_secret_never_reaches_search_or_answers(site, opened: Citeline) -> None:
    root, outside = site
    (root / "leak.md").symlink_to(outside / "vault.md")

    def swap() -> None:
        (root / "notes.md").unlink()
        (root / "notes.md").symlink_to(outside / "vault.md")
        (root / "guides" / "deploy.md").unlink()
        (root / "guides").rmdir()
        (root / "guides").symlink_to(outside / "guides", target_is_directory=True)

    def restore() -> None:  # the attacker puts regular files back before the listing that decides pruning
        (root / "notes.md").unlink()
        write(root, "notes.md", "# Notes\n\nPlain notes about the build farm.\n")
        (root / "guides").unlink()
        write(root, "guides/deploy.md", "# Deploy\n\nRoll back with acme deploy --undo.\n")

    cl = opened
    runner = SyncRunner(cl.db, cl.embedder, cl.chunker, batch_size=8)
    report = runner.run("wiki", "folder", racing(root, swap, restore))
    assert report.status == "succeeded"
    cl.admin.add_principal(Principal("mallory", ("staff",)), actor="test")
    for question in ("What is the vault combination?", "7741 QUOKKA 9902"):
        hits = cl.search(question, user="mallory").hits
        assert hits, "the public pages are indexed and searchable"
        assert all("QUOKKA" not in h.text for h in hits)
        answer = cl.ask(question, user="mallory")
        assert "QUOKKA" not in answer.text
        assert all("QUOKKA" not in c.snippet for c in (*answer.citations, *answer.sources))
    assert {"notes.md", "guides/deploy.md", "leak.md"} <= {f for f, _ in report.failures}


# -- item 10c: `citeline adapter register` on a folder someone else wrote ---------------------------------

MAX_RANK = 16


@pytest.fixture(scope="module")
def good_adapter(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.adapters import make_adapter

    return make_adapter(smollm2_dir, tmp_path_factory.mktemp("adapters") / "good", seed=7)


@pytest.fixture
def adapter(good_adapter: Path, tmp_path: Path) -> Path:
    """A fresh copy of a real, valid PEFT LoRA adapter on SmolLM2 to spoil."""
    return Path(shutil.copytree(good_adapter, tmp_path / "adapter"))


@pytest.fixture
def registry(db, tmp_path: Path):
    from citeline.lora.registry import AdapterRegistry

    return AdapterRegistry(db, tmp_path / "store")


def register(registry, path: Path, base: Path):
    return registry.register(path, team="support", name="support", base_model_dir=base, max_rank=MAX_RANK,
                             actor="test")


def edit_config(adapter: Path, **changes: object) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def assert_nothing_registered(registry) -> None:
    assert registry.list() == []
    assert not registry.store.exists() or not any(registry.store.iterdir())


@pytest.mark.integration
@pytest.mark.parametrize("name", ["README.md", "adapter_model.safetensors", "adapter_config.json"])
def test_register_refuses_a_symlinked_file(registry, adapter: Path, smollm2_dir: Path, tmp_path: Path,
                                           name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if name == "README.md":  # peft writes a README.md: the attacker replaces it with a link to a secret
        write(outside, "secret.txt", SECRET)
        (adapter / name).unlink(missing_ok=True)
    else:
        shutil.move(adapter / name, outside / "secret.txt")
    (adapter / name).symlink_to(outside / "secret.txt")
    from citeline.errors import AdapterError

    with pytest.raises(AdapterError) as err:
        register(registry, adapter, smollm2_dir)
    assert name in str(err.value) and "symbolic link" in str(err.value)
    assert_nothing_registered(registry)


@pytest.mark.integration
def test_register_refuses_a_named_pipe_without_hanging(registry, adapter: Path, smollm2_dir: Path) -> None:
    (adapter / "adapter_config.json").unlink()
    os.mkfifo(adapter / "adapter_config.json")
    from citeline.errors import AdapterError

    result: list = []

    def attempt() -> None:
        try:
            register(registry, adapter, smollm2_dir)
        except AdapterError as exc:
            result.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():
        os.close(os.open(adapter / "adapter_config.json", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("registration blocked on a named pipe for 10 s")
    assert result and "adapter_config.json" in str(result[0]) and "named pipe" in str(result[0])
    assert_nothing_registered(registry)


BAD_CONFIGS = [
    ({"r": "eight"}, ['"r"', "'eight'", "integer"]),
    ({"r": True}, ['"r"', "True", "integer"]),
    ({"r": 0}, ['"r"', "0", "at least 1"]),
    ({"r": 8.5}, ['"r"', "8.5", "integer"]),
    ({"lora_alpha": "sixteen"}, ['"lora_alpha"', "'sixteen'", "number"]),
    ({"rank_pattern": {"q_proj": "x"}}, ['"rank_pattern"', "'x'", "integer"]),
    ({"rank_pattern": ["q_proj"]}, ['"rank_pattern"', "['q_proj']", "object"]),
    ({"target_modules": [1, 2]}, ['"target_modules"', "[1, 2]", "list of module names"]),
    ({"modules_to_save": "lm_head"}, ['"modules_to_save"', "'lm_head'", "list"]),
    ({"use_dora": "no"}, ['"use_dora"', "'no'", "true or false"]),
    ({"peft_type": 3}, ['"peft_type"', "3", "string"]),
    ({"base_model_name_or_path": ["x"]}, ['"base_model_name_or_path"', "['x']", "string"]),
]


@pytest.mark.integration
@pytest.mark.parametrize(("changes", "expected"), BAD_CONFIGS, ids=[next(iter(c)) + "=" + repr(next(iter(c.values())))
                                                                    for c, _ in BAD_CONFIGS])
def test_register_type_checks_every_config_field(registry, adapter: Path, smollm2_dir: Path, changes, expected):
    edit_config(adapter, **changes)
    from citeline.errors import AdapterError

    with pytest.raises(AdapterError) as err:
        register(registry, adapter, smollm2_dir)
    message = str(err.value)
    assert "adapter_config.json" in message and all(part in message for part in expected), message
    assert_nothing_registered(registry)


@pytest.mark.integration
@pytest.mark.parametrize(("content", "expected"), [
    (None, "has no adapter_config.json"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"r": 8}' + " " * 2_000_000, "over the limit"),
])
def test_register_refuses_a_missing_malformed_or_huge_config(registry, adapter: Path, smollm2_dir: Path,
                                                             content, expected) -> None:
    path = adapter / "adapter_config.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    from citeline.errors import AdapterError

    with pytest.raises(AdapterError, match=expected):
        register(registry, adapter, smollm2_dir)
    assert_nothing_registered(registry)


@pytest.mark.integration
def test_register_type_checks_the_manifest(registry, adapter: Path, smollm2_dir: Path) -> None:
    from citeline.errors import AdapterError
    from tests.support.adapters import with_metrics

    with_metrics(adapter, smollm2_dir, format_compliance=0.9, baseline_format_compliance=0.5)
    manifest = json.loads((adapter / "citeline_adapter.json").read_text())
    (adapter / "citeline_adapter.json").write_text(json.dumps({**manifest, "rank": "eight"}))
    with pytest.raises(AdapterError) as err:
        register(registry, adapter, smollm2_dir)
    assert all(part in str(err.value) for part in ("citeline_adapter.json", '"rank"', "'eight'")), str(err.value)
    assert_nothing_registered(registry)


@pytest.mark.integration
def test_a_valid_adapter_still_registers(registry, adapter: Path, smollm2_dir: Path) -> None:
    version, new = register(registry, adapter, smollm2_dir)
    assert new and version.rank == 8 and (version.path / "adapter_model.safetensors").is_file()
    assert not any(p.is_symlink() for p in version.path.iterdir())


# -- the same through the CLI: a clear message and exit code, never a traceback ---------------------------


@pytest.fixture
def cli_env(tmp_path: Path, pg_url: str, smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    namespace = f"s_{uuid.uuid4().hex[:10]}"
    (tmp_path / "citeline.toml").write_text('home = ".citeline"\n')
    monkeypatch.setenv("CITELINE_CONFIG", str(tmp_path / "citeline.toml"))
    monkeypatch.setenv("CITELINE_DATABASE_URL", pg_url)
    monkeypatch.setenv("CITELINE_DATABASE__NAMESPACE", namespace)
    monkeypatch.setenv("CITELINE_ADAPTERS__BASE_MODEL_PATH", str(smollm2_dir))
    yield tmp_path
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from citeline.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.integration
def test_cli_register_names_the_bad_field_and_the_symlink(cli_env: Path, adapter: Path, tmp_path: Path) -> None:
    edit_config(adapter, r="eight")
    code, out = cli("adapter", "register", str(adapter), "--team", "support")
    assert code != 0 and '"r"' in out and "'eight'" in out and "Traceback" not in out, out
    edit_config(adapter, r=8)
    write(tmp_path, "outside/secret.txt", SECRET)
    (adapter / "README.md").unlink(missing_ok=True)
    (adapter / "README.md").symlink_to(tmp_path / "outside" / "secret.txt")
    code, out = cli("adapter", "register", str(adapter), "--team", "support")
    assert code != 0 and "README.md" in out and "symbolic link" in out, out
    code, out = cli("adapter", "list", "--json")
    assert code == 0 and json.loads(out) == []
    (adapter / "README.md").unlink()
    code, out = cli("adapter", "register", str(adapter), "--team", "support", "--json")
    assert code == 0 and json.loads(out)["rank"] == 8, out
