"""The ``[auth.oidc]`` settings, the signed session cookie and the one-use login states (no provider needed: the
flow against a real OpenID provider is tests/e2e/test_oidc.py)."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from citeline.auth_settings import AuthSettings, OidcSettings
from citeline.domain import Principal
from citeline.errors import AuthError, ConfigError
from citeline.facade import Authenticated
from citeline.serving.auth_oidc import OidcClient, PendingLogins, Sessions
from citeline.settings import Settings

pytestmark = pytest.mark.unit

BASE = {"issuer": "https://idp.example.com/", "client_id": "citeline",
        "redirect_url": "https://citeline.example.com/auth/callback"}


def _settings(**over: object) -> OidcSettings:
    return OidcSettings.model_validate({**BASE, **over})


def test_settings_from_the_environment_and_their_refusals(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CITELINE_AUTH__OIDC__ISSUER", "https://acme.okta.com/oauth2/default")
    monkeypatch.setenv("CITELINE_AUTH__OIDC__CLIENT_ID", "0oa1")
    monkeypatch.setenv("CITELINE_AUTH__OIDC__CLIENT_SECRET", "s3cret-value")
    monkeypatch.setenv("CITELINE_AUTH__OIDC__REDIRECT_URL", "https://c.example/auth/callback")
    monkeypatch.chdir(tmp_path)
    oidc = Settings.load().auth.oidc
    assert oidc is not None and oidc.secret() == "s3cret-value" and "s3cret" not in repr(oidc)
    assert Settings.model_fields["auth"].default == AuthSettings()  # unset: API keys only
    assert _settings().issuer == "https://idp.example.com"  # compared without the trailing slash
    with pytest.raises(ValidationError, match="https://"):
        _settings(issuer="http://idp.example.com")  # plain http only on localhost
    assert _settings(issuer="http://127.0.0.1:9000").issuer == "http://127.0.0.1:9000"
    with pytest.raises(ValidationError, match="32 characters"):
        _settings(session_key="short")
    with pytest.raises(ValidationError, match="not both"):
        _settings(client_secret="a", client_secret_file=tmp_path / "s")
    with pytest.raises(ConfigError, match="client_secret_file"):
        _settings(client_secret_file=tmp_path / "missing").secret()
    (tmp_path / "secret").write_text("from-a-file\n")
    assert _settings(client_secret_file=tmp_path / "secret").secret() == "from-a-file"


def _sessions(clock: list[float], **over: object) -> Sessions:
    def lookup(user: str, sid: str) -> Authenticated:
        return Authenticated(f"session:{sid[:12]}", Principal(user, ("eng",)), False)

    return Sessions(_settings(session_key="k" * 32, session_lifetime_s=60, **over), lookup, clock=lambda: clock[0])


def test_session_cookie_is_signed_expires_and_logs_out() -> None:
    clock = [1000.0]
    sessions = _sessions(clock)
    cookie = sessions.issue("alice")
    assert sessions.secure  # the redirect URL is https: the cookie is Secure
    who = sessions.authenticate(cookie)
    assert who.principal.user == "alice" and who.key_id.startswith("session:")
    body, _, mac = cookie.partition(".")
    forged = base64.urlsafe_b64encode(json.dumps({**json.loads(base64.urlsafe_b64decode(body + "==")),
                                                  "u": "root"}).encode()).rstrip(b"=").decode()
    for bad in (f"{forged}.{mac}", cookie[:-2] + "xx", "garbage", ""):
        with pytest.raises(AuthError, match="invalid session"):
            sessions.authenticate(bad)
    other = Sessions(_settings(session_key="j" * 32), sessions._lookup)  # another server's key
    with pytest.raises(AuthError, match="invalid session"):
        other.authenticate(cookie)
    with pytest.raises(AuthError, match="another origin"):
        sessions.authenticate(cookie, "POST", "https://evil.example", "citeline.example.com")
    assert sessions.authenticate(cookie, "POST", "https://citeline.example.com", "citeline.example.com")
    second = sessions.issue("alice")
    sessions.end(cookie)
    with pytest.raises(AuthError, match="logged out"):
        sessions.authenticate(cookie)
    assert sessions.authenticate(second)  # only that session ended
    clock[0] += 61
    with pytest.raises(AuthError, match="expired"):
        sessions.authenticate(second)


def test_login_state_is_used_once_and_expires() -> None:
    now = [0.0]
    pending = PendingLogins(ttl_s=10, max_pending=2, clock=lambda: now[0])
    state, started = pending.start("/admin")
    assert pending.take(state) == started
    with pytest.raises(AuthError, match="already used"):
        pending.take(state)
    late, _ = pending.start("/")
    now[0] = 11
    with pytest.raises(AuthError, match="too long"):
        pending.take(late)
    states = [pending.start("/")[0] for _ in range(3)]
    with pytest.raises(AuthError):
        pending.take(states[0])  # the oldest was dropped: at most max_pending kept


def test_identity_from_claims() -> None:
    client = OidcClient(_settings(groups_claim="roles"))
    assert client.identity({"sub": "u1", "roles": ["eng", "ops"]}).groups == ("eng", "ops")
    assert client.identity({"sub": "u1"}).groups == ()
    with pytest.raises(AuthError, match="not a list"):
        client.identity({"sub": "u1", "roles": [1]})
    with pytest.raises(AuthError, match="overage"):
        client.identity({"sub": "u1", "_claim_names": {"roles": "src1"}})
    by_mail = OidcClient(_settings(principal_claim="email"))
    assert by_mail.identity({"sub": "u1", "email": "a@example.com"}).user == "a@example.com"
    with pytest.raises(AuthError, match="not verified"):
        by_mail.identity({"sub": "u1", "email": "a@example.com", "email_verified": False})
    with pytest.raises(AuthError, match="no email claim"):
        by_mail.identity({"sub": "u1"})
