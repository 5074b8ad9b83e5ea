"""Least-privilege logins, adversarially: `citeline db migrate --runtime-login`, auto_migrate, the embedded app login.

The runtime-login tests run against a separately started PostgreSQL with scram-sha-256 authentication
(tests/support/postgres_server.py, the embedded server's binaries), so that passwords are really checked, and
the admin login that migrates is not a superuser (as on a managed PostgreSQL): it has CREATEROLE and CREATE on
the database, and a superuser created the extension ``vector`` beforehand.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from citeline.cli import app
from citeline.db import Database
from citeline.db.migrations import available_migrations
from citeline.errors import DatabaseError
from citeline.settings import Settings
from tests.conftest import REPO
from tests.support.postgres_server import PostgresServer, start_postgres

pytestmark = pytest.mark.integration

PASSWORD_ENV = "CITELINE_RUNTIME_DB_PASSWORD"
OWNER = "citeline_owner"  # the admin login: migrates, owns the namespaces; not a superuser
OWNER_PASSWORD = secrets.token_urlsafe(16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="citeline-roles-pg-"))
    root.chmod(0o755)
    srv = start_postgres(root, port=_free_port(), password=secrets.token_urlsafe(16))
    with psycopg.connect(srv.url(), autocommit=True) as conn:  # every statement in the log: passwords must not be
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
            sql.Identifier(OWNER), sql.Literal(OWNER_PASSWORD)))
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(srv.database), sql.Identifier(OWNER)))
        conn.execute("CREATE EXTENSION vector")
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def env(tmp_path, server, monkeypatch) -> str:
    """The Acme example's config, the admin login's URL and a fresh namespace; returns the namespace."""
    root = tmp_path / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    name = f"roles_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CITELINE_DATABASE_URL", admin_url(server))
    monkeypatch.setenv("CITELINE_DATABASE__NAMESPACE", name)
    monkeypatch.setenv("CITELINE_CONFIG", str(root / "citeline.toml"))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    return name


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def login(name: str) -> str:
    return f"rt_{name}_{uuid.uuid4().hex[:6]}"


def can_connect(server: PostgresServer, user: str, password: str) -> bool:
    try:
        with psycopg.connect(server.url(user, password), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def admin_url(server: PostgresServer) -> str:
    return server.url(OWNER, OWNER_PASSWORD)


def admin_sql(server: PostgresServer, query: str, *args: object) -> list[tuple]:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        cur = conn.execute(query, args or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def migrate_login(monkeypatch, name: str, password: str | None) -> tuple[int, str]:
    if password is None:
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
    else:
        monkeypatch.setenv(PASSWORD_ENV, password)
    return run("db", "migrate", "--runtime-login", name, "--json")


def test_migrate_creates_rotates_and_never_shows_the_password(env, server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    name = login("a")
    code, out = migrate_login(monkeypatch, name, None)  # a new login needs a password
    assert code != 0 and PASSWORD_ENV in out and name in out
    first, second = "Pw1-" + secrets.token_urlsafe(12), "Pw2-" + secrets.token_urlsafe(12)
    code, out = migrate_login(monkeypatch, name, first)
    assert code == 0, out
    report = json.loads(out)["runtime_login"]
    assert report == {"name": name, "created": True, "password_set": True,
                      "roles": ["citeline_reader", "citeline_writer"], "granted": ["citeline_reader", "citeline_writer"]}
    assert can_connect(server, name, first) and not can_connect(server, name, "wrong")
    attrs = admin_sql(server, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolcanlogin FROM pg_roles"
                              " WHERE rolname = %s", name)
    assert attrs == [(False, False, False, False, True)]
    code, out = migrate_login(monkeypatch, name, second)  # idempotent, and rotates the password
    assert code == 0, out
    assert json.loads(out)["runtime_login"] | {"roles": None} == {
        "name": name, "created": False, "password_set": True, "roles": None, "granted": []}
    assert json.loads(out)["applied"] == []
    assert can_connect(server, name, second) and not can_connect(server, name, first)
    code, out = run("db", "status", "--json")
    assert code == 0 and json.loads(out)["login"] == {"name": OWNER, "superuser": False, "may_migrate": True}
    code, out = migrate_login(monkeypatch, name, None)  # no password: the login's is kept
    assert code == 0 and json.loads(out)["runtime_login"]["password_set"] is False
    assert can_connect(server, name, second)
    time.sleep(0.5)  # the server's log is written asynchronously
    for secret in (first, second):
        assert secret not in caplog.text and secret not in out
        assert secret not in server.log.read_text(errors="replace")  # log_statement = 'all': only a verifier


def test_the_runtime_login_cannot_change_the_schema_or_the_audit_log(env, server, monkeypatch):
    name, password = login("b"), secrets.token_urlsafe(16)
    assert migrate_login(monkeypatch, name, password)[0] == 0
    assert run("principals", "add", "dave", "--groups", "eng")[0] == 0  # one audited change: a row in the log
    count = sql.SQL("SELECT count(*) FROM {}.audit_log").format(sql.Identifier(env)).as_string(None)
    rows = admin_sql(server, count)
    assert rows[0][0] >= 1
    ident = sql.Identifier(env).as_string(None)
    refused = [f"ALTER TABLE {ident}.chunks ADD COLUMN evil int", f"DROP TABLE {ident}.chunks",
               f"CREATE TABLE {ident}.evil (x int)", f"CREATE SCHEMA evil_{uuid.uuid4().hex[:6]}",
               "CREATE ROLE evil LOGIN", f"ALTER ROLE {name} CREATEROLE", f"GRANT citeline_auditor TO {name}",
               f"TRUNCATE {ident}.chunks", f"TRUNCATE {ident}.audit_log", f"DELETE FROM {ident}.audit_log",
               f"UPDATE {ident}.audit_log SET principal = 'forged'", f"DROP FUNCTION {ident}.citeline_login(text)",
               f"ALTER TABLE {ident}.chunks DISABLE ROW LEVEL SECURITY", f"DROP POLICY chunks_reader ON {ident}.chunks",
               "SET ROLE citeline_lexicon", "SET ROLE citeline_auditor", f"SELECT * FROM {ident}.identity_key",
               f"DROP SCHEMA {ident} CASCADE"]
    with psycopg.connect(server.url(name, password), autocommit=True) as conn:
        for statement in refused:
            for role in ("RESET ROLE", "SET ROLE citeline_writer"):
                conn.execute(role)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    assert admin_sql(server, count) == rows


def test_the_runtime_login_syncs_and_searches(env, server, monkeypatch):
    name, password = login("c"), secrets.token_urlsafe(16)
    assert migrate_login(monkeypatch, name, password)[0] == 0
    monkeypatch.setenv("CITELINE_DATABASE_URL", server.url(name, password))
    monkeypatch.setenv("CITELINE_DATABASE__AUTO_MIGRATE", "false")
    code, out = run("sync")
    assert code == 0, out
    code, out = run("principals", "import", str(Path(os.environ["CITELINE_CONFIG"]).parent / "principals.toml"))
    assert code == 0, out
    code, out = run("search", "how do I roll back a bad deploy", "--as", "alice", "--json", "-k", "3")
    assert code == 0, out
    assert json.loads(out)["hits"][0]["external_id"] == "engineering/deploy-process.md"
    code, out = run("audit", "verify")
    assert code == 0, out
    code, out = run("db", "status", "--json")
    assert code == 0, out
    assert json.loads(out)["login"] == {"name": name, "superuser": False, "may_migrate": False}


def test_pending_migrations_are_refused_clearly(env, server, monkeypatch):
    name, password = login("d"), secrets.token_urlsafe(16)
    assert migrate_login(monkeypatch, name, password)[0] == 0
    runtime = server.url(name, password)
    fresh = f"roles_new_{uuid.uuid4().hex[:8]}"  # a namespace never migrated
    with pytest.raises(DatabaseError, match=r"pending migrations \(0001_core\.sql.*citeline db migrate"):
        Database(runtime, namespace=fresh, embedding_dim=384, auto_migrate=False)
    with pytest.raises(DatabaseError, match=rf"login '{name}' may not migrate namespace '{fresh}'.*citeline db migrate"):
        Database(runtime, namespace=fresh, embedding_dim=384)
    assert not admin_sql(server, "SELECT 1 FROM pg_namespace WHERE nspname = %s", fresh)
    last = available_migrations()[-1]
    admin_sql(server, sql.SQL("DELETE FROM {}.schema_migrations WHERE version = %s").format(
        sql.Identifier(env)).as_string(None), last.version)  # as if a newer citeline shipped a migration
    with pytest.raises(DatabaseError, match=rf"pending migrations \({last.filename}\) and database.auto_migrate"):
        Database(runtime, namespace=env, embedding_dim=384, auto_migrate=False)
    with pytest.raises(DatabaseError, match=rf"login '{name}' may not migrate.*admin login"):
        Database(runtime, namespace=env, embedding_dim=384)
    with monkeypatch.context() as m:  # as the deploy files run the servers: the setting from the environment
        m.setenv("CITELINE_DATABASE_URL", runtime)
        m.setenv("CITELINE_DATABASE__AUTO_MIGRATE", "false")
        code, out = run("principals", "list")
        assert code == 1 and last.filename in out and "citeline db migrate" in " ".join(out.split()), out
    code, out = run("db", "migrate", "--json")  # the admin applies it
    assert code == 0 and json.loads(out)["applied"] == [{"version": last.version, "name": last.name}], out
    Database(runtime, namespace=env, embedding_dim=384, auto_migrate=False).close()


def test_an_up_to_date_namespace_opens_without_the_migration_lock(env, server, monkeypatch):
    assert run("db", "migrate")[0] == 0
    with psycopg.connect(admin_url(server), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (0x63697465,))  # the migrations' lock, held elsewhere
        started = time.monotonic()
        Database(admin_url(server), namespace=env, embedding_dim=384, connect_timeout_s=5).close()
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("hostile", ["x; DROP TABLE chunks", "postgres", '"quoted"', "Upper", "pg_evil",
                                     "citeline_writer", "citeline_lexicon", "a b", "x'--", "citeline", OWNER])
def test_hostile_or_privileged_login_names_are_refused(env, server, monkeypatch, hostile):
    roles = admin_sql(server, "SELECT count(*) FROM pg_roles")
    code, out = migrate_login(monkeypatch, hostile, "pw-" + secrets.token_urlsafe(8))
    assert code != 0 and ("runtime login" in out or "not a usable runtime login name" in out), out
    assert admin_sql(server, "SELECT count(*) FROM pg_roles") == roles


@pytest.mark.parametrize("attribute", ["SUPERUSER", "CREATEROLE", "BYPASSRLS", "NOLOGIN"])
def test_existing_privileged_roles_are_refused(env, server, monkeypatch, attribute):
    name = login("p")
    attributes = attribute if attribute == "NOLOGIN" else f"LOGIN {attribute}"
    admin_sql(server, sql.SQL("CREATE ROLE {} " + attributes).format(sql.Identifier(name)).as_string(None))
    code, out = migrate_login(monkeypatch, name, "pw-" + secrets.token_urlsafe(8))
    assert code != 0 and name in out, out
    assert admin_sql(server, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
                             " WHERE r.rolname = %s", name) == [(0,)]


def test_the_embedded_application_login_is_not_a_superuser(db):
    with db.writer() as conn:
        who = conn.execute("SELECT session_user::text, rolsuper, rolcreaterole FROM pg_roles"
                           " WHERE rolname = session_user").fetchone()
    assert who == ("citeline_app", False, False)
    assert db.admin_url and db.admin_url != db.url


def test_settings_without_a_url_use_the_embedded_application_login(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="citeline-roles-home-"))
    home.chmod(0o755)
    settings = Settings(home=home, database={"namespace": f"emb_{uuid.uuid4().hex[:8]}"})
    with Database.from_settings(settings, 384) as db:
        with psycopg.connect(db.url) as conn:
            assert conn.execute("SELECT current_user::text, rolsuper FROM pg_roles"
                                " WHERE rolname = current_user").fetchone() == ("citeline_app", False)
        with psycopg.connect(db.admin_url or "") as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
        db.drop_namespace()


def test_a_login_without_admin_option_on_the_roles_is_told_and_creates_nothing(env, server):
    from citeline.db.roles import ensure_runtime_login

    weak, weak_password, name = login("w"), secrets.token_urlsafe(16), login("x")
    admin_sql(server, sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
        sql.Identifier(weak), sql.Literal(weak_password)).as_string(None))
    with psycopg.connect(server.url(weak, weak_password), autocommit=True) as conn:
        with pytest.raises(DatabaseError, match=rf"login '{weak}' may not create or change login '{name}'.*ADMIN"):
            ensure_runtime_login(conn, name, "pw-" + secrets.token_urlsafe(8), env)
    assert not admin_sql(server, "SELECT 1 FROM pg_roles WHERE rolname = %s", name)  # rolled back as one
