"""Admin actions, API keys and the audit chain under attack (issue 13, items 5, 6 and 8).

* An admin action and its audit row commit together or not at all: with audit inserts failing for real
  (a trigger that raises), every admin call over HTTP and through the Python API answers an error and
  changes nothing.
* A key dies with the principal it was issued to: removing the principal revokes it, and re-creating
  the name (through citeline or behind its back) does not bring it back.
* The chain is keyed (HMAC, key outside the database): a writer-role login cannot append a correctly
  hashed row, an owner who edits and re-chains with plain SHA-256 is caught, and a truncated tail is
  caught against a signed anchor kept elsewhere. The key never reaches logs or CLI output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from citeline.domain import Principal
from citeline.errors import AuditError, AuthError, CitelineError
from citeline.facade import Citeline
from citeline.settings import Settings
from tests.security.conftest import Server

pytestmark = [pytest.mark.security]

GENESIS = "0" * 64


# -- helpers ------------------------------------------------------------------------------------------
def _owner(pg_url: str, namespace: str, query: str, *args: object, role: str | None = None) -> list[tuple]:
    """SQL as the database owner (or, with ``role``, as that role: what a login with its rights can do)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(namespace)))
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        cur = conn.execute(query, args or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def audit_inserts_fail(run_sql: Callable[..., Any]) -> Iterator[None]:
    """Every INSERT into audit_log raises (a trigger installed by the owner), as when the audit is down."""
    run_sql("CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'audit storage offline (test)'; END $$")
    run_sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_audit()")
    try:
        yield
    finally:
        run_sql("DROP TRIGGER refuse_audit ON audit_log")
        run_sql("DROP FUNCTION refuse_audit()")


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key_works(server: Server, key: str) -> int:
    return httpx.get(f"{server.url}/v1/models", headers=_h(key), timeout=30).status_code


def _key_id(secret: str) -> str:
    return secret.split("_")[1]


def plain_sha(prev: str, id_: int, at: datetime, kind: str, principal: str | None, team: str | None, action: str,
              payload: dict[str, Any]) -> str:
    """The unkeyed chain hash as documented before the key existed: anyone with the formula can compute it."""
    body = json.dumps([id_, at.astimezone(UTC).isoformat(timespec="microseconds"), kind, principal, team, action,
                       payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from citeline.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def fresh(tmp_path: Path, pg_url: str, embedder) -> Iterator[tuple[Citeline, dict[str, str]]]:
    """A Citeline on a fresh namespace with its own data folder (the audit key lives there), and CLI env."""
    config = tmp_path / "citeline.toml"
    config.write_text('home = ".citeline"\n')
    namespace = f"sec_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "CITELINE_CONFIG": str(config), "CITELINE_DATABASE_URL": pg_url,
           "CITELINE_DATABASE__NAMESPACE": namespace, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace})
    with Citeline(settings, embedder=embedder) as cl:
        try:
            yield cl, env
        finally:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def _some_admin_rows(cl: Citeline, n: int = 4) -> None:
    for i in range(n):
        cl.admin.add_principal(Principal(f"user{i}", ("staff",)), actor="ops")


# -- item 5: an admin action and its audit row commit together -----------------------------------------
@pytest.mark.e2e
def test_admin_calls_over_http_change_nothing_when_the_audit_cannot_record_them(server: Server):
    admin = _h(server.keys["admin"])
    groups_before = server.owner_sql("SELECT user_id, groups, team FROM principals ORDER BY user_id")
    keys_before = server.owner_sql("SELECT key_id, revoked_at FROM api_keys ORDER BY id")
    alice_key_id = _key_id(server.keys["alice"])
    with audit_inserts_fail(server.owner_sql):
        r = httpx.put(f"{server.url}/v1/admin/principals", headers=admin, timeout=30,
                      json={"user": "bob", "groups": ["staff", "hr", "engineering"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable", r.text
        r = httpx.post(f"{server.url}/v1/admin/keys", headers=admin, json={"user": "bob", "admin": True}, timeout=30)
        assert r.status_code == 503 and "cl_" not in r.text, r.text
        r = httpx.delete(f"{server.url}/v1/admin/keys/{alice_key_id}", headers=admin, timeout=30)
        assert r.status_code == 503, r.text
        r = httpx.delete(f"{server.url}/v1/admin/principals/carol", headers=admin, timeout=30)
        assert r.status_code == 503, r.text
    assert server.owner_sql("SELECT user_id, groups, team FROM principals ORDER BY user_id") == groups_before
    assert server.owner_sql("SELECT key_id, revoked_at FROM api_keys ORDER BY id") == keys_before
    assert _key_works(server, server.keys["alice"]) == 200
    assert _key_works(server, server.keys["carol"]) == 200


@pytest.mark.integration
def test_admin_calls_through_the_python_api_are_atomic_with_their_audit_row(fresh, tmp_path: Path):
    cl, _ = fresh
    cl.admin.add_principal(Principal("bob", ("staff",), "sales"), actor="ops")
    key = cl.admin.create_key("bob", actor="ops")
    run = lambda q, *a: _owner(cl.db.url, cl.namespace, q, *a)  # noqa: E731
    principals_before = run("SELECT user_id, groups, team FROM principals ORDER BY user_id")
    keys_before = run("SELECT key_id, revoked_at FROM api_keys ORDER BY id")
    rows_before = run("SELECT count(*) FROM audit_log")
    people = tmp_path / "people.toml"
    people.write_text('[[principals]]\nuser = "bob"\ngroups = ["hr"]\n[[principals]]\nuser = "zed"\ngroups = ["hr"]\n')
    with audit_inserts_fail(run):
        attempts = [
            lambda: cl.admin.add_principal(Principal("bob", ("staff", "hr")), actor="ops"),
            lambda: cl.admin.add_principal(Principal("newbie", ("hr",)), actor="ops"),
            lambda: cl.admin.remove_principal("bob", actor="ops"),
            lambda: cl.admin.import_principals(people, actor="ops"),
            lambda: cl.admin.create_key("bob", actor="ops", admin=True),
            lambda: cl.admin.revoke_key(key.key.key_id, actor="ops"),
        ]
        for attempt in attempts:
            with pytest.raises(AuditError):
                attempt()
    assert run("SELECT user_id, groups, team FROM principals ORDER BY user_id") == principals_before
    assert run("SELECT key_id, revoked_at FROM api_keys ORDER BY id") == keys_before
    assert run("SELECT count(*) FROM audit_log") == rows_before
    assert cl.keys.authenticate(key.secret).principal.groups == ("staff",)
    assert cl.audit.verify().ok


@pytest.mark.integration
@pytest.mark.slow
def test_adapter_register_promote_retire_are_atomic_with_their_audit_row(fresh, smollm2_dir: Path, tmp_path: Path):
    from tests.support.adapters import make_adapter

    cl0, _ = fresh
    settings = cl0.settings.model_copy(update={"adapters": cl0.settings.adapters.model_copy(
        update={"base_model_path": smollm2_dir, "store": tmp_path / "store"})})
    cl = Citeline(settings, namespace=cl0.namespace, embedder=cl0.embedder)
    try:
        folder = make_adapter(smollm2_dir, tmp_path / "support-v1", seed=1)
        run = lambda q, *a: _owner(cl.db.url, cl.namespace, q, *a)  # noqa: E731
        with audit_inserts_fail(run), pytest.raises(AuditError):
            cl.adapters.register(folder, team="support", actor="ops")
        assert cl.adapters.list() == []
        adapter = cl.adapters.register(folder, team="support", actor="ops")
        with audit_inserts_fail(run), pytest.raises(CitelineError):
            cl.adapters.promote(adapter.served_name, actor="ops", force=True, drain_s=0)
        assert cl.adapters.require(adapter.served_name).status == "registered"
        cl.adapters.promote(adapter.served_name, actor="ops", force=True, drain_s=0)
        assert cl.adapters.require(adapter.served_name).status == "active"
        with audit_inserts_fail(run), pytest.raises(AuditError):
            cl.adapters.retire(adapter.served_name, actor="ops")
        assert cl.adapters.require(adapter.served_name).status == "active"
        actions = [r.action for r in cl.audit.records(kind="admin")]
        assert actions.count("adapter.register") == 1 and actions.count("adapter.promote") == 1
        assert "adapter.retire" not in actions
    finally:
        cl.close()


# -- item 6: keys die with their principal ----------------------------------------------------------
@pytest.mark.e2e
def test_a_key_dies_with_the_principal_it_was_issued_to(server: Server):
    admin = _h(server.keys["admin"])

    def put(user: str, groups: list[str]) -> None:
        r = httpx.put(f"{server.url}/v1/admin/principals", headers=admin, json={"user": user, "groups": groups},
                      timeout=30)
        assert r.status_code == 200, r.text

    def new_key(user: str) -> str:
        r = httpx.post(f"{server.url}/v1/admin/keys", headers=admin, json={"user": user}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["key"]

    # behind citeline's back: the row deleted and re-created with more access (a re-import, raw SQL)
    put("erin", ["staff"])
    erin_old = new_key("erin")
    assert _key_works(server, erin_old) == 200
    server.owner_sql("DELETE FROM principals WHERE user_id = 'erin'")
    server.owner_sql("INSERT INTO principals (user_id, groups, team, tokens) VALUES"
                     " ('erin', '{staff,hr}', NULL, '{u:erin,g:staff,g:hr}')")
    assert _key_works(server, erin_old) == 401

    # through the admin API: removal revokes the key (audited), re-creation does not bring it back
    put("dana", ["staff"])
    dana_old = new_key("dana")
    assert _key_works(server, dana_old) == 200
    r = httpx.delete(f"{server.url}/v1/admin/principals/dana", headers=admin, timeout=30)
    assert r.status_code == 200 and r.json()["revoked_keys"] == [_key_id(dana_old)], r.text
    assert _key_works(server, dana_old) == 401
    put("dana", ["staff", "hr", "engineering"])
    assert _key_works(server, dana_old) == 401
    dana_new = new_key("dana")
    assert _key_works(server, dana_new) == 200
    (row,) = server.owner_sql("SELECT payload FROM audit_log WHERE action = 'principal.remove' ORDER BY id DESC"
                              " LIMIT 1")
    assert row[0]["user"] == "dana" and row[0]["revoked_keys"] == [_key_id(dana_old)]
    assert httpx.delete(f"{server.url}/v1/admin/principals/nobody", headers=admin, timeout=30).status_code == 404
    # changing a principal's groups keeps its keys (the same principal)
    put("dana", ["staff"])
    assert _key_works(server, dana_new) == 200
    # the server generated the audit key in its data folder and never logs it
    secret = (server.config.parent / ".citeline" / "audit.key").read_text().strip()
    assert len(secret) >= 32 and secret not in server.log.read_text()


@pytest.mark.integration
def test_import_that_recreates_a_removed_principal_does_not_revive_its_keys(fresh, tmp_path: Path):
    cl, _ = fresh
    cl.admin.add_principal(Principal("hana", ("staff",)), actor="ops")
    old = cl.admin.create_key("hana", actor="ops")
    assert cl.admin.remove_principal("hana", actor="ops")
    people = tmp_path / "people.toml"
    people.write_text('[[principals]]\nuser = "hana"\ngroups = ["staff", "hr"]\n')
    cl.admin.import_principals(people, actor="ops")
    with pytest.raises(AuthError):
        cl.keys.authenticate(old.secret)


# -- item 8: a keyed chain and a signed anchor ---------------------------------------------------------
@pytest.mark.integration
def test_a_writer_login_cannot_append_a_correctly_hashed_row(fresh):
    cl, _ = fresh
    _some_admin_rows(cl)
    ns, url = cl.namespace, cl.db.url
    (last_id, last_hash), = _owner(url, ns, "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1",
                                   role="citeline_writer")
    (fake_id, at), = _owner(url, ns, "SELECT nextval(pg_get_serial_sequence('audit_log', 'id')),"
                            " date_trunc('microseconds', clock_timestamp())", role="citeline_writer")
    payload = {"key_id": "forged000000", "user": "mallory", "admin": True, "label": ""}
    digest = plain_sha(last_hash, fake_id, at, "admin", "ops", None, "key.create", payload)
    _owner(url, ns, "INSERT INTO audit_log (id, at, kind, principal, team, action, payload, prev_hash, hash)"
           " VALUES (%s, %s, 'admin', 'ops', NULL, 'key.create', %s::jsonb, %s, %s)",
           fake_id, at, json.dumps(payload), last_hash, digest, role="citeline_writer")
    report = cl.audit.verify()
    assert not report.ok
    assert any(f"row {fake_id}" in p for p in report.problems), report.problems


@pytest.mark.integration
def test_an_edit_rechained_with_plain_sha_is_detected(fresh):
    cl, _ = fresh
    _some_admin_rows(cl, 5)
    ns, url = cl.namespace, cl.db.url
    rows = _owner(url, ns, "SELECT id, at, kind, principal, team, action, payload FROM audit_log ORDER BY id")
    edited = rows[2][0]
    prev = GENESIS
    for id_, at, kind, principal, team, action, payload in rows:
        if id_ == edited:
            payload = {**payload, "groups": ["staff", "hr", "finance"]}
        digest = plain_sha(prev, id_, at, kind, principal, team, action, payload)
        _owner(url, ns, "UPDATE audit_log SET payload = %s::jsonb, prev_hash = %s, hash = %s WHERE id = %s",
               json.dumps(payload), prev, digest, id_)
        prev = digest
    report = cl.audit.verify()
    assert not report.ok
    assert any(f"row {rows[0][0]}" in p for p in report.problems), report.problems  # the first re-chained row


@pytest.mark.integration
def test_rows_from_before_the_key_still_verify_and_are_reported_as_legacy(fresh):
    cl, _ = fresh
    ns, url = cl.namespace, cl.db.url
    prev = GENESIS
    for i in range(3):  # rows an older citeline wrote with the unkeyed hash
        (id_, at), = _owner(url, ns, "SELECT nextval(pg_get_serial_sequence('audit_log', 'id')),"
                            " date_trunc('microseconds', clock_timestamp())")
        digest = plain_sha(prev, id_, at, "ask", "alice", None, "answer", {"n": i})
        _owner(url, ns, "INSERT INTO audit_log (id, at, kind, principal, team, action, payload, prev_hash, hash)"
               " VALUES (%s, %s, 'ask', 'alice', NULL, 'answer', %s::jsonb, %s, %s)", id_, at,
               json.dumps({"n": i}), prev, digest)
        prev = digest
    # what migration 0005 records on an existing log: the rows up to here predate the key
    _owner(url, ns, "UPDATE audit_meta SET legacy_until = (SELECT max(id) FROM audit_log)")
    _some_admin_rows(cl, 2)
    report = cl.audit.verify()
    assert report.ok, report.problems
    assert report.rows == 5 and report.legacy_rows == 3


@pytest.mark.integration
@pytest.mark.slow
def test_cli_anchor_catches_a_truncated_tail_and_the_key_never_shows(fresh):
    cl, env = fresh
    _some_admin_rows(cl, 6)
    key_file = cl.settings.home / "audit.key"
    assert key_file.is_file() and (key_file.stat().st_mode & 0o777) == 0o600
    secret = key_file.read_text().strip()
    anchor = cl.settings.home.parent / "anchor.json"
    outputs = []

    made = _cli(env, "audit", "anchor", "--output", str(anchor))
    outputs.append(made)
    assert made.returncode == 0, made.stderr
    head = json.loads(anchor.read_text())
    assert head["rows"] == 6 and head["signature"]
    ok = _cli(env, "audit", "verify", "--anchor", str(anchor), "--json")
    outputs.append(ok)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert json.loads(ok.stdout)["ok"] is True
    outputs.append(_cli(env, "audit", "export"))

    # a forged anchor (edited, or signed with another key) is refused
    forged = cl.settings.home.parent / "forged.json"
    forged.write_text(json.dumps({**head, "rows": head["rows"] - 2}))
    bad = _cli(env, "audit", "verify", "--anchor", str(forged))
    outputs.append(bad)
    assert bad.returncode == 1 and "signature" in (bad.stdout + bad.stderr)

    # the owner cuts the tail (the anchored row included): the chain alone still looks fine, the anchor does not
    _owner(cl.db.url, cl.namespace, "DELETE FROM audit_log WHERE id >= %s", head["id"] - 1)
    plain = _cli(env, "audit", "verify")
    outputs.append(plain)
    assert plain.returncode == 0  # a shorter chain is a valid chain: why the anchor exists
    cut = _cli(env, "audit", "verify", "--anchor", str(anchor))
    outputs.append(cut)
    assert cut.returncode == 1
    assert f"row {head['id']}" in cut.stdout + cut.stderr, cut.stderr

    for done in outputs:
        assert secret not in done.stdout and secret not in done.stderr
    assert secret not in anchor.read_text()
