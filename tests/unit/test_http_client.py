"""The API connectors' HTTP policy against a real loopback server: Retry-After, backoff, 401, 404, budget."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from citeline.connectors._http import (
    ApiClient,
    ApiConfig,
    ApiError,
    BudgetExhausted,
    CredentialsRejected,
    NotFound,
    Secret,
    SourceUnavailable,
    retry_after_seconds,
)
from citeline.contracts.connector import ConnectorConfig
from tests.support.replay import FakeApi, ReplayServer, Reply, Request


class Items(FakeApi):
    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == "Bearer good"

    def handle(self, request: Request) -> Reply:
        if request.path == "/items":
            return Reply(200, {"items": [1, 2, 3]})
        if request.path == "/html":
            return Reply(200, "<html>login page</html>", {"Content-Type": "text/html"})
        if request.path == "/gone":
            return self.error(410, "this item was deleted")
        if request.path == "/teapot":
            return self.error(418, "short and stout")
        return self.error(404, "no such item")


@pytest.fixture
def server():
    with ReplayServer(Items()) as srv:
        yield srv


def client(server: ReplayServer, token: str = "good", **overrides) -> tuple[ApiClient, list[float]]:
    waits: list[float] = []
    config = ApiConfig(base_url=server.url, max_retries=3, backoff_s=0.5, **overrides)
    return ApiClient(config, source="test", headers={"Authorization": f"Bearer {token}"},
                     fix_credentials="create a new token", sleep=waits.append, rng=random.Random(0)), waits


def test_ok(server):
    api, waits = client(server)
    assert api.get_json("/items") == {"items": [1, 2, 3]}
    assert waits == [] and api.requests_made == 1


def test_retry_after_is_honoured(server):
    server.fail_next("/items", 429, times=2, headers={"Retry-After": "7"})
    api, waits = client(server)
    assert api.get_json("/items") == {"items": [1, 2, 3]}
    assert waits == [7.0, 7.0] and api.requests_made == 3


def test_retry_when_retries_a_failure_reported_in_a_2xx_body(server):
    server.fail_next("/items", 200, times=2, headers={"Retry-After": "3"}, message="lagged")
    api, waits = client(server)
    lagged = lambda r: "maxlag: lagged" if "message" in r.json() else None  # noqa: E731
    assert api.json(api.request("GET", "/items", retry_when=lagged)) == {"items": [1, 2, 3]}
    assert waits == [3.0, 3.0] and api.retries == 2
    server.fail_next("/items", 200, times=9, message="lagged")
    with pytest.raises(SourceUnavailable, match="maxlag: lagged after 4 tries"):
        api.request("GET", "/items", retry_when=lagged)


def test_github_style_403_rate_limit_is_retried(server):
    server.fail_next("/items", 403, headers={"Retry-After": "2"})
    api, waits = client(server)
    assert api.get_json("/items")["items"] == [1, 2, 3]
    assert waits == [2.0]


def test_5xx_backs_off_exponentially_with_jitter_then_gives_up(server):
    server.fail_next("/items", 500, times=10)
    api, waits = client(server)
    with pytest.raises(SourceUnavailable, match=r"still answered 500 .* after 4 tries"):
        api.get_json("/items")
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0 <= wait <= 0.5 * 2**attempt
    assert len(set(waits)) == 3  # jittered, not a fixed ladder


def test_too_long_retry_after_fails_at_once(server):
    server.fail_next("/items", 429, headers={"Retry-After": "3600"})
    api, waits = client(server)
    with pytest.raises(SourceUnavailable, match="3600 s"):
        api.get_json("/items")
    assert waits == []


def test_401_names_the_fix_and_is_not_retried(server):
    api, waits = client(server, token="stale")
    with pytest.raises(CredentialsRejected, match="401.*create a new token") as info:
        api.get_json("/items")
    assert info.value.status == 401 and waits == [] and api.requests_made == 1


def test_404_is_an_item_error(server):
    api, _ = client(server)
    with pytest.raises(NotFound, match="404"):
        api.get_json("/items/9")


def test_410_gone_is_not_found(server):
    api, waits = client(server)
    with pytest.raises(NotFound, match="410") as info:
        api.get_json("/gone")
    assert info.value.status == 410 and waits == []


def test_other_4xx_and_non_json(server):
    api, _ = client(server)
    with pytest.raises(ApiError, match="418"):
        api.get_json("/teapot")
    with pytest.raises(ApiError, match="not JSON"):
        api.get_json("/html")


def test_request_budget(server):
    api, _ = client(server, request_budget=2)
    api.get_json("/items")
    api.get_json("/items")
    with pytest.raises(BudgetExhausted, match="budget of 2"):
        api.get_json("/items")


def test_network_error_retries_then_fails():
    config = ApiConfig(base_url="http://127.0.0.1:9", max_retries=1, backoff_s=0.01, timeout_s=2)
    waits: list[float] = []
    with pytest.raises(SourceUnavailable, match="after 2 tries"):
        ApiClient(config, source="test", sleep=waits.append).get_json("/x")
    assert len(waits) == 1


def test_retry_after_http_date():
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


class WithSecret(ConnectorConfig):
    token: Secret


def test_secret_from_env_is_never_shown(monkeypatch):
    monkeypatch.setenv("CITELINE_TEST_TOKEN", "s3cr3t")
    config = WithSecret(token="env:CITELINE_TEST_TOKEN")
    assert config.token.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config.model_dump())
    monkeypatch.delenv("CITELINE_TEST_TOKEN")
    with pytest.raises(ValidationError, match="CITELINE_TEST_TOKEN is not set"):
        WithSecret(token="env:CITELINE_TEST_TOKEN")
    with pytest.raises(ValidationError, match="must not be empty"):
        WithSecret(token="  ")


def test_base_url_must_be_http():
    with pytest.raises(ValidationError, match="not an http"):
        ApiConfig(base_url="ftp://example.com")
