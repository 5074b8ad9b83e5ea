"""``citeline mcp`` without services: the HTTP edge (every request's key checked, refusals said plainly and
budgeted), the in-process server refusing a connection without a key, the document stitching, the CLI's key
handling and the extra a missing SDK names. tests/e2e/test_mcp.py runs the real thing."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from starlette.types import Receive, Scope, Send
from typer.testing import CliRunner

from citeline.cli import app
from citeline.domain import Principal
from citeline.errors import AuthError, DatabaseError
from citeline.facade import Authenticated
from citeline.retrieval.documents import stitch
from citeline.serving.mcp import AUTH_SCOPE_KEY, build_server
from citeline.serving.mcp_http import BearerKeys
from citeline.settings import ServerSettings

pytestmark = pytest.mark.unit

GOOD = "cl_aaaaaaaaaaaa_" + "b" * 43
ALICE = Authenticated("k1", Principal("alice", ("staff",)), False)


def _authenticate(key: str | None) -> Authenticated:
    if key is None:
        raise AuthError("missing API key: send 'Authorization: Bearer cl_...'")
    if key == "down":
        raise DatabaseError("no connection")
    if key != GOOD:
        raise AuthError("unknown API key")
    return ALICE


class _Inner:
    """The app behind the edge: records the caller it was handed."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope.get(AUTH_SCOPE_KEY))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def _post(app: Any, key: str | None, path: str = "/mcp") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as h:
            headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
            return await h.post(path, json={}, headers=headers)

    return anyio.run(go)


def _edge(**settings: Any) -> tuple[BearerKeys, _Inner]:
    inner = _Inner()
    return BearerKeys(inner, authenticate=_authenticate, settings=ServerSettings(**settings)), inner


def test_the_edge_hands_the_checked_caller_on_and_refuses_bad_keys_plainly():
    edge, inner = _edge()
    assert _post(edge, GOOD).text == "inner" and inner.seen == [ALICE]
    for key, message in ((None, "missing API key"), ("cl_nope", "unknown API key")):
        r = _post(edge, key)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        assert message in r.json()["error_description"]
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="')
        assert '"' not in r.headers["www-authenticate"].split('error_description="')[1][:-1]
    assert inner.seen == [ALICE]  # nothing unauthenticated reached the SDK
    assert _post(edge, None, "/healthz").json() == {"status": "ok"}


def test_the_edge_answers_503_when_the_key_cannot_be_checked():
    edge, inner = _edge(retry_after_s=7)
    r = _post(edge, "down")
    assert r.status_code == 503 and r.headers["retry-after"] == "7" and "could not be checked" in r.text
    assert inner.seen == []


def test_failed_logins_are_budgeted_per_address_but_known_keys_still_pass():
    edge, _ = _edge(auth_failures_per_minute=1, auth_failure_burst=2)
    assert _post(edge, GOOD).status_code == 200  # known from now on
    assert [_post(edge, "cl_guess").status_code for _ in range(3)] == [401, 401, 429]
    r = _post(edge, "cl_guess")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many failed logins" in r.text
    assert _post(edge, GOOD).status_code == 200


def test_lifespan_passes_through_the_edge():
    seen = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    anyio.run(BearerKeys(inner, authenticate=_authenticate, settings=ServerSettings()),
              {"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]


def test_an_in_process_connection_without_a_key_is_refused_and_arguments_are_checked_first():
    server = build_server(object())  # type: ignore[arg-type] - nothing reaches the facade

    async def go() -> tuple[Any, ...]:
        async with Client(server) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            nul = await c.call_tool("search", {"query": "a\x00b"})
            surrogate = await c.call_tool("ask", {"question": "a\ud800"})
            nokey = await c.call_tool("search", {"query": "deploy"})
            return tools, nul, surrogate, nokey

    tools, nul, surrogate, nokey = anyio.run(go)
    assert tools == {"search", "ask"}
    assert nul.is_error and "query contains a NUL byte" in nul.content[0].text
    assert surrogate.is_error and "question" in surrogate.content[0].text and "valid string" in surrogate.content[0].text
    assert nokey.is_error and "no API key for this connection" in nokey.content[0].text


@pytest.mark.parametrize(("chunks", "text"), [
    ([{"text": "abcdef", "span_start": 0, "span_end": 6}, {"text": "efgh", "span_start": 4, "span_end": 8}],
     "abcdefgh"),  # the overlap "ef" once
    ([{"text": "ab", "span_start": 0, "span_end": 2}, {"text": "cd", "span_start": 5, "span_end": 7}], "ab\n\ncd"),
    ([{"text": "one", "span_start": None, "span_end": None}, {"text": "two", "span_start": 0, "span_end": 3}],
     "one\n\ntwo"),
    ([{"text": "## H\nbody", "span_start": 0, "span_end": 4}, {"text": "more", "span_start": 2, "span_end": 6}],
     "## H\nbody\n\nmore"),  # a text that is not its span: never cut
    ([{"text": "abc", "span_start": 0, "span_end": 3}, {"text": "b", "span_start": 1, "span_end": 2}], "abc"),
    ([], ""),
])
def test_stitch_drops_only_overlaps_it_can_prove(chunks, text):
    assert stitch(chunks) == text


def test_cli_stdio_without_a_key_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("CITELINE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["mcp"])
    assert result.exit_code != 0 and "missing API key: set CITELINE_API_KEY or pass --api-key-file" in str(
        result.exception)


def test_cli_http_takes_no_key_file(tmp_path):
    result = CliRunner().invoke(app, ["mcp", "--transport", "http", "--api-key-file", str(tmp_path / "k")])
    assert result.exit_code == 2 and "every request sends its own key" in result.output


def test_cli_unreadable_key_file_is_named(tmp_path):
    result = CliRunner().invoke(app, ["mcp", "--api-key-file", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_without_the_sdk_citeline_mcp_names_the_server_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcp", None)  # type: ignore[arg-type]
    for name in [m for m in sys.modules if m.startswith(("mcp.", "citeline.serving.mcp"))]:
        monkeypatch.delitem(sys.modules, name)
    result = CliRunner().invoke(app, ["mcp"])
    assert "citeline mcp needs the module 'mcp'" in str(result.exception)
    assert "pip install 'citeline[server]'" in str(result.exception)
