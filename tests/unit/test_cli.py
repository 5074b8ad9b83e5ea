"""The CLI without a database: help and errors print text as written (no Rich markup), one way to name a
user, and the CLI reaches the core only through the facade and citeline.workflows."""

from __future__ import annotations

import ast
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from citeline.cli import app
from citeline.cli._common import PlainTable
from tests.conftest import REPO

pytestmark = pytest.mark.unit

CLI = REPO / "src" / "citeline" / "cli"
# what the CLI may import of citeline: the facade layer, foundation types, settings, plugins; serving is its peer
ALLOWED = ("citeline.cli", "citeline.facade", "citeline.workflows", "citeline.settings", "citeline.errors",
           "citeline.domain", "citeline.contracts", "citeline.plugins", "citeline.serving", "citeline.tracing")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def flat(text: str) -> str:
    """Help output without its box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.fixture
def no_sources(tmp_path, monkeypatch):
    config = tmp_path / "citeline.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n')
    monkeypatch.setenv("CITELINE_CONFIG", str(config))
    return config


def test_an_error_with_brackets_prints_as_written(no_sources):
    code, out = run("sync")
    assert code == 1
    assert "error: no sources configured: add [[sources]] tables to citeline.toml" in flat(out)


def test_a_principal_named_like_markup_prints_as_written(no_sources):
    code, out = run("principals", "add", "[bold]x[/bold] y")  # a space: refused, and the name shown as given
    assert code == 1 and "invalid user name '[bold]x[/bold] y'" in flat(out)


def test_help_with_literal_brackets():
    code, out = run("principals", "import", "--help")
    assert code == 0
    text = flat(out)
    assert "team per [[principals]] table" in text and "TOML file with [[principals]] tables" in text
    code, out = run("principals", "--help")
    assert code == 0 and "[[principals]] table" in flat(out)


def test_plain_table_shows_cells_and_title_as_written():
    console = Console(record=True, width=120, color_system=None)
    table = PlainTable("user", "[team]", title="results for [bold]x[/bold]")
    table.add_row("[bold]x[/bold]", "[red]sales[/]")
    console.print(table)
    text = console.export_text()
    assert "results for [bold]x[/bold]" in text and "[bold]x[/bold]" in text.split("\n", 2)[-1]
    assert "[red]sales[/]" in text and "[team]" in text


@pytest.mark.parametrize("command", [("search", "QUERY"), ("ask", "QUESTION"), ("adapter", "eval", "DIR")])
def test_as_user_means_act_as_that_principal(command):
    code, out = run(*command[:-1], "--help")
    assert code == 0
    text = flat(out)
    assert "--as USER" in text and "act as this principal" in text


@pytest.mark.parametrize("command", [("principals", "add"), ("principals", "remove"), ("keys", "create"),
                                     ("keys", "list")])
def test_the_administered_principal_is_a_positional_user(command):
    code, out = run(*command, "--help")
    assert code == 0 and re.search(r"Usage: citeline .* [\[{]USER[\]}]", out), out
    assert "--user" not in out  # the old spelling of keys create/list works but is not advertised


def test_keys_create_needs_one_principal():
    code, out = run("keys", "create")
    assert code == 2 and "name the principal" in flat(out)
    code, out = run("keys", "create", "alice", "--user", "bob")
    assert code == 2 and "two principals given: 'alice' and --user 'bob'" in flat(out)


def test_search_needs_as_or_public():
    code, out = run("search", "anything")
    assert code != 0 and "--as" in out


def _imports(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # lazy and TYPE_CHECKING imports too
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "citeline"]
    return found


def test_the_cli_reaches_the_core_only_through_the_facade():
    bad = {}
    for path in sorted(CLI.glob("*.py")):
        names = [n for n in _imports(path) if n.startswith("citeline.")]
        wrong = [n for n in names if not n.startswith(ALLOWED)]
        if wrong:
            bad[path.name] = wrong
    assert not bad, bad


def test_no_cli_module_over_400_lines():
    assert {p.name: n for p in CLI.glob("*.py") if (n := len(p.read_text().splitlines())) > 400} == {}
