"""The scim principal source's listing (what the identity provider pushed) held to the principal-source contract,
and a sync that repairs a SCIM-managed principal edited by hand; real embedded PostgreSQL, no model."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from citeline.access.audit import AuditLog
from citeline.contracts.principal_source import Listing
from citeline.db import Database
from citeline.domain import Principal
from citeline.identity.scim import ScimSource
from citeline.operations.principal_sources import PrincipalSources
from citeline.operations.scim import Scim
from citeline.settings import Settings
from citeline.testing.principal_sources import PrincipalSourceContract

pytestmark = pytest.mark.integration


@pytest.fixture
def world(pg_url: str, tmp_path) -> Iterator[tuple[Database, PrincipalSources, Scim]]:
    os.environ.setdefault("CITELINE_SCIM_TOKEN", "integration-test-token-0123456789abcdef")
    db = Database(pg_url, namespace=f"scim_{uuid.uuid4().hex[:10]}", embedding_dim=384)
    audit = AuditLog(db, b"k" * 32)
    sources = PrincipalSources(Settings(home=tmp_path, principal_sources=[{"name": "idp", "kind": "scim"}]), db,
                               lambda: audit)
    scim = Scim(db, lambda: audit, sources)
    ann = scim.create_user({"userName": "ann@acme.example"}, actor="test")
    ben = scim.create_user({"userName": "ben@acme.example"}, actor="test")
    scim.create_user({"userName": "cy@acme.example", "active": False}, actor="test")
    scim.create_group({"displayName": "Field Ops", "members": [{"value": ann["id"]}, {"value": ben["id"]}]},
                      actor="test")
    try:
        yield db, sources, scim
    finally:
        db.close()
        db.drop_namespace()


class TestScimContract(PrincipalSourceContract):
    @pytest.fixture
    def source(self, world) -> ScimSource:
        return world[1].build("idp")

    @pytest.fixture
    def broken_source(self, pg_url) -> ScimSource:
        db = Database(pg_url, namespace=f"scim_{uuid.uuid4().hex[:10]}", embedding_dim=384)
        db.close()
        db.drop_namespace()  # a closed pool over a dropped namespace: nothing can be read
        return ScimSource(ScimSource.Config(), source="idp", db=db)

    @pytest.fixture
    def expected(self) -> Listing:
        return Listing.of([Principal("ann@acme.example", ("Field-Ops",)),
                           Principal("ben@acme.example", ("Field-Ops",))])  # cy is inactive: no principal


def test_a_sync_repairs_a_scim_principal_edited_by_hand(world) -> None:
    db, sources, _ = world
    with db.writer() as conn:
        conn.execute("UPDATE principals SET groups = '{admins}' WHERE user_id = 'ann@acme.example'")
    done = sources.sync("idp", actor="test")
    assert [p.user for p in done.updated] == ["ann@acme.example"]
    with db.writer() as conn:
        assert conn.execute("SELECT groups FROM principals WHERE user_id = 'ann@acme.example'").fetchone()[0] \
            == ["Field-Ops"]
    assert sources.sync("idp", actor="test").empty


def test_each_change_reconciles_exactly_the_users_it_touches(world) -> None:
    db, _, scim = world
    ann = scim.list_users('userName eq "ann@acme.example"', None, None)[1][0]
    ops = scim.create_group({"displayName": "ops", "members": [{"value": ann["id"]}]}, actor="test")

    def principals() -> dict[str, list[str]]:
        with db.writer() as conn:
            return dict(conn.execute("SELECT user_id, groups FROM principals ORDER BY 1").fetchall())

    assert principals() == {"ann@acme.example": ["Field-Ops", "ops"], "ben@acme.example": ["Field-Ops"]}
    scim.delete_group(ops["id"], actor="test")  # ann keeps her other group
    assert principals()["ann@acme.example"] == ["Field-Ops"]
    key = None
    with db.writer() as conn:  # a key for ann, to see it die when the name she had goes away
        conn.execute("INSERT INTO api_keys (key_id, secret_hash, user_id, principal_incarnation) SELECT 'annkey000000',"
                     " 'x', user_id, incarnation FROM principals WHERE user_id = 'ann@acme.example'")
        key = "annkey000000"
    scim.replace_user(ann["id"], {"userName": "ann.smith@acme.example", "active": True}, actor="test")  # renamed
    assert principals() == {"ann.smith@acme.example": ["Field-Ops"], "ben@acme.example": ["Field-Ops"]}
    with db.writer() as conn:
        assert conn.execute("SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = %s", (key,)).fetchone()[0]
    cy = scim.list_users('userName eq "cy@acme.example"', None, None)[1][0]
    scim.patch_user(cy["id"], [{"op": "replace", "path": "active", "value": True}], actor="test")
    assert principals()["cy@acme.example"] == []
