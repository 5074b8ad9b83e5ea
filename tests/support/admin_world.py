"""The admin API tests' world: a real citeline (embedded PostgreSQL, real embedder, a folder source with eng, hr
and public documents), its app under the official TestClient, an admin key (root) and a user's (alice)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from psycopg import sql

from citeline.domain import Principal
from citeline.facade import Citeline
from citeline.serving.app import create_app
from citeline.settings import Settings

__all__ = ["World", "admin_world", "audit_inserts_fail"]

DOCS = {
    "eng.md": "---\naccess: {groups: [eng]}\n---\n# Rollbacks\n\nRoll back the payments service with "
              "`deployctl rollback payments`; the on-call engineer approves it.\n",
    "hr.md": "---\naccess: {groups: [hr]}\n---\n# Salaries\n\nSalary bands are reviewed every March by the "
             "compensation committee.\n",
    "open.md": "---\naccess: {public: true}\n---\n# Holidays\n\nThe office is closed on the first of January.\n",
}


class World:
    def __init__(self, cl: Citeline, client: TestClient, pg_url: str, folder: Path, config: Path) -> None:
        self.cl, self.client, self.pg_url, self.folder, self.config = cl, client, pg_url, folder, config
        self.admin = cl.admin.create_key("root", actor="test", admin=True).secret
        self.alice = cl.admin.create_key("alice", actor="test").secret

    def h(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin}", **extra}

    def owner_sql(self, query: str) -> None:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.cl.namespace)))
            conn.execute(query)  # type: ignore[arg-type]

    def rows(self, action: str) -> list[Any]:
        return [r for r in self.cl.audit.records() if r.action == action]


def admin_world(pg_url: str, embedder: Any, tmp_path_factory: Any) -> Iterator[World]:
    root = tmp_path_factory.mktemp("admin_api")
    folder = root / "wiki"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    namespace = f"adm_{uuid.uuid4().hex[:10]}"
    config = root / "citeline.toml"
    config.write_text(f'home = "{root / "home"}"\ndatabase_url = "{pg_url}"\n\n[database]\nnamespace = "{namespace}"\n'
                      '\n[generation]\nbackend = "extractive"\n\n[answer]\nmin_score = -1.0\n\n'
                      '[server]\nauth_failure_burst = 1000\n\n'
                      f'[[sources]]\nname = "wiki"\nconnector = "folder"\nconfig = {{ path = "{folder}" }}\n'
                      'schedule = "@hourly"\n')
    try:
        with Citeline(Settings.load(config), embedder=embedder) as cl:
            cl.sync()
            for p in (Principal("root", ("ops",)), Principal("alice", ("eng",), "support"), Principal("bob", ("hr",))):
                cl.admin.add_principal(p, actor="test")
            with TestClient(create_app(cl)) as client:
                yield World(cl, client, pg_url, folder, config)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


@contextlib.contextmanager
def audit_inserts_fail(w: World) -> Iterator[None]:
    """Every INSERT into audit_log raises (a trigger the owner installs), as when the audit store is down."""
    w.owner_sql("CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'audit storage offline (test)'; END $$")
    w.owner_sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_audit()")
    try:
        yield
    finally:
        w.owner_sql("DROP TRIGGER refuse_audit ON audit_log")
        w.owner_sql("DROP FUNCTION refuse_audit()")
