"""Sign-in with OpenID Connect against a real provider (npm ``oidc-provider``, :mod:`tests.support.oidc_provider`):
citeline's real app under uvicorn on a real port, the real embedded PostgreSQL and embedder, an HTTP client that
follows the redirects and posts the provider's login form as a browser would.

Covered: a signed-in page searches as its principal (only its documents), admins by group, refused tokens (wrong
signature, wrong audience, wrong issuer, expired, alg none, nonce mismatch), a replayed or foreign state, an
expired, logged-out or forged session, a cross-origin write, and groups changed at the provider taking effect
(and access lost) at the next sign-in, audited with the provider as the actor.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import psycopg
import pytest
import uvicorn
from psycopg import sql

from citeline.errors import AuthError
from citeline.facade import Citeline
from citeline.serving.app import create_app
from citeline.serving.auth_oidc import SESSION_COOKIE, OidcClient
from citeline.settings import Settings
from tests.e2e.conftest import free_port
from tests.e2e.test_chat_page import answer_text, ask, browser, find, screenshot, wait  # noqa: F401 (browser: a fixture)
from tests.support.oidc_provider import Provider, rsa_jwk, sign_in, start_provider, to_callback

pytestmark = pytest.mark.e2e

SECRET = "test-client-secret-0123456789abcdef"
QUERY = {"query": "launch code name of the project", "k": 10}


@contextlib.contextmanager
def serve(cl: Citeline, port: int) -> Iterator[str]:
    """``create_app(cl)`` under uvicorn on ``port`` in a thread."""
    server = uvicorn.Server(uvicorn.Config(create_app(cl), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"provider": free_port(), "app": free_port(), "short": free_port()}


@pytest.fixture(scope="module")
def provider(tmp_path_factory, ports) -> Iterator[Provider]:
    redirects = [f"http://127.0.0.1:{ports[p]}/auth/callback" for p in ("app", "short")]
    clients = [{"client_id": "citeline", "client_secret": SECRET, "redirect_uris": redirects,
                "grant_types": ["authorization_code"], "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic"}]
    with start_provider(tmp_path_factory.mktemp("idp"), ports["provider"], clients) as idp:
        idp.set_account("alice", groups=["eng"])
        idp.set_account("bob", groups=["sales"])
        idp.set_account("root", groups=["citeline-admins"])
        yield idp


def _settings(tmp: Path, pg_url: str, namespace: str, issuer: str, port: int, **oidc: Any) -> Settings:
    for team in ("eng", "sales"):
        (tmp / team).mkdir(exist_ok=True)
        (tmp / team / "plan.md").write_text(f"# {team} plan\n\nThe launch code name of the {team} project is "
                                            f"{'Falcon' if team == 'eng' else 'Heron'}.\n")
    config = tmp / "citeline.toml"
    config.write_text("".join(f'[[sources]]\nname = "{t}"\nconnector = "folder"\nconfig = {{ path = "{tmp / t}" }}\n'
                              f'access = {{ groups = ["{t}"] }}\n\n' for t in ("eng", "sales")))
    auth = {"issuer": issuer, "client_id": "citeline", "client_secret": SECRET, "scopes": ["openid", "email", "groups"],
            "redirect_url": f"http://127.0.0.1:{port}/auth/callback", "admin_groups": ["citeline-admins"], **oidc}
    return Settings.load(config, home=str(tmp / "home"), database_url=pg_url, database={"namespace": namespace},
                         generation={"backend": "extractive"}, answer={"min_score": -1.0}, auth={"oidc": auth})


@pytest.fixture(scope="module")
def app(tmp_path_factory, pg_url, embedder, provider, ports) -> Iterator[tuple[str, Citeline]]:
    namespace = f"oidc_{uuid.uuid4().hex[:10]}"
    settings = _settings(tmp_path_factory.mktemp("app"), pg_url, namespace, provider.issuer, ports["app"])
    try:
        with Citeline(settings, embedder=embedder) as cl, serve(cl, ports["app"]) as url:
            cl.sync()
            yield url, cl
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def _sources(client: httpx.Client, url: str) -> set[str]:
    reply = client.post(f"{url}/v1/search", json=QUERY)
    assert reply.status_code == 200, reply.text
    return {h["source"] for h in reply.json()["hits"]}


def test_signed_in_page_searches_as_its_principal_and_admins_come_from_groups(app, provider) -> None:
    url, cl = app
    with httpx.Client() as alice, httpx.Client() as bob, httpx.Client() as root:
        done = sign_in(alice, url, "alice", next_path="/admin")
        assert done.status_code == 303 and done.headers["location"] == "/admin"
        cookie = alice.cookies.get(SESSION_COOKIE)
        assert cookie
        head = done.headers["set-cookie"].lower()
        assert "httponly" in head and "samesite=lax" in head and "secure" not in head  # http here: no Secure
        me = alice.get(f"{url}/auth/session").json()
        assert (me["user"], me["groups"], me["admin"]) == ("alice", ["eng"], False)
        assert me["expires_at"] > time.time() + 3600
        assert _sources(alice, url) == {"eng"}  # the cookie alone authenticates /v1; only alice's documents
        sign_in(bob, url, "bob")
        assert _sources(bob, url) == {"sales"}
        assert alice.get(f"{url}/v1/admin/audit/verify").status_code == 403
        sign_in(root, url, "root")
        assert root.get(f"{url}/v1/admin/audit/verify").status_code == 200  # admin by auth.oidc.admin_groups
        assert cl.principals.get("alice").groups == ("eng",)
    with httpx.Client() as nobody:
        assert nobody.post(f"{url}/v1/search", json=QUERY).status_code == 401
        nobody.cookies.set(SESSION_COOKIE, cookie[:-3] + "AAA")  # a tampered signature
        assert nobody.post(f"{url}/v1/search", json=QUERY).status_code == 401
        nobody.cookies.set(SESSION_COOKIE, cookie)  # a stolen cookie posted from another site's page
        evil = nobody.post(f"{url}/v1/search", json=QUERY, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 401 and "another origin" in evil.text


def test_groups_changed_at_the_provider_apply_at_next_sign_in(app, provider) -> None:
    url, cl = app
    provider.set_account("carol", groups=["eng"])
    with httpx.Client() as carol:
        sign_in(carol, url, "carol")
        assert _sources(carol, url) == {"eng"}
        provider.set_account("carol", groups=["sales"])  # moved teams in the directory
        sign_in(carol, url, "carol")
        assert _sources(carol, url) == {"sales"}  # eng's documents are gone for her
        assert cl.principals.get("carol").groups == ("sales",)
    rows = [r for r in cl.audit.records(kind="admin") if r.payload.get("user") == "carol"]
    assert [(r.action, r.principal, r.payload["groups"]) for r in rows] == [
        ("principal.put", f"idp {provider.issuer}", ["eng"]), ("principal.put", f"idp {provider.issuer}", ["sales"])]
    assert cl.audit.verify().ok


def test_logout_ends_the_session(app, provider) -> None:
    url, _ = app
    with httpx.Client() as alice:
        sign_in(alice, url, "alice")
        cookie = alice.cookies.get(SESSION_COOKIE)
        assert alice.get(f"{url}/auth/logout").status_code == 303
        assert alice.post(f"{url}/v1/search", json=QUERY).status_code == 401  # cookie cleared
    with httpx.Client(cookies={SESSION_COOKIE: cookie}) as replay:
        assert replay.post(f"{url}/v1/search", json=QUERY).status_code == 401  # and the old value is dead


def test_replayed_or_foreign_state_is_refused(app, provider) -> None:
    url, _ = app
    with httpx.Client() as alice:
        back = to_callback(alice, f"{url}/auth/login", "alice")
        assert alice.get(back).status_code == 303
        again = alice.get(back)
        assert again.status_code == 401 and "state" in again.text
    with httpx.Client() as victim, httpx.Client() as attacker:  # login CSRF: the attacker's callback in another browser
        back = to_callback(attacker, f"{url}/auth/login", "bob")
        refused = victim.get(back)
        assert refused.status_code == 401 and "not started in this browser" in refused.text
        assert SESSION_COOKIE not in victim.cookies


def test_nonce_mismatch_is_refused(app, provider) -> None:
    url, _ = app
    with httpx.Client() as alice:
        start = alice.get(f"{url}/auth/login")
        parts = urlsplit(start.headers["location"])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query["nonce"] = "injected-nonce"  # the provider signs this one into the token
        forged = parts._replace(query=urlencode(query)).geturl()
        refused = alice.get(to_callback(alice, forged, "alice"))
        assert refused.status_code == 401 and "nonce" in refused.text


def test_forged_id_tokens_are_refused(app, provider) -> None:
    _, cl = app
    oidc = cl.settings.auth.oidc
    assert oidc is not None
    client = OidcClient(oidc)
    now = int(time.time())
    good = {"iss": provider.issuer, "aud": "citeline", "sub": "alice", "iat": now, "exp": now + 300, "nonce": "n1"}
    assert client.verify(provider.mint(good), "n1")["sub"] == "alice"  # the checks can pass
    other_key, _ = rsa_jwk("test-provider-key")
    cases = {
        "signature": provider.mint(good, key=other_key),  # same kid, another key
        "audience": provider.mint({**good, "aud": "another-app"}),
        "issuer": provider.mint({**good, "iss": "https://evil.example"}),
        "expired": provider.mint({**good, "iat": now - 7200, "exp": now - 3600}),
        "nonce": provider.mint({**good, "nonce": "n2"}),
        "none": jwt.encode(good, None, algorithm="none", headers={"kid": provider.kid}),
        "hmac": jwt.encode(good, SECRET, algorithm="HS256", headers={"kid": provider.kid}),
    }
    for name, token in cases.items():
        with pytest.raises(AuthError, match="ID token refused"):
            client.verify(token, "n1")
            pytest.fail(f"the {name} token was accepted")


def test_expired_session_must_sign_in_again(tmp_path, pg_url, embedder, provider, ports) -> None:
    namespace = f"oidc_{uuid.uuid4().hex[:10]}"
    settings = _settings(tmp_path, pg_url, namespace, provider.issuer, ports["short"], session_lifetime_s=3)
    try:
        with Citeline(settings, embedder=embedder) as cl, serve(cl, ports["short"]) as url, httpx.Client() as alice:
            cl.sync()
            sign_in(alice, url, "alice")
            cookie = alice.cookies.get(SESSION_COOKIE)
            time.sleep(3.5)
            assert alice.post(f"{url}/v1/search", json=QUERY).status_code == 401  # the browser dropped it (max-age)
            with httpx.Client(cookies={SESSION_COOKIE: cookie}) as keeper:  # a client that keeps it past its max-age
                refused = keeper.post(f"{url}/v1/search", json=QUERY)
                assert refused.status_code == 401 and "expired" in refused.text
            sign_in(alice, url, "alice")
            assert alice.get(f"{url}/auth/session").json()["user"] == "alice"  # signed in again
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


@pytest.mark.slow
def test_chat_page_signs_in_through_the_provider(browser, app, provider) -> None:  # noqa: F811 (the fixture)
    """A real Chromium: the page's sign-in link, the provider's form, back on the chat page as alice."""
    url, _ = app
    browser.delete_all_cookies()
    browser.get(url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(url + "/")
    wait(browser, lambda d: find(d, "#sso-login").is_displayed(), "the sign-in link is not shown")
    find(browser, "#sso-login").click()
    wait(browser, lambda d: d.current_url.startswith(provider.issuer) and find(d, "#password").is_displayed(),
         "the provider's form is not shown")
    find(browser, "#login").send_keys("alice")
    find(browser, "#password").send_keys("pw")
    find(browser, "#submit").click()
    wait(browser, lambda d: d.current_url.startswith(url) and find(d, "#question").is_displayed(),
         "signing in did not come back to the chat page")
    ask(browser, "What is the launch code name of the project?")
    assert "Falcon" in answer_text(browser) and "Heron" not in answer_text(browser)  # eng's document only
    screenshot(browser, "oidc-signed-in.png")
    find(browser, "#logout").click()
    wait(browser, lambda d: find(d, "#sso-login").is_displayed(), "logging out did not show the sign-in link")
