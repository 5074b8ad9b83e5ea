"""The principal_sources extension point without services: registration, typed configs, the SCIM token, the
listing's promises, the settings tables, an LDAP server that is not there, and the scheduler's jobs."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citeline import plugins
from citeline.contracts.principal_source import Listing, PrincipalSource
from citeline.domain import Principal
from citeline.errors import ConfigError, PrincipalError
from citeline.identity.ldap import LdapSource
from citeline.identity.scim import ScimSource, mapped_name
from citeline.ingest.scheduler import Job, Outcome, Scheduler
from citeline.settings import Settings

pytestmark = pytest.mark.unit

GROUP = "citeline.principal_sources"
LDAP = {"url": "ldap://127.0.0.1:1", "user_base_dn": "ou=people,dc=x", "group_base_dn": "ou=groups,dc=x"}
TOKEN = "t" * 20 + "0123456789abcdefXYZ"


def test_builtins_are_entry_points_built_by_plugins_create():
    assert {"ldap", "scim"} <= set(plugins.available(GROUP))
    src = plugins.create(GROUP, "ldap", LDAP, section="principal_sources.corp.config", source="corp", db=None)
    assert isinstance(src, LdapSource) and isinstance(src, PrincipalSource) and src.name == "corp"
    assert isinstance(plugins.create(GROUP, "scim", {}, section="s", source="idp", db=None), ScimSource)


def test_bad_options_name_the_key_and_never_the_secret():
    with pytest.raises(ConfigError, match=r"principal_sources.corp.config.bind_pasword") as caught:
        plugins.create(GROUP, "ldap", {**LDAP, "bind_pasword": "hunter2-secret"}, section="principal_sources.corp.config",
                       source="corp")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"config.url"):
        plugins.create(GROUP, "ldap", {**LDAP, "url": "http://x"}, section="principal_sources.corp.config")
    with pytest.raises(ConfigError, match="not several"):
        plugins.create(GROUP, "ldap", {**LDAP, "bind_password": "a", "bind_password_env": "B"}, section="s")
    with pytest.raises(ConfigError, match="at least 32 random characters") as caught:
        plugins.create(GROUP, "scim", {"token": "changeme"}, section="s")
    assert "changeme" not in str(caught.value).replace("[s]", "")


def test_scim_token_from_env_or_file_compared_in_full(tmp_path: Path, monkeypatch):
    src = ScimSource(ScimSource.Config(token_env="T_SCIM"), source="idp")
    monkeypatch.delenv("T_SCIM", raising=False)
    with pytest.raises(ConfigError, match="set T_SCIM"):
        src.authenticate(TOKEN)
    monkeypatch.setenv("T_SCIM", "short")
    with pytest.raises(ConfigError, match="at least 32") as caught:
        src.token()
    assert "short" not in str(caught.value)
    monkeypatch.setenv("T_SCIM", TOKEN)
    assert src.authenticate(TOKEN) and src.authenticate(f" {TOKEN} ")
    for wrong in (None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "cl_abc"):
        assert not src.authenticate(wrong)
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert ScimSource(ScimSource.Config(token_file=tmp_path / "tok")).authenticate(TOKEN)


def test_listing_refuses_duplicates_and_sorts():
    with pytest.raises(ValueError, match="listed twice"):
        Listing.of([Principal("a"), Principal("a", ("g",))])
    assert Listing.of([Principal("b"), Principal("a")]).users() == ["a", "b"]


def test_scim_names_map_white_space_to_dashes():
    assert mapped_name("  Sales   Team ") == "Sales-Team" and mapped_name("alice@x.example") == "alice@x.example"


def test_ldap_that_is_not_there_is_an_error_not_an_empty_listing(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    src = LdapSource(LdapSource.Config(**{**LDAP, "url": f"ldap://127.0.0.1:{port}", "timeout_s": 2,
                                          "bind_dn": "cn=x", "bind_password_env": "T_LDAP_PW"}), source="corp")
    monkeypatch.delenv("T_LDAP_PW", raising=False)
    with pytest.raises(PrincipalError, match="T_LDAP_PW"):
        src.fetch()
    monkeypatch.setenv("T_LDAP_PW", "pw-not-shown-123")
    with pytest.raises(PrincipalError, match="cannot read the directory") as caught:
        src.fetch()
    assert "pw-not-shown-123" not in str(caught.value)


def test_settings_tables(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[principal_sources]]\nname = "corp"\nkind = "ldap"\nschedule = "@hourly"\n'
                   'config = { url = "ldap://x" }\n')
    (entry,) = Settings.load(cfg).principal_sources
    assert (entry.name, entry.kind, entry.schedule, entry.config) == ("corp", "ldap", "@hourly", {"url": "ldap://x"})
    cfg.write_text('[[principal_sources]]\nname = "Corp Dir"\nkind = "ldap"\n')
    with pytest.raises(Exception, match="principal source name"):
        Settings.load(cfg)


class _Host:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def db(self):  # no document source is scheduled: the scheduler never reads sync_runs
        raise AssertionError("not used")

    def sync(self, source=None, *, stop=None):
        raise AssertionError("not used")


def test_scheduler_runs_jobs_at_start_then_at_each_slot(tmp_path: Path):
    now = [datetime(2026, 1, 1, 10, 7, tzinfo=UTC)]
    runs: list[str] = []

    def job() -> str:
        runs.append("x")
        if len(runs) == 2:
            raise RuntimeError("directory down")
        return "unchanged"

    host = _Host(Settings())

    class _NoDb(Scheduler):
        def plan(self, now_=None):
            return dict(self._job_next)

    sched = _NoDb(host, clock=lambda: now[0], jobs=[Job("principals:corp", "*/15 * * * *", job)])
    (first,) = sched.run_pending()
    assert first.outcome is Outcome.SUCCEEDED and first.next_run == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    assert sched.run_pending() == []  # not due again before its slot
    now[0] += timedelta(minutes=8)
    (second,) = sched.run_pending()
    assert second.outcome is Outcome.FAILED and "directory down" in (second.error or "")
    assert second.next_run == datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(ConfigError, match="not a cron expression"):
        Scheduler(host, jobs=[Job("principals:corp", "every hour", job)])


def test_a_server_that_answers_garbage_is_an_error(monkeypatch):
    """Not LDAP on the other end (an HTTP server, a wrong port): PrincipalError, not a listing or a crash."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!" + bytes(range(256)))

    threading.Thread(target=answer, daemon=True).start()
    monkeypatch.setenv("T_LDAP_PW", "pw-not-shown-123")
    src = LdapSource(LdapSource.Config(**{**LDAP, "url": f"ldap://127.0.0.1:{port}", "timeout_s": 2,
                                          "bind_dn": "cn=x", "bind_password_env": "T_LDAP_PW"}), source="corp")
    try:
        with pytest.raises(PrincipalError, match="cannot read the directory") as caught:
            src.fetch()
        assert "pw-not-shown-123" not in str(caught.value)
    finally:
        server.close()


def test_an_empty_bind_password_is_refused_not_an_anonymous_bind(tmp_path: Path):
    (tmp_path / "pw").write_text("\n")
    src = LdapSource(LdapSource.Config(**{**LDAP, "bind_dn": "cn=citeline", "bind_password_file": tmp_path / "pw"}),
                     source="corp")
    with pytest.raises(PrincipalError, match="bind password is empty"):
        src.fetch()
