"""HTTP-policy tests every Atlassian connector runs against its fake (tests/support/apis/), like a contract.

Inherit :class:`AtlassianHttpPolicy` in a test class, set ``search`` (the path of the request a sync starts
with) and ``full_sync`` (how many documents a full sync of the fixture yields), and implement ``make(server,
**config overrides)``; the module needs a ``server`` fixture (a :class:`ReplayServer` around the fake)::

    class TestJiraHttpPolicy(AtlassianHttpPolicy):
        search, full_sync = "/rest/api/2/search", 5

        def make(self, server, **overrides):
            return make(server, **overrides)
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from citeline.connectors._http import BudgetExhausted, CredentialsRejected, SourceUnavailable
from citeline.testing.connectors import documents, run_sync
from tests.support.replay import ReplayServer

__all__ = ["AtlassianHttpPolicy"]


class AtlassianHttpPolicy:
    """Retries, Retry-After, credentials (Cloud Basic and Data Center Bearer) and the request budget."""

    search: str
    full_sync: int

    def make(self, server: ReplayServer, **overrides: Any) -> Any:
        """The connector under test against ``server``, with ``max_retries=2`` and a tiny backoff."""
        raise NotImplementedError

    def test_429_retry_after_is_honoured(self, server: ReplayServer) -> None:
        server.fail_next(self.search, 429, headers={"Retry-After": "1"}, message="Rate limit exceeded")
        started = time.monotonic()
        changes = run_sync(self.make(server))
        assert time.monotonic() - started >= 1.0
        assert len(documents(changes)) == self.full_sync
        first, second = server.requests[0], server.requests[1]
        assert first.path == second.path == self.search and first.query == second.query  # the same request again

    @pytest.mark.parametrize("status", [500, 503])
    def test_5xx_on_the_search_is_retried_then_fails_the_run(self, server: ReplayServer, status: int) -> None:
        server.fail_next(self.search, status, times=10)
        with pytest.raises(SourceUnavailable, match=str(status)):
            run_sync(self.make(server))
        assert len([r for r in server.requests if r.path == self.search]) == 3  # one try and 2 retries

    def test_5xx_once_is_retried_and_the_run_succeeds(self, server: ReplayServer) -> None:
        server.fail_next(self.search, 502, times=2)
        assert len(documents(run_sync(self.make(server)))) == self.full_sync

    def test_expired_credentials_name_the_fix(self, server: ReplayServer) -> None:
        connector = self.make(server)
        server.expire_credentials()
        with pytest.raises(CredentialsRejected, match="401.*create a new API token") as info:
            connector.validate()
        assert info.value.status == 401
        with pytest.raises(CredentialsRejected):
            run_sync(connector)
        with pytest.raises(CredentialsRejected):
            connector.list_ids()

    def test_data_center_bearer_token(self, server: ReplayServer) -> None:
        connector = self.make(server, email=None, token="good-pat")
        connector.validate()
        assert len(documents(run_sync(connector))) == self.full_sync
        assert {r.headers["authorization"] for r in server.requests} == {"Bearer good-pat"}

    def test_request_budget_ends_the_run(self, server: ReplayServer) -> None:
        with pytest.raises(BudgetExhausted, match="budget of 2"):
            run_sync(self.make(server, request_budget=2))
