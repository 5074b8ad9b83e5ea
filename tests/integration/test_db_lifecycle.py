"""`citeline db status|migrate|drop-namespace` and checksummed migrations, on the real embedded PostgreSQL."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

import citeline.db
from citeline.cli import app
from citeline.db.migrations import apply_migrations, available_migrations
from citeline.errors import MigrationChecksumError
from tests.conftest import REPO

pytestmark = pytest.mark.integration

HOSTILE = 'x"; DROP SCHEMA public CASCADE; --'


@pytest.fixture
def namespace(tmp_path, pg_url, monkeypatch):
    """The Acme example's config with a fresh namespace of the test database (dropped afterwards)."""
    root = tmp_path / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    name = f"dbl_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CITELINE_DATABASE_URL", pg_url)
    monkeypatch.setenv("CITELINE_DATABASE__NAMESPACE", name)
    monkeypatch.setenv("CITELINE_CONFIG", str(root / "citeline.toml"))
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for schema in (name, HOSTILE):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def states(*args: str) -> tuple[int, dict[str, str]]:
    code, out = run("db", "status", "--json", *args)
    return code, {f"{m['version']:04d}": m["state"] for m in json.loads(out)["migrations"]}


def schema_exists(pg_url: str, name: str) -> bool:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


def test_status_migrate_and_drop(namespace, pg_url):
    files = available_migrations()
    code, fresh = states()
    assert code == 1 and set(fresh.values()) == {"pending"} and len(fresh) == len(files)
    assert not schema_exists(pg_url, namespace)  # status changes nothing

    code, out = run("db", "migrate")
    assert code == 0, out
    assert all(f"applied {m.filename[:-4]}" in out for m in files)
    code, migrated = states()
    assert code == 0 and set(migrated.values()) == {"ok"}
    code, out = run("db", "status")
    assert code == 0 and "0001" in out and "core" in out and " UTC" in out
    code, out = run("db", "migrate", "--json")  # idempotent
    assert code == 0 and json.loads(out) == {"namespace": namespace, "applied": []}

    code, out = run("db", "drop-namespace", namespace)
    assert code == 1 and "--yes" in out
    assert schema_exists(pg_url, namespace)
    code, out = run("db", "drop-namespace", namespace, "--yes")
    assert code == 0, out
    assert not schema_exists(pg_url, namespace)


def test_an_edited_applied_migration_is_refused(namespace, pg_url):
    assert run("db", "migrate")[0] == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as if 0002's file had been edited since it ran
        conn.execute(sql.SQL("UPDATE {}.schema_migrations SET checksum = 'edited' WHERE version = 2")
                     .format(sql.Identifier(namespace)))
    code, found = states()
    assert code == 1 and found["0002"] == "changed" and found["0001"] == "ok"
    code, out = run("db", "migrate")
    assert code == 1 and "0002_lexicon.sql" in out and "append-only" in out and namespace in out


def test_rows_without_a_checksum_adopt_the_file(namespace, pg_url, tmp_path):
    """A namespace migrated before checksums were recorded: adopted on the next run; then an edit is caught."""
    folder = tmp_path / "migrations"
    shutil.copytree(Path(citeline.db.__file__).parent / "migrations", folder)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        apply_migrations(conn, namespace, 384, "english", folder=folder)
        conn.execute(sql.SQL("UPDATE {}.schema_migrations SET checksum = NULL").format(sql.Identifier(namespace)))
        assert apply_migrations(conn, namespace, 384, "english", folder=folder) == []
        recorded = conn.execute(sql.SQL("SELECT count(*) FROM {}.schema_migrations WHERE checksum IS NOT NULL")
                                .format(sql.Identifier(namespace))).fetchone()
        assert recorded is not None and recorded[0] == len(available_migrations(folder))
        first = sorted(folder.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationChecksumError, match=rf"{first.name}.*{namespace}.*restore {first.name}"):
            apply_migrations(conn, namespace, 384, "english", folder=folder)


def test_drop_namespace_refuses_what_is_not_a_citeline_namespace(namespace, pg_url):
    for name in ("public", "pg_catalog", "information_schema", "no_such_namespace", HOSTILE):
        code, out = run("db", "drop-namespace", name, "--yes")
        assert code == 1, (name, out)
    assert schema_exists(pg_url, "public")
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a schema of another application: left alone
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE)))
    code, out = run("db", "drop-namespace", HOSTILE, "--yes")
    assert code == 1 and "not a citeline namespace" in out
    assert schema_exists(pg_url, HOSTILE) and schema_exists(pg_url, "public")


def test_a_hostile_namespace_name_is_quoted(namespace, pg_url):
    """database.namespace refuses such a name; --namespace and drop-namespace's NAME quote it."""
    code, out = states("--namespace", HOSTILE)
    assert code == 1 and set(out.values()) == {"pending"}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        apply_migrations(conn, HOSTILE, 384, "english")
    assert states("--namespace", HOSTILE)[0] == 0
    code, out = run("db", "drop-namespace", HOSTILE, "--yes")
    assert code == 0, out
    assert not schema_exists(pg_url, HOSTILE) and schema_exists(pg_url, "public")
