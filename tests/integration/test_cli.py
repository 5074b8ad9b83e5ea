"""The CLI end to end on the Acme example: real database, real embedder, Typer's CliRunner."""

from __future__ import annotations

import json
import shutil
import uuid

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from citeline.cli import app
from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def acme(tmp_path, pg_url, monkeypatch):
    """A copy of examples/acme indexed into its own namespace of the test database."""
    root = tmp_path / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"cli_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CITELINE_DATABASE_URL", pg_url)
    monkeypatch.setenv("CITELINE_DATABASE__NAMESPACE", namespace)
    monkeypatch.setenv("CITELINE_CONFIG", str(root / "citeline.toml"))
    yield root
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def search_ids(query: str, user: str) -> list[str]:
    code, out = run("search", query, "--as", user, "--json", "-k", "5")
    assert code == 0, out
    return [f"{h['source']}/{h['external_id']}" for h in json.loads(out)["hits"]]


def test_sync_then_search_as_two_users(acme):
    code, out = run("sync")
    assert code == 0, out
    assert "sync summary" in out and "wiki" in out and "catalog" in out
    code, out = run("principals", "import", str(acme / "principals.toml"))
    assert code == 0 and "alice" in out
    alice = search_ids("how do I roll back a bad deploy", "alice")
    bob = search_ids("how do I roll back a bad deploy", "bob")
    assert alice[0] == "wiki/engineering/deploy-process.md"
    assert not any(hit.startswith("wiki/engineering/") or hit.startswith("tickets/") for hit in bob)
    assert search_ids("salary bands for engineers", "carol")[0] == "wiki/hr/salary-bands.md"
    assert "wiki/hr/salary-bands.md" not in search_ids("salary bands for engineers", "alice")

    code, out = run("sync", "--json")
    assert code == 0
    reports = json.loads(out)
    assert all(r["added"] == r["updated"] == r["chunks"] == 0 and r["unchanged"] > 0 for r in reports)
    code, out = run("sources", "status", "--json")
    assert {r["name"] for r in json.loads(out)} == {"wiki", "tickets", "catalog"}


def test_a_bad_file_is_reported_and_loses_nothing(acme):
    assert run("sync", "wiki")[0] == 0
    run("principals", "add", "alice", "--groups", "staff,engineering")
    page = acme / "wiki" / "engineering" / "deploy-process.md"
    page.write_text("---\naccess: [not, a, mapping\n---\n# Broken\n")
    (acme / "wiki" / "binary.md").write_bytes(b"\xff\xfe\x00bad")
    code, out = run("sync", "wiki")
    assert code == 2, out
    assert "engineering/deploy-process.md" in out and "binary.md" in out
    # the previously indexed version of the broken page is still there and still searchable
    assert search_ids("how do I roll back a bad deploy", "alice")[0] == "wiki/engineering/deploy-process.md"


def test_user_errors_are_clear(acme):
    code, out = run("search", "anything", "--as", "nobody")
    assert code == 1 and "unknown principal 'nobody'" in out
    code, out = run("sync", "nope")
    assert code == 1 and "unknown source 'nope'" in out
    code, out = run("search", "anything")
    assert code != 0 and "--as" in out


def test_names_that_look_like_markup_print_as_written(acme):
    odd = "[bold]x[/bold]"
    code, out = run("principals", "add", odd, "--groups", "staff,[red]eng[/red]")
    assert code == 0 and f"principal {odd}: groups [red]eng[/red], staff" in out
    code, out = run("principals", "list")
    assert code == 0 and odd in out and "[red]eng[/red]" in out
    code, out = run("search", "how do I roll back a bad deploy", "--as", odd)
    assert code == 0 and f"results for {odd}" in " ".join(out.split())
    code, out = run("principals", "remove", "[nobody]")
    assert code == 1 and "no principal named '[nobody]'" in out


def test_keys_name_their_principal_positionally(acme):
    assert run("principals", "add", "alice", "--groups", "staff")[0] == 0
    assert run("principals", "add", "bob")[0] == 0
    code, out = run("keys", "create", "alice", "--json")
    assert code == 0 and json.loads(out)["user"] == "alice"
    code, out = run("keys", "create", "--user", "bob", "--json")  # the earlier spelling still works
    assert code == 0 and json.loads(out)["user"] == "bob"
    code, out = run("keys", "list", "alice", "--json")
    assert code == 0 and {k["user"] for k in json.loads(out)} == {"alice"}
    code, out = run("keys", "list", "--json")
    assert code == 0 and {k["user"] for k in json.loads(out)} == {"alice", "bob"}
