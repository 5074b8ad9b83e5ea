"""A real OpenID Connect provider for the sign-in tests: ``tests/support/oidc/provider.mjs`` (npm ``oidc-provider``,
pinned in its package.json; ``tests/run.sh`` installs it), started on a free port, and an HTTP client that signs
in through it the way a browser does (redirects followed, the provider's login form posted).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

HERE = Path(__file__).parent / "oidc"


def rsa_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    """A new RSA key and its private JWK (with ``kid``, ``alg`` RS256, ``use`` sig)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return key, jwk


@dataclass
class Provider:
    issuer: str
    key: Any  # the provider's signing key (the test may mint tokens with it)
    kid: str
    accounts_file: Path
    log: Path

    def set_account(self, user: str, *, groups: list[str], password: str = "pw", email: str | None = None) -> None:
        accounts = json.loads(self.accounts_file.read_text())
        accounts[user] = {"password": password, "email": email or f"{user}@example.com", "groups": groups}
        self.accounts_file.write_text(json.dumps(accounts))

    def mint(self, claims: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
        """An ID token with these claims, signed with the provider's key (or ``key``)."""
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})


@contextlib.contextmanager
def start_provider(tmp: Path, port: int, clients: list[dict[str, Any]]) -> Iterator[Provider]:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError("the OIDC tests need node and tests/support/oidc/node_modules (run `npm ci` in "
                           "tests/support/oidc; tests/run.sh does)")
    key, jwk = rsa_jwk("test-provider-key")
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (tmp / "clients.json").write_text(json.dumps(clients))
    accounts = tmp / "accounts.json"
    accounts.write_text("{}")
    issuer = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PORT": str(port), "ISSUER": issuer, "JWKS_FILE": str(tmp / "jwks.json"),
           "CLIENTS_FILE": str(tmp / "clients.json"), "ACCOUNTS_FILE": str(accounts), "NODE_ENV": "test"}
    log = tmp / "provider.log"
    with log.open("w") as out:
        proc = subprocess.Popen([node, str(HERE / "provider.mjs")], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "listening" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the OIDC provider did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Provider(issuer, key, "test-provider-key", accounts, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def to_callback(client: httpx.Client, start: str, user: str, password: str = "pw") -> str:
    """Follow a login from ``start`` (citeline's /auth/login, or the provider's authorization URL) through the
    provider's form up to the redirect back to citeline; the callback URL, not yet opened."""
    url = start
    for _ in range(20):
        reply = client.get(url)
        if reply.status_code == 200 and "<form" in reply.text:
            action = re.search(r'action="([^"]+)"', reply.text)
            assert action is not None, reply.text
            reply = client.post(urljoin(str(reply.url), action.group(1)), data={"login": user, "password": password})
        if reply.status_code not in (301, 302, 303, 307, 308):
            raise AssertionError(f"the login stopped at {reply.url} ({reply.status_code}): {reply.text[:500]}")
        url = urljoin(str(reply.url), reply.headers["location"])
        if "/auth/callback" in url:
            return url
    raise AssertionError("no redirect back to citeline after 20 steps")


def sign_in(client: httpx.Client, base: str, user: str, password: str = "pw", next_path: str = "/") -> httpx.Response:
    """Sign ``client`` in to citeline at ``base`` as ``user``; the reply of the callback (303 to ``next``)."""
    return client.get(to_callback(client, f"{base}/auth/login?next={next_path}", user, password))
