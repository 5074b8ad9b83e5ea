"""What every connector over an HTTP API shares (private: not part of the connector contract).

* :class:`ApiConfig`, the base of an API connector's typed config: where the API is, how long to wait,
  how often to retry and how many requests one sync may make (the per-source request budget).
* :class:`Secret`, a credential field: the value itself or ``"env:NAME"`` to read it from the
  environment when the config is loaded (so ``citeline.toml`` holds no secrets). Never printed.
* :class:`ApiClient`, one ``httpx`` client per sync with the retry policy:

  - ``429`` and ``503`` honour ``Retry-After`` (seconds or an HTTP date); a wait longer than
    ``max_retry_after_s`` fails the run at once with a message saying when to come back;
  - other ``5xx`` and transport errors retry with exponential backoff and full jitter;
  - ``401``/``403`` raise :class:`CredentialsRejected` (the whole run stops: nothing is deleted);
  - ``404`` and ``410 Gone`` raise :class:`NotFound` (an :class:`ItemError`: the caller decides between
    Failure and Delete);
  - every request counts against ``request_budget``; spending it raises :class:`BudgetExhausted`.

A whole-source problem is a :class:`~citeline.errors.ConnectorError` subclass: ingest ends the run as
failed and keeps what earlier batches committed and the last checkpoint, so the next run resumes there.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr

from citeline.connectors._common import ItemError, checkpoint_every_field
from citeline.contracts.connector import ConnectorConfig
from citeline.errors import ConnectorError

__all__ = [
    "ApiClient",
    "ApiConfig",
    "ApiError",
    "BudgetExhausted",
    "CredentialsRejected",
    "NotFound",
    "Secret",
    "SourceUnavailable",
    "retry_after_seconds",
]

log = logging.getLogger(__name__)

USER_AGENT = "citeline-connector/0.1"


def _from_env(value: object) -> object:
    """``"env:NAME"`` → the value of ``$NAME`` (an error naming the variable when it is unset)."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:].strip()
        if not name:
            raise ValueError("'env:' needs a variable name, e.g. 'env:JIRA_TOKEN'")
        resolved = os.environ.get(name)
        if resolved is None or not resolved.strip():
            raise ValueError(f"environment variable {name} is not set: export it or put the value in the config")
        return resolved.strip()
    return value


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


Secret = Annotated[SecretStr, BeforeValidator(_from_env), AfterValidator(_not_empty)]
"""A credential: ``"env:NAME"`` reads ``$NAME`` at load time; shown as ``**********`` everywhere."""


def _http_url(value: str) -> str:
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL, e.g. https://wiki.example.com")
    return value.rstrip("/")


class ApiConfig(ConnectorConfig):
    """Fields every API connector has; a connector's own Config adds its credentials and scope."""

    base_url: Annotated[str, AfterValidator(_http_url)] = Field(description="the API's root URL")
    timeout_s: float = Field(30.0, gt=0, description="seconds to wait for one response")
    max_retries: int = Field(5, ge=0, le=20, description="retries of one request after 429, 5xx or a network error")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles per retry, with full jitter")
    max_backoff_s: float = Field(60.0, ge=0, description="longest backoff between two tries")
    max_retry_after_s: float = Field(300.0, ge=0, description="a longer Retry-After fails the run instead of waiting")
    request_budget: int = Field(10_000, ge=1, description="most HTTP requests one sync may make")
    page_size: int = Field(100, ge=1, le=1000, description="items per page requested from the API")
    checkpoint_every: int = checkpoint_every_field()


class ApiError(ConnectorError):
    """The API answered something the connector cannot use; the message names the request and the fix."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CredentialsRejected(ApiError):
    """401/403: the credentials are wrong, expired or lack a permission."""


class SourceUnavailable(ApiError):
    """5xx, 429 or network errors that outlasted the retries."""


class BudgetExhausted(ApiError):
    """The sync spent its request budget; it resumes from the last checkpoint next time."""


class NotFound(ItemError):
    """404 or 410 for one item: gone at the source (or never visible to these credentials)."""

    def __init__(self, message: str, *, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC)
    return max(0.0, (when - current).total_seconds())


class ApiClient:
    """HTTP for one sync of one source: retries, Retry-After, backoff with jitter, a request budget."""

    def __init__(self, config: ApiConfig, *, source: str, auth: httpx.Auth | None = None,
                 headers: Mapping[str, str] | None = None, fix_credentials: str = "check the credentials",
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.config = config
        self.source = source
        self.fix_credentials = fix_credentials
        self.requests_made = 0
        self.retries = 0
        self.waited_s = 0.0
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = httpx.Client(base_url=config.base_url, auth=auth, timeout=config.timeout_s,
                                    headers={"User-Agent": USER_AGENT, "Accept": "application/json",
                                             **(headers or {})}, follow_redirects=True)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` (relative to base_url, or absolute for ``next`` links) and decode its JSON body."""
        return self.json(self.request("GET", path, params=params))

    def json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{self.source}: {response.request.method} {_where(response.request.url)} answered "
                           f"{response.status_code} with a body that is not JSON ({response.text[:120]!r}): "
                           "check config.base_url points at the API root", status=response.status_code) from None

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, data: Any = None,
                retry_when: Callable[[httpx.Response], str | None] | None = None) -> httpx.Response:
        """One request with the retry policy; returns a 2xx/3xx response or raises an :class:`ApiError`.

        ``retry_when`` is for APIs that report a transient failure in a 2xx body (MediaWiki's ``maxlag``
        and ``ratelimited``): given a 2xx/3xx response it returns a reason to retry it like a 429
        (``Retry-After`` honoured, else backoff), or ``None`` to accept it.
        """
        attempt = 0
        while True:
            if self.requests_made >= self.config.request_budget:
                raise BudgetExhausted(
                    f"{self.source}: request budget of {self.config.request_budget} spent before "
                    f"{method} {path}; the next sync resumes from the last checkpoint (raise "
                    "config.request_budget to do more per run)")
            self.requests_made += 1
            try:
                response = self._client.request(method, path, params=params, json=json, data=data)
            except httpx.TransportError as exc:
                wait = self._backoff(attempt)
                reason = f"{type(exc).__name__}: {exc}"
                if attempt >= self.config.max_retries:
                    raise SourceUnavailable(f"{self.source}: {method} {self.config.base_url}{_path(path)} failed "
                                            f"after {attempt + 1} tries ({reason}): check the URL and that the "
                                            "service is up") from exc
            else:
                status = response.status_code
                soft = retry_when(response) if retry_when is not None and status < 400 else None
                if status < 400 and soft is None:
                    return response
                limited = soft is not None or _rate_limited(response)
                if status in (401, 403) and not limited:
                    raise CredentialsRejected(
                        f"{self.source}: {method} {_where(response.request.url)} answered {status} "
                        f"{_reason(response)}: {self.fix_credentials}", status=status)
                if status in (404, 410):
                    raise NotFound(f"{method} {_where(response.request.url)} answered {status} (deleted, or not "
                                   "visible to these credentials)", status=status)
                if not limited and status != 429 and status < 500:
                    raise ApiError(f"{self.source}: {method} {_where(response.request.url)} answered {status} "
                                   f"{_reason(response)}: the connector and this API version disagree; report it "
                                   "with the message", status=status)
                told = _told_wait(response) if limited or status in (429, 503) else None
                if told is not None and told > self.config.max_retry_after_s:
                    raise SourceUnavailable(
                        f"{self.source}: rate limited ({soft or status}); the API asks to wait {told:.0f} s, more than "
                        f"config.max_retry_after_s={self.config.max_retry_after_s:.0f}: the next scheduled sync "
                        "resumes from the last checkpoint", status=status)
                wait = told if told is not None else self._backoff(attempt)
                reason = soft or f"{status} {_reason(response)}"
                if attempt >= self.config.max_retries:
                    raise SourceUnavailable(f"{self.source}: {method} {_where(response.request.url)} still answered "
                                            f"{reason} after {attempt + 1} tries: try again later (the next sync "
                                            "resumes from the last checkpoint)", status=status)
            attempt += 1
            self.retries += 1
            log.info("%s: %s %s: %s; retry %d/%d in %.1f s", self.source, method, _path(path), reason, attempt,
                     self.config.max_retries, wait)
            self.waited_s += wait
            self._sleep(wait)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        cap = min(self.config.max_backoff_s, self.config.backoff_s * (2 ** attempt))
        return self._rng.uniform(0, cap)


def _rate_limited(response: httpx.Response) -> bool:
    """429, or a 403 that is a rate limit (GitHub: ``X-RateLimit-Remaining: 0`` or a ``Retry-After``)."""
    if response.status_code == 429:
        return True
    return response.status_code == 403 and (
        "Retry-After" in response.headers or response.headers.get("X-RateLimit-Remaining") == "0")


def _told_wait(response: httpx.Response) -> float | None:
    """Seconds the API asks us to wait: ``Retry-After``, else ``X-RateLimit-Reset`` (epoch seconds) when spent."""
    told = retry_after_seconds(response.headers.get("Retry-After"))
    if told is None and response.headers.get("X-RateLimit-Remaining") == "0":
        try:
            told = max(0.0, float(response.headers["X-RateLimit-Reset"]) - time.time())
        except (KeyError, ValueError):
            told = None
    return told


def _path(path: str) -> str:
    return path if path.startswith(("http://", "https://", "/")) else f"/{path}"


def _where(url: httpx.URL) -> str:
    """The URL without its query string (queries can carry tokens on some APIs)."""
    return str(url.copy_with(query=None))


def _reason(response: httpx.Response) -> str:
    """A short reason: the API's own message when its JSON error body has one."""
    message = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        for key in ("message", "error_description", "errorMessages", "error", "description", "detail"):
            value = body.get(key)
            if isinstance(value, list) and value:
                value = "; ".join(str(v) for v in value)
            if isinstance(value, Mapping):
                value = value.get("message") or value.get("info") or value.get("title")
            if isinstance(value, str) and value.strip():
                message = value.strip()
                break
    reason = response.reason_phrase or ""
    return f"{reason} ({message[:200]})" if message else reason
