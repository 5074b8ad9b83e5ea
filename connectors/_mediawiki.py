"""One session with a MediaWiki Action API (private to the MediaWiki connector).

* finds ``api.php`` under the wiki's root (``api.php``, then ``w/api.php``, unless ``api_path`` is set);
* logs in with a bot password (``action=login`` with a login token; the session cookie stays in the
  client) and asserts the login on every request (``assert=user``), logging in again once when the
  session was dropped;
* maps MediaWiki's errors, which arrive in 200 responses (``{"error": {"code": ...}}`` and a
  ``MediaWiki-API-Error`` header), onto the ApiClient's types: ``maxlag``, ``ratelimited``, ``readonly``
  and database errors are retried like a 429 (``Retry-After`` honoured); ``readapidenied``, failed
  assertions, ``badtoken`` and permission errors are :class:`CredentialsRejected`; anything else is a
  :class:`WikiError` (the connector turns one for a single page into a Failure);
* follows ``continue`` for list queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from citeline.connectors._http import ApiClient, ApiConfig, ApiError, CredentialsRejected, NotFound
from citeline.errors import ConnectorError

__all__ = ["WikiError", "WikiSession"]

log = logging.getLogger(__name__)

_API_CANDIDATES = ("api.php", "w/api.php")
_RETRYABLE = {"maxlag", "ratelimited", "readonly"}
_CREDENTIALS = {
    "readapidenied", "assertuserfailed", "assertbotfailed", "assertnameduserfailed", "badtoken", "notloggedin",
    "permissiondenied", "mwoauth-invalid-authorization", "mwoauth-invalid-authorization-invalid-user",
}  # fmt: skip
_SESSION_LOST = {"assertuserfailed", "assertbotfailed", "badtoken"}


class WikiError(ApiError):
    """MediaWiki answered an error code the connector has no special handling for."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, status=200)
        self.code = code


def _transient(response: httpx.Response) -> str | None:
    """The ApiClient's ``retry_when``: a reason to retry for maxlag, rate limits, read-only and DB errors."""
    code = response.headers.get("MediaWiki-API-Error")
    if not code or not (code in _RETRYABLE or code.startswith("internal_api_error_DB")):
        return None
    try:
        error = _error(response.json())
    except (ValueError, AttributeError):
        error = None
    return f"MediaWiki {code} ({error[1][:160] if error else 'no details'})"


class WikiSession:
    """Requests to one wiki for one sync; see the module docstring. Use as a context manager."""

    def __init__(self, config: ApiConfig, *, username: str | None, password: str | None, api_path: str | None,
                 maxlag_s: int | None, fix_credentials: str) -> None:
        self.client = ApiClient(config, source=f"mediawiki {config.base_url}", fix_credentials=fix_credentials)
        self.source = self.client.source
        self.fix = fix_credentials
        self._username = username
        self._password = password
        self._api_path = api_path
        self._maxlag = maxlag_s
        self._api: str | None = None
        self.logged_in = False

    def __enter__(self) -> WikiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    # -- set-up -------------------------------------------------------------------------------------
    def open(self) -> WikiSession:
        """Find api.php and log in (when credentials are configured)."""
        self._api = self._discover()
        if self._username:
            self.login()
        return self

    def _discover(self) -> str:
        candidates = (self._api_path,) if self._api_path else _API_CANDIDATES
        tried = []
        for path in candidates:
            tried.append(f"{self.client.config.base_url}/{path}")
            try:
                response = self.client.request("GET", path, params={"action": "query", "meta": "siteinfo",
                                                                      "format": "json", "formatversion": "2"},
                                               retry_when=_transient)
                body = response.json()
            except (NotFound, ValueError):
                continue
            except ApiError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    continue
                raise
            if isinstance(body, dict) and {"query", "error", "errors"} & body.keys():  # answering, or refusing
                return path
        raise ConnectorError(f"{self.source}: no MediaWiki Action API answered at {', '.join(tried)}: set "
                             "config.base_url to the wiki's root (where api.php is) or config.api_path")

    def login(self) -> None:
        self.logged_in = False
        token = self._call("GET", {"action": "query", "meta": "tokens", "type": "login"}, check_login=False)
        data = {"action": "login", "lgname": self._username, "lgpassword": self._password,
                "lgtoken": token["query"]["tokens"]["logintoken"]}
        result = self._call("POST", data, check_login=False).get("login", {})
        if result.get("result") != "Success":
            reason = result.get("reason") or result.get("result") or "no reason given"
            if isinstance(reason, Mapping):
                reason = reason.get("text") or reason.get("code") or str(reason)
            raise CredentialsRejected(f"{self.source}: login as {self._username!r} failed ({reason}): {self.fix}")
        self.logged_in = True

    # -- requests -----------------------------------------------------------------------------------
    def query(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One ``action=query`` (or other read action) request; errors mapped as the module docstring says."""
        return self._call("GET", {"action": "query", **params})

    def query_all(self, params: Mapping[str, Any], key: str) -> Iterator[dict[str, Any]]:
        """The rows of ``query.<key>`` over every ``continue``."""
        extra: dict[str, Any] = {}
        while True:
            body = self.query({**params, **extra})
            yield from body.get("query", {}).get(key, [])
            if "continue" not in body:
                return
            extra = body["continue"]

    def _call(self, method: str, params: Mapping[str, Any], *, check_login: bool = True) -> dict[str, Any]:
        if self._api is None:
            raise RuntimeError("WikiSession.open() first")
        full = {**params, "format": "json", "formatversion": "2", "errorformat": "plaintext"}
        if self._maxlag is not None:
            full["maxlag"] = self._maxlag
        if check_login and self.logged_in:
            full["assert"] = "user"
        for attempt in (1, 2):
            kwargs: dict[str, Any] = {"params": full} if method == "GET" else {"data": full}
            response = self.client.request(method, self._api, retry_when=_transient, **kwargs)
            body = self.client.json(response)
            if not isinstance(body, dict):
                raise ApiError(f"{self.source}: {params.get('action')} answered {type(body).__name__}, not an object")
            error = _error(body)
            if error is None:
                return body
            code, info = error
            if code in _SESSION_LOST and check_login and self.logged_in and attempt == 1:
                log.info("%s: session lost (%s); logging in again", self.source, code)
                self.login()
                continue
            if code in _CREDENTIALS:
                who = f"as {self._username!r}" if self._username else "anonymously"
                raise CredentialsRejected(f"{self.source}: MediaWiki refused {params.get('action')} {who} "
                                          f"({code}: {info}): {self.fix}", status=200)
            raise WikiError(f"{self.source}: MediaWiki {code}: {info}", code)
        raise AssertionError("unreachable")


def _error(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(code, info)`` of an error body (``errorformat=plaintext`` gives ``errors``; older wikis ``error``)."""
    if isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0]
        return str(first.get("code", "unknown")), str(first.get("text") or first.get("*") or "")[:300]
    if isinstance(body.get("error"), Mapping):
        return str(body["error"].get("code", "unknown")), str(body["error"].get("info", ""))[:300]
    return None
