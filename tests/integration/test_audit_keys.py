"""The audit chain and API keys against the real database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from citeline.access.audit import GENESIS, AuditLog
from citeline.access.keys import KeyStore
from citeline.access.principals import PrincipalStore
from citeline.domain import Principal
from citeline.errors import AuditError, AuthError, PrincipalError

pytestmark = pytest.mark.integration

KEY = b"test-audit-key-0123456789abcdef0123"  # the chain's HMAC key (outside the database)


def owner(db, query: str, *args: object) -> None:
    with psycopg.connect(db.admin_url or db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(db.namespace)))
        conn.execute(query, args or None)  # type: ignore[arg-type]


def test_concurrent_appends_extend_one_valid_chain(db):
    log = AuditLog(db, KEY)

    def work(i: int) -> None:
        for j in range(10):
            log.append("ask", "answer", principal=f"u{i}", team="t", payload={"i": i, "j": j, "ms": 1.25 * j})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = list(log.records())
    assert len(records) == 60
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    report = log.verify()
    assert report.ok and report.rows == 60 and report.head == records[-1].hash


def test_verify_names_edited_and_deleted_rows(db):
    log = AuditLog(db, KEY)
    recs = [log.append("admin", "key.create", principal="ops", payload={"n": n}) for n in range(5)]
    owner(db, "UPDATE audit_log SET payload = '{\"n\": 99}' WHERE id = %s", recs[1].id)
    owner(db, "DELETE FROM audit_log WHERE id = %s", recs[3].id)
    report = log.verify()
    assert not report.ok
    assert any(f"row {recs[1].id}" in p and "edited" in p for p in report.problems)
    assert any(f"row {recs[4].id}" in p and "deleted" in p for p in report.problems)


def test_application_roles_cannot_update_or_delete_audit_rows(db):
    log = AuditLog(db, KEY)
    rec = log.append("admin", "x", principal="ops")
    for statement in ("UPDATE audit_log SET principal = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.writer() as conn:
            conn.execute(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.reader("alice") as conn:
        conn.execute("INSERT INTO audit_log (kind, action, prev_hash, hash) VALUES ('x', 'x', 'x', 'y')")
    assert log.verify().ok and [r.id for r in log.records()] == [rec.id]


def test_append_failure_raises_audit_error(db):
    owner(db, "REVOKE INSERT ON audit_log FROM citeline_writer")
    try:
        with pytest.raises(AuditError, match="withheld"):
            AuditLog(db, KEY).append("ask", "answer", principal="alice")
    finally:
        owner(db, "GRANT INSERT ON audit_log TO citeline_writer")


def test_export_since_and_formats(db):
    log = AuditLog(db, KEY)
    log.append("admin", "a", principal="ops", payload={"q": "comma, \"quote\""})
    lines = list(log.export("jsonl"))
    assert len(lines) == 1 and '"action": "a"' in lines[0]
    csv_text = "".join(log.export("csv"))
    assert csv_text.splitlines()[0] == "id,at,kind,principal,team,action,payload,prev_hash,hash"
    assert list(log.export("jsonl", since=datetime.now(UTC) + timedelta(hours=1))) == []
    with pytest.raises(AuditError):
        list(log.export("xml"))


def test_keys_authenticate_revoke_and_store_only_a_hash(db):
    PrincipalStore(db).put(Principal("alice", ("staff",), "support"))
    keys = KeyStore(db)
    new = keys.create("alice", label="laptop")
    who = keys.authenticate(new.secret)
    assert who.principal == Principal("alice", ("staff",), "support") and not who.is_admin
    with db.writer() as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys").fetchone()[0]
    assert new.secret.split("_", 2)[2] not in stored and len(stored) == 64
    tampered = new.secret[:-1] + ("A" if new.secret[-1] != "A" else "B")
    for bad in (None, "", "nonsense", tampered):
        with pytest.raises(AuthError):
            keys.authenticate(bad)
    assert keys.revoke(new.key.key_id) and not keys.revoke(new.key.key_id)
    with pytest.raises(AuthError, match="revoked"):
        keys.authenticate(new.secret)
    with pytest.raises(PrincipalError):
        keys.create("nobody")
    # groups are read at request time: a principal's new groups apply to existing keys at once
    newer = keys.create("alice")
    PrincipalStore(db).put(Principal("alice", ("staff", "hr"), "support"))
    assert set(keys.authenticate(newer.secret).principal.groups) == {"staff", "hr"}
