"""``citeline mcp`` end to end: the official MCP SDK's client against a real server process, over stdio (the
client spawns ``citeline mcp``) and over streamable HTTP, on the Acme example in the real embedded PostgreSQL.

alice (engineering, support) may read the deploy runbook; bob (sales) may not; the reorganisation plan is
carol's alone. Every call must act as its API key's principal and leave an audit row naming it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx2
import psycopg
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from psycopg import sql

from citeline.facade import Citeline
from citeline.settings import Settings
from tests.conftest import REPO
from tests.e2e.conftest import free_port, wait_ready

pytestmark = pytest.mark.e2e

DEPLOY = "how do I roll back a bad deploy"
CLI = [sys.executable, "-c", "from citeline.cli import main; main()", "mcp"]


@dataclass
class Acme:
    env: dict[str, str]
    keys: dict[str, str]
    settings: Settings
    pg_url: str
    namespace: str

    def owner_sql(self, query: str, *args: object) -> list[tuple]:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.namespace)))
            cur = conn.execute(query, args or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def doc_id(self, external_id: str) -> int:
        return self.owner_sql("SELECT id FROM documents WHERE external_id = %s", external_id)[0][0]

    def audit_row(self, id_: int) -> tuple[str, str, str, dict]:
        kind, action, principal, payload = self.owner_sql(
            "SELECT kind, action, principal, payload FROM audit_log WHERE id = %s", id_)[0]
        return kind, action, principal, payload

    def last_audit(self) -> tuple[int, str, str, str, dict]:
        return self.owner_sql("SELECT id, kind, action, principal, payload FROM audit_log ORDER BY id DESC LIMIT 1")[0]


@pytest.fixture(scope="module")
def acme(tmp_path_factory, pg_url, embedder) -> Iterator[Acme]:
    root = tmp_path_factory.mktemp("mcp") / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"e2e_mcp_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CITELINE_DATABASE_URL": pg_url, "CITELINE_DATABASE__NAMESPACE": namespace,
           "CITELINE_CONFIG": str(root / "citeline.toml"), "CITELINE_GENERATION__BACKEND": "extractive",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CITELINE_API_KEY", None)
    settings = Settings.load(root / "citeline.toml", database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": "extractive"})
    keys: dict[str, str] = {}
    with Citeline(settings, embedder=embedder) as cl:
        cl.sync()
        cl.admin.import_principals(root / "principals.toml", actor="test")
        for user in ("alice", "bob", "carol"):
            keys[user] = cl.admin.create_key(user, actor="test").secret
    try:
        yield Acme(env, keys, settings, pg_url, namespace)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


@pytest.fixture(scope="module")
def http_url(acme, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("mcp-http") / "mcp.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "--transport", "http", "--port", str(port)], env=acme.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log, path="/healthz")
        yield f"{base}/mcp"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def http_client(url: str, key: str | None, **extra: str) -> Client:
    headers = {**({"Authorization": f"Bearer {key}"} if key is not None else {}), **extra}
    return Client(streamable_http_client(url, http_client=create_mcp_http_client(headers=headers)),
                  read_timeout_seconds=120)


def stdio_client(acme: Acme, key: str) -> Client:
    return Client(StdioServerParameters(command=CLI[0], args=CLI[1:], env={**acme.env, "CITELINE_API_KEY": key},
                                        cwd=str(REPO)), read_timeout_seconds=120)


def run(client: Client, body: Callable[[Client], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with client as c:
            return await body(c)

    return anyio.run(main)


def text_of(result) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# -- checks shared by both transports -------------------------------------------------------------------
async def check_tools(c: Client) -> None:
    tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == {"search", "ask"}
    assert tools["search"].input_schema["required"] == ["query"]
    assert tools["search"].output_schema is not None and tools["ask"].annotations.read_only_hint is True
    templates = (await c.list_resource_templates()).resource_templates
    assert [t.uri_template for t in templates] == ["citeline://documents/{document_id}"]


async def search(c: Client, query: str = DEPLOY, **args: Any) -> dict:
    result = await c.call_tool("search", {"query": query, **args})
    assert not result.is_error, text_of(result)
    return result.structured_content


async def check_hostile_inputs(c: Client) -> None:
    """Each hostile call is a clean tool error naming the problem; the server keeps serving."""
    cases = [({"query": "x" * 100_000}, "at most 4000 characters"),
             ({"query": "deploy\x00; DROP TABLE chunks"}, "query contains a NUL byte"),
             ({"query": "deploy", "k": "many"}, "k"),
             ({"query": "deploy", "k": 10_000}, "less than or equal to 50"),
             ({"query": ["deploy"]}, "query"),
             ({}, "query"),
             ({"query": "deploy", "mode": "sql"}, "mode")]
    for args, expected in cases:
        result = await c.call_tool("search", args)
        assert result.is_error, args
        assert expected in text_of(result), (args, text_of(result))
    result = await c.call_tool("ask", {"question": 42})
    assert result.is_error and "question" in text_of(result)
    with pytest.raises(MCPError):
        await c.read_resource("citeline://documents/1%00")
    assert (await search(c))["hits"]  # still serving


# -- streamable HTTP --------------------------------------------------------------------------------------
def test_http_lists_tools_and_searches_as_each_principal(acme, http_url):
    run(http_client(http_url, acme.keys["alice"]), check_tools)
    alice = run(http_client(http_url, acme.keys["alice"], **{"X-Request-ID": "mcp-e2e-1"}), search)
    bob = run(http_client(http_url, acme.keys["bob"]), search)
    assert "engineering/deploy-process.md" in {h["external_id"] for h in alice["hits"]}
    visible_to_bob = {r[0] for r in acme.owner_sql(
        "SELECT d.id FROM documents d, principals p WHERE p.user_id = 'bob' AND (d.public OR d.acl && p.tokens)")}
    assert bob["hits"] and {h["document_id"] for h in bob["hits"]} <= visible_to_bob
    assert not any(h["external_id"].startswith("engineering/") for h in bob["hits"])
    for out, user in ((alice, "alice"), (bob, "bob")):
        kind, action, principal, payload = acme.audit_row(out["audit_id"])
        assert (kind, action, principal, payload["via"]) == ("search", "search", user, "mcp")
        assert [s["chunk_id"] for s in payload["shown"]] and payload["query"] == DEPLOY
        assert all(h["resource"] == f"citeline://documents/{h['document_id']}" for h in out["hits"])
    assert acme.audit_row(alice["audit_id"])[3]["request_id"] == "mcp-e2e-1"  # the caller's id, as for REST
    assert len(acme.audit_row(bob["audit_id"])[3]["request_id"]) == 32  # none sent: a new one


def test_http_ask_cites_sources_and_is_audited(acme, http_url):
    async def body(c: Client) -> Any:
        return await c.call_tool("ask", {"question": DEPLOY})

    result = run(http_client(http_url, acme.keys["alice"]), body)
    out = result.structured_content
    assert not result.is_error and out["refused"] is False and "[1]" in out["answer"]
    assert out["citations"] and all(c["url"] and c["source"] and c["title"] for c in out["citations"])
    assert "engineering/deploy-process.md" in {c["external_id"] for c in out["citations"]}
    links = [b for b in result.content if b.type == "resource_link"]
    assert {str(link.uri) for link in links} == {c["resource"] for c in out["citations"]}
    kind, _, principal, payload = acme.audit_row(out["audit_id"])
    assert (kind, principal) == ("ask", "alice") and payload["question"] == DEPLOY and payload["request_id"]


def test_http_document_resources_only_for_who_may_see_them(acme, http_url):
    deploy, plan = acme.doc_id("engineering/deploy-process.md"), acme.doc_id("hr/reorganisation-plan.md")

    async def read(c: Client, doc: int) -> str:
        try:
            contents = (await c.read_resource(f"citeline://documents/{doc}")).contents
        except MCPError as exc:
            return f"ERROR {exc}"
        return contents[0].text

    async def alice(c: Client) -> tuple[str, str, str]:
        return await read(c, deploy), await read(c, plan), await read(c, 987654321)

    runbook, forbidden, missing = run(http_client(http_url, acme.keys["alice"]), alice)
    assert runbook.startswith("# Deploy process") and "acme-deploy rollback fleet" in runbook
    assert runbook.count("## Rolling back a deploy") == 1  # the chunks' overlap is not repeated
    # forbidden and missing read the same: existence is never revealed
    assert forbidden == f"ERROR document '{plan}' not found" and missing == "ERROR document '987654321' not found"
    _, kind, action, principal, payload = acme.last_audit()
    assert (kind, action, principal, payload["found"]) == ("read", "document", "alice", False)
    assert payload["document"] == "987654321"
    assert run(http_client(http_url, acme.keys["carol"]), lambda c: read(c, plan)).startswith("# Reorganisation")


def test_http_refuses_missing_bad_and_revoked_keys(acme, http_url, embedder):
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    cases = [(None, "missing API key"), ("Basic abc", "missing API key"),
             ("Bearer not-a-key", "malformed API key"), (f"Bearer cl_{'a' * 12}_{'b' * 43}", "unknown API key")]
    for auth, message in cases:
        r = httpx.post(http_url, json=init, headers={**headers, **({"Authorization": auth} if auth else {})})
        assert r.status_code == 401 and message in r.json()["error_description"], (auth, r.text)
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert auth is None or auth.split()[-1] not in r.text  # the presented secret is never echoed
    with pytest.raises(Exception):  # noqa: B017 - the SDK client cannot even connect without a key
        run(http_client(http_url, None), lambda c: c.list_tools())

    with Citeline(acme.settings, embedder=embedder) as cl:  # a key revoked in the middle of a session
        new = cl.admin.create_key("alice", actor="test")

        async def body(c: Client) -> str:
            assert (await search(c))["hits"]
            cl.admin.revoke_key(new.key.key_id, actor="test")
            try:
                await c.call_tool("search", {"query": DEPLOY})
            except (MCPError, httpx2.HTTPStatusError, Exception) as exc:  # the next request is refused
                return f"refused: {exc}"
            return "served"

        assert run(http_client(http_url, new.secret), body).startswith("refused")


def test_http_hostile_inputs_are_clean_tool_errors(acme, http_url):
    run(http_client(http_url, acme.keys["alice"]), check_hostile_inputs)


def test_http_raw_json_rpc_with_a_lone_surrogate(acme, http_url):
    """A lone surrogate cannot be sent by the SDK's client (it is not UTF-8); a raw client can, as a JSON escape:
    the SDK refuses the message as a JSON-RPC parse error, and the session goes on serving."""
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {acme.keys['alice']}",
               "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
    call = '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{"query":"%s"}}}'
    with httpx.Client(headers=headers, timeout=60) as h:
        r = h.post(http_url, json=init)
        assert r.status_code == 200, r.text
        h.headers["mcp-session-id"] = r.headers["mcp-session-id"]
        h.headers["mcp-protocol-version"] = "2025-06-18"
        assert h.post(http_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        r = h.post(http_url, content=(call % "deploy \\ud800").encode())
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700, r.text
        r = h.post(http_url, content=(call % "deploy").encode())
        assert r.status_code == 200 and "deploy-process.md" in r.text and '"isError":false' in r.text, r.text



def test_http_a_session_id_grants_nothing(acme, http_url):
    """bob sending alice's session id still acts as bob: each request's own key decides."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search",
                                                                          "arguments": {"query": DEPLOY}}}
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    alice = {**base, "Authorization": f"Bearer {acme.keys['alice']}"}
    with httpx.Client(timeout=60) as h:
        r = h.post(http_url, json=init, headers=alice)
        session = {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        h.post(http_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**alice, **session})
        as_bob = h.post(http_url, json=call, headers={**base, **session,
                                                      "Authorization": f"Bearer {acme.keys['bob']}"})
        as_alice = h.post(http_url, json=call, headers={**alice, **session})
        no_key = h.post(http_url, json=call, headers={**base, **session})
    assert as_bob.status_code == 200 and '"isError":false' in as_bob.text and '"hits":[{' in as_bob.text
    assert "engineering/deploy-process.md" not in as_bob.text
    assert as_alice.status_code == 200 and "engineering/deploy-process.md" in as_alice.text
    assert no_key.status_code == 401
    _, kind, _, principal, _ = acme.last_audit()
    assert (kind, principal) == ("search", "alice")


# -- stdio --------------------------------------------------------------------------------------------------
def test_stdio_session_as_the_keys_principal(acme):
    plan = acme.doc_id("hr/reorganisation-plan.md")

    async def body(c: Client) -> tuple[dict, dict, str, str]:
        await check_tools(c)
        found = await search(c, "reorganisation plan merge firmware teams")
        answer = (await c.call_tool("ask", {"question": DEPLOY})).structured_content
        runbook = (await c.read_resource(answer["citations"][0]["resource"])).contents[0].text
        try:
            await c.read_resource(f"citeline://documents/{plan}")
            forbidden = "read"
        except MCPError as exc:
            forbidden = str(exc)
        await check_hostile_inputs(c)
        return found, answer, runbook, forbidden

    found, answer, runbook, forbidden = run(stdio_client(acme, acme.keys["alice"]), body)
    assert plan not in {h["document_id"] for h in found["hits"]}
    assert answer["refused"] is False and answer["citations"] and runbook.startswith("# ")
    assert forbidden == f"document '{plan}' not found"
    for audit_id, kind in ((found["audit_id"], "search"), (answer["audit_id"], "ask")):
        assert acme.audit_row(audit_id)[0] == kind and acme.audit_row(audit_id)[2] == "alice"


def test_stdio_refuses_a_missing_or_bad_key(acme, tmp_path):
    env = dict(acme.env)
    done = subprocess.run(CLI, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "missing API key: set CITELINE_API_KEY" in done.stderr
    bad = f"cl_{'a' * 12}_{'b' * 43}"
    done = subprocess.run(CLI, env={**env, "CITELINE_API_KEY": bad}, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "unknown API key" in done.stderr and bad not in done.stderr
    assert done.stdout == ""  # nothing on the protocol stream
    with pytest.raises(Exception):  # noqa: B017 - the SDK client sees the server exit before it answers
        run(Client(StdioServerParameters(command=CLI[0], args=CLI[1:], env={**env, "CITELINE_API_KEY": bad})),
            lambda c: c.list_tools())

    key_file = tmp_path / "key"
    key_file.write_text(acme.keys["bob"] + "\n")
    bob = run(Client(StdioServerParameters(command=CLI[0], args=[*CLI[1:], "--api-key-file", str(key_file)],
                                           env=env), read_timeout_seconds=120), search)
    assert acme.audit_row(bob["audit_id"])[2] == "bob"
    assert not any(h["external_id"].startswith("engineering/") for h in bob["hits"])


@pytest.mark.slow
def test_stdio_ask_through_the_default_embedded_model(acme, smollm2_dir):
    """The one call through a real model: the embedded SmolLM2 (the default backend) answers over MCP."""
    env = {**acme.env, "CITELINE_API_KEY": acme.keys["alice"], "CITELINE_GENERATION__BACKEND": "embedded",
           "CITELINE_GENERATION__OPTIONS__MODEL": str(smollm2_dir), "CITELINE_GENERATION__MAX_TOKENS": "60"}

    async def body(c: Client) -> Any:
        return await c.call_tool("ask", {"question": DEPLOY})

    result = run(Client(StdioServerParameters(command=CLI[0], args=CLI[1:], env=env), read_timeout_seconds=300),
                 body)
    out = result.structured_content
    assert not result.is_error and out["refused"] is False and out["citations"], text_of(result)
    assert out["model"] == smollm2_dir.name, out
    kind, _, principal, payload = acme.audit_row(out["audit_id"])
    assert (kind, principal, payload["model"]) == ("ask", "alice", smollm2_dir.name)
