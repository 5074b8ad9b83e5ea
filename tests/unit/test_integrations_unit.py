"""The integrations' edges without a server: the missing extra, the HTTP replies a retriever must not trust."""

from __future__ import annotations

import importlib
import json
import sys

import httpx
import pytest

from citeline.domain import SearchHit
from citeline.errors import AuthError, CitelineError, ConfigError
from citeline.integrations._hits import OverHTTP

pytestmark = pytest.mark.unit

HIT = {"chunk_id": 7, "document_id": 3, "source": "wiki", "external_id": "hr/leave.md", "title": "Leave",
       "url": "https://wiki.example/hr/leave", "text": "Sixteen weeks.", "span_start": 10, "span_end": 24,
       "score": 0.5}


def over(handler, key: str = "cl_secret-key-123") -> OverHTTP:
    return OverHTTP("https://citeline.example/", key, k=3, client=httpx.Client(transport=httpx.MockTransport(handler)))


def test_without_langchain_core_the_import_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "langchain_core", None)  # type: ignore[arg-type]
    for name in ("langchain_core.callbacks", "langchain_core.documents", "langchain_core.retrievers"):
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "citeline.integrations.langchain", raising=False)
    with pytest.raises(ConfigError, match=r"needs the module 'langchain_core'.*pip install 'citeline\[langchain\]'"):
        importlib.import_module("citeline.integrations.langchain")


def test_the_request_carries_the_key_as_bearer_and_the_reply_becomes_hits():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"query": "q", "hits": [HIT], "audit_id": 1})

    hits = over(handler).hits("leave?")
    assert hits == [SearchHit(**HIT)]
    assert str(seen[0].url) == "https://citeline.example/v1/search"
    assert seen[0].headers["authorization"] == "Bearer cl_secret-key-123"
    assert json.loads(seen[0].content) == {"query": "leave?", "mode": "hybrid", "k": 3}


@pytest.mark.parametrize(("status", "body", "error", "match"), [
    (401, {"error": {"message": "invalid API key"}}, AuthError, r"refused the API key \(401: invalid API key\)"),
    (403, {"error": {"message": "revoked"}}, AuthError, r"refused the API key \(403: revoked\)"),
    (404, {"detail": "Not Found"}, ConfigError, r"/v1/search does not exist"),
    (500, "boom", CitelineError, r"search at https://citeline.example/v1/search failed \(500: boom\)"),
    (200, {"hits": [{"chunk_id": "x"}]}, CitelineError, r"not a citeline search reply"),
    (200, ["not", "an", "object"], CitelineError, r"not a citeline search reply"),
])
def test_error_replies_raise_clear_errors_without_the_key(status, body, error, match):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if not isinstance(body, str) else httpx.Response(status, text=body)

    source = over(handler)
    with pytest.raises(error, match=match) as err:
        source.hits("q")
    assert "cl_secret-key-123" not in str(err.value) and "cl_secret-key-123" not in repr(source)


def test_bad_settings_are_refused_before_any_request():
    with pytest.raises(ConfigError, match="must start with http"):
        OverHTTP("citeline.example", "cl_x")
    with pytest.raises(ConfigError, match="citeline keys create"):
        OverHTTP("https://citeline.example", "  ")
