"""The ldap principal source against a REAL OpenLDAP (slapd started by the test) and the real embedded PostgreSQL.

Users and group memberships sync into principals; a user removed from the directory loses access and its keys
on the next sync, a user removed from a group loses that group; an unchanged directory writes nothing (not even
an audit row); a directory that is down, refuses the bind or returns garbage changes nothing; principals added
by hand are never taken over. The source also runs the principal-source contract suite.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from typer.testing import CliRunner

from citeline.cli import app as cli_app
from citeline.contracts.principal_source import Listing
from citeline.db import Database
from citeline.domain import Principal
from citeline.errors import AuthError, ConfigError, PrincipalError
from citeline.facade import Citeline
from citeline.identity.ldap import LdapSource
from citeline.settings import Settings
from citeline.testing.principal_sources import PrincipalSourceContract
from tests.support.slapd import BASE, ROOT_DN, ROOT_PW, Slapd, slapd_server

pytestmark = pytest.mark.integration

PW_ENV = "CITELINE_TEST_LDAP_BIND_PW"
USERS = {"alice": "support", "bob": None, "carol": "platform"}
GROUPS = {"eng": ["alice", "carol"], "hr": ["bob"], "staff": ["alice", "bob", "carol"]}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    os.environ[PW_ENV] = ROOT_PW
    yield from slapd_server(tmp_path_factory, USERS, GROUPS)


def _config(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "bind_dn": ROOT_DN, "bind_password_env": PW_ENV, "user_base_dn": f"ou=people,{BASE}",
            "group_base_dn": f"ou=groups,{BASE}", "team_attribute": "departmentNumber", "timeout_s": 3, **extra}


def _admin(slapd: Slapd) -> ldap3.Connection:
    return ldap3.Connection(ldap3.Server(slapd.url), ROOT_DN, ROOT_PW, auto_bind=True, raise_exceptions=True)


class TestLdapContract(PrincipalSourceContract):
    @pytest.fixture
    def source(self, slapd: Slapd) -> LdapSource:
        return LdapSource(LdapSource.Config(**_config(slapd.url)), source="corp")  # type: ignore[arg-type]

    @pytest.fixture
    def broken_source(self, slapd: Slapd) -> LdapSource:
        return LdapSource(LdapSource.Config(**_config(f"ldap://127.0.0.1:{slapd.port + 1}")),  # type: ignore[arg-type]
                          source="corp")

    @pytest.fixture
    def expected(self) -> Listing:
        return Listing.of([Principal("alice", ("eng", "staff"), "support"), Principal("bob", ("hr", "staff")),
                           Principal("carol", ("eng", "staff"), "platform")])


def _toml(root: Path, pg_url: str, namespace: str, url: str, *, adopt: bool = False, **extra: object) -> Path:
    cfg = ", ".join(f"{k} = {json.dumps(v)}" for k, v in _config(url, **extra).items())
    path = root / f"citeline-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f'home = "{root / "home"}"\ndatabase_url = "{pg_url}"\n[database]\nnamespace = "{namespace}"\n\n'
                    f'[[principal_sources]]\nname = "corp"\nkind = "ldap"\nschedule = "@daily"\n'
                    f"adopt = {'true' if adopt else 'false'}\n"
                    f"config = {{ {cfg} }}\n")
    return path


@pytest.fixture
def world(slapd: Slapd, pg_url: str, tmp_path: Path) -> Iterator[tuple[Citeline, Path]]:
    namespace = f"ldap_{uuid.uuid4().hex[:10]}"
    Database(pg_url, namespace=namespace, embedding_dim=384).close()  # an index: admin work needs no model
    config = _toml(tmp_path, pg_url, namespace, slapd.url)
    try:
        with Citeline(Settings.load(config)) as cl:
            yield cl, config
    finally:
        db = Database(pg_url, namespace=namespace, embedding_dim=384)
        db.close()
        db.drop_namespace()
        _restore(slapd)


def _restore(slapd: Slapd) -> None:
    """Put the directory back as the module started it (tests change it)."""
    with _admin(slapd) as conn:
        for uid, dept in USERS.items():
            dn = f"uid={uid},ou=people,{BASE}"
            try:
                conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE)
            except ldap3.core.exceptions.LDAPNoSuchObjectResult:
                attrs = {"uid": uid, "cn": uid, "sn": uid, **({"departmentNumber": dept} if dept else {})}
                conn.add(dn, ["inetOrgPerson"], attrs)
        for cn, members in GROUPS.items():
            conn.modify(f"cn={cn},ou=groups,{BASE}", {"member": [(ldap3.MODIFY_REPLACE,
                                                                  [f"uid={m},ou=people,{BASE}" for m in members])]})
        conn.search(f"ou=people,{BASE}", "(objectClass=inetOrgPerson)", attributes=["uid"])
        for entry in list(conn.entries):
            if entry.entry_dn.split(",")[0].split("=")[1] not in USERS:
                conn.delete(entry.entry_dn)


def _audit_count(cl: Citeline) -> int:
    return sum(1 for _ in cl.audit.records())


def test_sync_adds_principals_and_an_unchanged_directory_writes_nothing(world):
    cl, _ = world
    done = cl.principal_sources.sync("corp", actor="test")
    assert [p.user for p in done.added] == ["alice", "bob", "carol"] and not done.removed
    assert cl.principals.get("alice") == Principal("alice", ("eng", "staff"), "support")
    rows = [r for r in cl.audit.records() if r.action == "principal_source.sync"]
    assert len(rows) == 1 and rows[0].payload["added"] == ["alice", "bob", "carol"]
    before = _audit_count(cl)
    with cl.db.writer() as conn:
        stamps = conn.execute("SELECT user_id, updated_at FROM principals ORDER BY 1").fetchall()
    again = cl.principal_sources.sync("corp", actor="test")
    assert again.empty and _audit_count(cl) == before  # nothing written, not even an audit row
    with cl.db.writer() as conn:
        assert conn.execute("SELECT user_id, updated_at FROM principals ORDER BY 1").fetchall() == stamps
    assert cl.audit.verify().ok


def test_a_removed_user_loses_access_and_keys_and_a_removed_membership_its_group(world, slapd):
    cl, _ = world
    cl.principal_sources.sync("corp", actor="test")
    carol = cl.admin.create_key("carol", actor="test").secret
    alice = cl.admin.create_key("alice", actor="test").secret
    with _admin(slapd) as conn:
        conn.delete(f"uid=carol,ou=people,{BASE}")
        conn.modify(f"cn=eng,ou=groups,{BASE}", {"member": [(ldap3.MODIFY_DELETE, [f"uid=alice,ou=people,{BASE}"])]})
    done = cl.principal_sources.sync("corp", actor="test")
    assert done.removed == ("carol",) and [p.user for p in done.updated] == ["alice"]
    assert len(done.revoked_keys) == 1
    with pytest.raises(AuthError):
        cl.keys.authenticate(carol)
    with pytest.raises(PrincipalError):
        cl.principals.get("carol")
    assert cl.keys.authenticate(alice).principal.groups == ("staff",)  # alice keeps her key, without eng
    row = [r for r in cl.audit.records() if r.action == "principal_source.sync"][-1]
    assert row.payload["removed"] == ["carol"] and row.payload["revoked_keys"] == done.revoked_keys


def test_principals_added_by_hand_are_never_taken_over(world, slapd):
    cl, _ = world
    cl.admin.add_principal(Principal("bob", ("board",)), actor="test")
    done = cl.principal_sources.sync("corp", actor="test")
    assert done.conflicts == ("bob",) and "bob" not in [p.user for p in done.added + done.updated]
    assert cl.principals.get("bob").groups == ("board",)
    with _admin(slapd) as conn:
        conn.delete(f"uid=bob,ou=people,{BASE}")
    cl.principal_sources.sync("corp", actor="test")
    assert cl.principals.get("bob").groups == ("board",)  # not the source's to remove either


def test_adopt_takes_over_principals_no_source_manages(world, slapd, pg_url, tmp_path):
    cl, _ = world
    cl.admin.add_principal(Principal("bob", ("board",)), actor="test")  # e.g. created at an OIDC sign-in
    key = cl.admin.create_key("bob", actor="test").secret
    with Citeline(Settings.load(_toml(tmp_path, pg_url, cl.namespace, slapd.url, adopt=True))) as adopting:
        done = adopting.principal_sources.sync("corp", actor="test")
        assert done.adopted == ("bob",) and cl.principals.get("bob").groups == ("hr", "staff")
        assert cl.keys.authenticate(key).principal.groups == ("hr", "staff")  # same incarnation: the key stays
        with _admin(slapd) as conn:
            conn.delete(f"uid=bob,ou=people,{BASE}")
        assert adopting.principal_sources.sync("corp", actor="test").removed == ("bob",)
    with pytest.raises(AuthError):
        cl.keys.authenticate(key)


def _unchanged_after(cl: Citeline, fn) -> BaseException:
    with cl.db.writer() as conn:
        before = conn.execute("SELECT user_id, groups, team FROM principals ORDER BY 1").fetchall()
    count = _audit_count(cl)
    with pytest.raises((PrincipalError, ConfigError)) as caught:
        fn()
    with cl.db.writer() as conn:
        assert conn.execute("SELECT user_id, groups, team FROM principals ORDER BY 1").fetchall() == before
    assert _audit_count(cl) == count
    return caught.value


def test_a_directory_that_is_down_refuses_the_bind_or_returns_garbage_changes_nothing(world, slapd, pg_url, tmp_path):
    cl, _ = world
    cl.principal_sources.sync("corp", actor="test")
    ns = cl.namespace

    def sync_with(url: str, **extra: object) -> None:
        with Citeline(Settings.load(_toml(tmp_path, pg_url, ns, url, **extra))) as other:
            other.principal_sources.sync("corp", actor="test")

    err = _unchanged_after(cl, lambda: sync_with(f"ldap://127.0.0.1:{slapd.port + 1}"))
    assert "cannot read the directory" in str(err)
    os.environ["CITELINE_TEST_LDAP_WRONG"] = "not-the-password"
    err = _unchanged_after(cl, lambda: sync_with(slapd.url, bind_password_env="CITELINE_TEST_LDAP_WRONG"))
    assert "invalidCredentials" in str(err) and "not-the-password" not in str(err)  # no secret in the message
    err = _unchanged_after(cl, lambda: sync_with(slapd.url, max_group_members=2))  # staff has 3: a huge group
    assert "max_group_members" in str(err)
    err = _unchanged_after(cl, lambda: sync_with(slapd.url, user_base_dn=f"ou=nowhere,{BASE}"))
    assert "noSuchObject" in str(err)
    with _admin(slapd) as conn:  # garbage: a person without the naming attribute, a group name with a space
        conn.add(f"cn=ghost,ou=people,{BASE}", ["inetOrgPerson"], {"cn": "ghost", "sn": "ghost"})
    err = _unchanged_after(cl, lambda: cl.principal_sources.sync("corp", actor="test"))
    assert "has no 'uid'" in str(err)
    with _admin(slapd) as conn:
        conn.delete(f"cn=ghost,ou=people,{BASE}")
        conn.add(f"uid=eve x,ou=people,{BASE}", ["inetOrgPerson"], {"uid": "eve x", "cn": "eve", "sn": "eve"})
    err = _unchanged_after(cl, lambda: cl.principal_sources.sync("corp", actor="test"))
    assert "unusable entry" in str(err)


def test_unknown_source_and_bad_config_are_clear_errors(world, pg_url, tmp_path, slapd):
    cl, _ = world
    with pytest.raises(ConfigError, match=r"unknown principal source 'nope' \(known: corp\)"):
        cl.principal_sources.sync("nope", actor="test")
    with Citeline(Settings.load(_toml(tmp_path, pg_url, cl.namespace, slapd.url, url_typo=1))) as other:
        with pytest.raises(ConfigError, match=r"principal_sources.corp.config.url_typo"):
            other.principal_sources.sync("corp", actor="test")


def test_cli_principals_sync(world, slapd):
    cl, config = world
    runner = CliRunner()
    out = runner.invoke(cli_app, ["principals", "sync", "--source", "corp", "--config", str(config), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["added"] == ["alice", "bob", "carol"]
    out = runner.invoke(cli_app, ["principals", "sync", "--source", "corp", "--config", str(config)])
    assert out.exit_code == 0 and "unchanged" in out.output
    out = runner.invoke(cli_app, ["principals", "sync", "--source", "nope", "--config", str(config)])
    assert out.exit_code == 1 and "unknown principal source" in out.output


def test_the_scheduler_syncs_a_scheduled_principal_source(world, slapd):
    cl, _ = world
    sched = cl.sources.scheduler(tick_s=1)  # no document source is scheduled here: the principal source is
    (result,) = sched.run_pending()
    assert (result.source, result.outcome.value) == ("principals:corp", "succeeded") and result.next_run
    assert [p.user for p in cl.principals.list()] == ["alice", "bob", "carol"]
    assert sched.run_pending() == []  # not due again before its next slot (@daily)
    rows = [r for r in cl.audit.records() if r.action == "principal_source.sync"]
    assert len(rows) == 1 and rows[0].principal == "scheduler"


def test_an_empty_listing_does_not_remove_everyone(world, slapd, pg_url, tmp_path):
    cl, _ = world
    cl.principal_sources.sync("corp", actor="test")

    def sync_with(**extra: object) -> None:
        with Citeline(Settings.load(_toml(tmp_path, pg_url, cl.namespace, slapd.url, **extra))) as other:
            other.principal_sources.sync("corp", actor="test")

    err = _unchanged_after(cl, lambda: sync_with(user_filter="(uid=nobody-matches)"))
    assert "listed no users; refusing to remove the 3 principals" in str(err)
    os.environ["CITELINE_TEST_LDAP_EMPTY"] = ""
    err = _unchanged_after(cl, lambda: sync_with(bind_password_env="CITELINE_TEST_LDAP_EMPTY"))
    assert "CITELINE_TEST_LDAP_EMPTY" in str(err)
