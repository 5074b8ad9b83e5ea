"""Sign-in with OpenID Connect for the pages: authorization code + PKCE, and the session cookie it yields.

:class:`OidcClient` talks to the provider: discovery (``/.well-known/openid-configuration``, its ``issuer`` must
equal the configured one), the authorization URL (``state``, ``nonce``, PKCE ``S256``), the code exchange and
the ID token check. The ID token is checked with PyJWT against the provider's JWKS (``PyJWKClient``: keys by
``kid``, refetched when the provider rotates them): the signature (only the asymmetric algorithms the provider
announces; never ``none`` or HMAC), ``iss``, ``aud`` (and ``azp`` when there are several audiences), ``exp``,
``iat``, ``nbf`` and the ``nonce`` of the login it answers. PyJWT rather than authlib: it is the smaller,
maintained JOSE library the flow needs (discovery and the code exchange are two HTTP calls), with no framework
integration to keep in step with FastAPI.

:class:`PendingLogins` keeps each started login (state → PKCE verifier, nonce, where to go next) in this process
for ``login_timeout_s``; a state is used once (a replayed callback is refused) and must match the
``citeline_login`` cookie set on the browser that started the login (a login started elsewhere is refused).

:class:`Sessions` signs the session cookie (HMAC-SHA256 with ``auth.oidc.session_key``): the user, a session
id and an expiry. Every request re-reads the principal from the database (its groups decide what it sees and
whether it is an admin), so a principal removed since is refused at once; logging out ends the session id in
this process. Requests that change something (not GET/HEAD/OPTIONS) with a session cookie must come from
this server's own origin (the ``Origin`` header, when the browser sends one) on top of ``SameSite=Lax``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt

from citeline.errors import AuthError, ConfigError
from citeline.facade import Authenticated
from citeline.settings import OidcSettings, PrincipalClaim

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Identity", "OidcClient", "Pending", "PendingLogins", "Sessions"]

SESSION_COOKIE = "citeline_session"
LOGIN_COOKIE = "citeline_login"
_ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Pending:
    verifier: str
    nonce: str
    next: str
    expires: float


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in: the principal's name and the groups from the token."""

    user: str
    groups: tuple[str, ...]
    subject: str


class PendingLogins:
    """Started logins by state, each usable once, dropped after ``ttl_s`` (at most ``max_pending`` kept)."""

    def __init__(self, ttl_s: float, max_pending: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.clock = clock
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, next_path: str) -> tuple[str, Pending]:
        state = secrets.token_urlsafe(32)
        pending = Pending(secrets.token_urlsafe(48), secrets.token_urlsafe(32), next_path, self.clock() + self.ttl_s)
        with self._lock:
            self._pending[state] = pending
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        return state, pending

    def take(self, state: str) -> Pending:
        """The login ``state`` started; :class:`AuthError` if unknown, used already or too old."""
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None:
            raise AuthError("unknown or already used login state: start again at /auth/login")
        if pending.expires < self.clock():
            raise AuthError("the login took too long (auth.oidc.login_timeout_s): start again at /auth/login")
        return pending


class OidcClient:
    """The provider, as this server's OpenID Connect client (see the module docstring)."""

    def __init__(self, settings: OidcSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self.secret = settings.secret()
        self._http = http or httpx.Client(timeout=settings.http_timeout_s)
        self._meta: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (read once)."""
        with self._lock:
            if self._meta is None:
                url = f"{self.settings.issuer}/.well-known/openid-configuration"
                try:
                    meta = self._http.get(url).raise_for_status().json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise ConfigError(f"cannot read the OpenID provider's discovery document {url}: {exc}") from None
                if meta.get("issuer", "").rstrip("/") != self.settings.issuer:
                    raise ConfigError(f"the provider at {url} names its issuer {meta.get('issuer')!r}, not "
                                      f"{self.settings.issuer!r} (auth.oidc.issuer must be exactly that)")
                self._meta = meta
                self._jwks = jwt.PyJWKClient(meta["jwks_uri"], cache_keys=True, lifespan=3600,
                                             timeout=int(self.settings.http_timeout_s))
            return self._meta

    def authorization_url(self, state: str, pending: Pending) -> str:
        scopes = ["openid", *(s for s in self.settings.scopes if s != "openid")]
        challenge = _b64(hashlib.sha256(pending.verifier.encode()).digest())
        query = {"response_type": "code", "client_id": self.settings.client_id, "redirect_uri":
                 self.settings.redirect_url, "scope": " ".join(scopes), "state": state, "nonce": pending.nonce,
                 "code_challenge": challenge, "code_challenge_method": "S256"}
        return f"{self.metadata()['authorization_endpoint']}?{urlencode(query)}"

    def exchange(self, code: str, pending: Pending) -> str:
        """The ID token the provider gives for ``code`` (with the PKCE verifier)."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.redirect_url,
                "code_verifier": pending.verifier, "client_id": self.settings.client_id}
        auth = httpx.BasicAuth(self.settings.client_id, self.secret) if self.secret is not None else None
        try:
            reply = self._http.post(self.metadata()["token_endpoint"], data=form, auth=auth or httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise AuthError(f"the OpenID provider's token endpoint did not answer: {exc}") from None
        if reply.status_code != 200:
            raise AuthError(f"the OpenID provider refused the code ({reply.status_code}): {reply.text[:200]}")
        token = reply.json().get("id_token")
        if not isinstance(token, str):
            raise AuthError("the OpenID provider's token response has no id_token (is 'openid' among the scopes?)")
        return token

    def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims after every check (module docstring); :class:`AuthError` naming the failure."""
        meta = self.metadata()
        algorithms = sorted(_ASYMMETRIC.intersection(meta.get("id_token_signing_alg_values_supported", ["RS256"])))
        assert self._jwks is not None
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token)
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=algorithms, audience=self.settings.client_id, issuer=meta["issuer"],
                leeway=self.settings.clock_skew_s, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"ID token refused: {exc}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.settings.client_id:
            raise AuthError("ID token refused: several audiences and azp is not this client")
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], nonce):
            raise AuthError("ID token refused: its nonce is not the one this login sent")
        return claims

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """The principal's name and groups from verified claims."""
        s = self.settings
        if s.principal_claim is PrincipalClaim.EMAIL:
            user = claims.get("email")
            if claims.get("email_verified") is False:
                raise AuthError("the provider says this email address is not verified; it cannot name a principal")
        else:
            user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise AuthError(f"the ID token has no {s.principal_claim.value} claim (auth.oidc.principal_claim)")
        if s.groups_claim not in claims and s.groups_claim in claims.get("_claim_names", {}):
            raise AuthError(f"the provider left the {s.groups_claim!r} claim out (too many groups: Entra ID's "
                            "overage); emit only the groups assigned to the application")
        groups = claims.get(s.groups_claim, [])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise AuthError(f"the ID token's {s.groups_claim!r} claim is not a list of names")
        return Identity(user, tuple(groups), str(claims["sub"]))


class Sessions:
    """Signed session cookies (module docstring). ``lookup(user)`` reads the principal's current state:
    ``(Authenticated-maker)`` built by the app over the facade."""

    def __init__(self, settings: OidcSettings, lookup: Callable[[str, str], Authenticated],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        key = settings.session_key.get_secret_value() if settings.session_key else secrets.token_hex(32)
        self._key = hashlib.sha256(b"citeline-session\x00" + key.encode()).digest()
        self._lookup = lookup
        self._clock = clock
        self._ended: dict[str, float] = {}  # session id -> its expiry, for logged-out sessions
        self._lock = threading.Lock()
        self.secure = urlsplit(settings.redirect_url).scheme == "https"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, user: str) -> str:
        now = int(self._clock())
        body = _b64(json.dumps({"u": user, "sid": secrets.token_urlsafe(16), "iat": now,
                                "exp": now + self.settings.session_lifetime_s}).encode())
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str) -> dict[str, Any]:
        """The cookie's payload; :class:`AuthError` if forged, expired or logged out."""
        body, _, mac = cookie.partition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._sign(body).encode()):
            raise AuthError("invalid session cookie: sign in again at /auth/login")
        data: dict[str, Any] = json.loads(_unb64(body))
        if data["exp"] <= self._clock():
            raise AuthError("your session expired: sign in again at /auth/login")
        with self._lock:
            if data["sid"] in self._ended:
                raise AuthError("this session was logged out: sign in again at /auth/login")
        return data

    def end(self, cookie: str) -> None:
        """Log a session out (kept as ended until it would have expired)."""
        try:
            data = self.read(cookie)
        except AuthError:
            return
        now = self._clock()
        with self._lock:
            self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
            self._ended[data["sid"]] = data["exp"]

    def authenticate(self, cookie: str, method: str = "GET", origin: str | None = None,
                     host: str | None = None) -> Authenticated:
        """The principal behind a session cookie (read from the database now)."""
        data = self.read(cookie)
        if method.upper() not in _SAFE_METHODS and origin is not None and urlsplit(origin).netloc != host:
            raise AuthError(f"a signed-in page of another origin ({origin}) may not change anything here")
        return self._lookup(data["u"], data["sid"])
