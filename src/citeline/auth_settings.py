"""The ``[auth]`` section of the settings: sign-in with OpenID Connect (``[auth.oidc]``) for the pages.

Kept beside :mod:`citeline.settings` (which imports it; ``citeline.settings.AuthSettings`` is the name to use)
so that module stays within its size. The client secret and the session key come from the environment
(``CITELINE_AUTH__OIDC__CLIENT_SECRET``) or a file, never from a committed config; neither is ever logged
(``SecretStr``).
"""

from __future__ import annotations

import enum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from citeline.answer_settings import Section
from citeline.errors import ConfigError

__all__ = ["AuthSettings", "OidcSettings", "PrincipalClaim"]

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class PrincipalClaim(enum.Enum):
    """Which ID token claim names the principal."""

    SUB = "sub"  # the provider's stable subject id (never reassigned)
    EMAIL = "email"  # readable, but an address can be reassigned: refused when email_verified is false


def _https_or_local(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
        return url.rstrip("/") if name == "issuer" else url
    raise ValueError(f"auth.oidc.{name} must be an https:// URL (http:// only on localhost), got {url!r}")


class OidcSettings(Section):
    """Sign-in with an OpenID Connect provider (Okta, Entra ID, Keycloak, ...): authorization code + PKCE."""

    issuer: str = Field(description="the provider's issuer URL (its /.well-known/openid-configuration is read), "
                        "e.g. https://acme.okta.com/oauth2/default or https://login.microsoftonline.com/TENANT/v2.0")
    client_id: str = Field(min_length=1, description="the application's client id at the provider")
    client_secret: SecretStr | None = Field(None, description="the client secret (prefer the environment: "
                                            "CITELINE_AUTH__OIDC__CLIENT_SECRET); unset with no client_secret_file: "
                                            "a public client (PKCE only)")
    client_secret_file: Path | None = Field(None, description="a file holding the client secret")
    redirect_url: str = Field(description="this server's callback as registered at the provider, e.g. "
                              "https://citeline.example.com/auth/callback")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"],
                              description="scopes asked for (openid is always added); add the one your provider "
                              "needs for the groups claim, e.g. groups (Okta)")
    principal_claim: PrincipalClaim = Field(PrincipalClaim.SUB, description="the claim that names the principal: "
                                            "sub or email")
    groups_claim: str = Field("groups", min_length=1, description="the claim holding the user's groups (a list)")
    admin_groups: list[str] = Field(default_factory=list, description="members of any of these groups are admins "
                                    "(the admin API and page)")
    session_lifetime_s: int = Field(28800, ge=1, le=30 * 86400, description="a session lasts this long; then "
                                    "the user signs in again")
    session_key: SecretStr | None = Field(None, description="key that signs session cookies (>= 32 characters; "
                                          "CITELINE_AUTH__OIDC__SESSION_KEY); unset: a random key per server "
                                          "process (sessions end when it restarts; use one key for all replicas)")
    login_timeout_s: int = Field(600, ge=10, le=3600, description="time allowed between /auth/login and the "
                                 "provider's redirect back")
    clock_skew_s: int = Field(60, ge=0, le=600, description="leeway for the ID token's exp/iat/nbf")
    http_timeout_s: float = Field(10.0, gt=0, description="longest wait for the provider (discovery, JWKS, token)")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        return _https_or_local("issuer", v)

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, v: str) -> str:
        return _https_or_local("redirect_url", v)

    @field_validator("session_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("auth.oidc.session_key must have at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> OidcSettings:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("set auth.oidc.client_secret or auth.oidc.client_secret_file, not both")
        return self

    def secret(self) -> str | None:
        """The client secret (from the setting or its file), or None for a public client."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            try:
                return self.client_secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"auth.oidc.client_secret_file {self.client_secret_file}: {exc.strerror}") from None
        return None


class AuthSettings(Section):
    """How people sign in to the pages. API keys (``Authorization: Bearer cl_...``) always work for programs."""

    oidc: OidcSettings | None = Field(None, description="sign-in with OpenID Connect; unset: API keys only")
