"""citeline over the Model Context Protocol: the ``search`` and ``ask`` tools and the cited documents as resources.

Built on the official MCP Python SDK (``mcp``, :class:`mcp.server.mcpserver.MCPServer`); ``citeline mcp``
serves it over stdio or streamable HTTP (:mod:`citeline.serving.mcp_http`). Every call acts as the principal of
an API key, never of anything the client writes in its arguments:

- **stdio**: the key given to the process (``CITELINE_API_KEY`` or ``--api-key-file``), checked when the server
  starts and again on every call, so a revoked key stops working at once;
- **HTTP**: ``Authorization: Bearer cl_...`` on every request, checked by the edge before the SDK sees the
  request (:class:`citeline.serving.mcp_http.BearerKeys`) and handed to the tools in the request's scope.

What each call may see is decided by PostgreSQL (the facade's search, ask and document read run as that
principal). Each call leaves one audit row naming the principal before it returns: ``ask`` the assistant's
answer row (kind ``ask``), ``search`` a row of kind ``search`` with the chunks shown, a document read a row of
kind ``read`` (also when the document was not found); each call runs under a request id (an HTTP request's
``X-Request-ID`` when it is sane, else a new one) that its audit row and log lines carry. Results name their
sources and link each cited document as the resource ``citeline://documents/{id}``; reading it returns the text
only to a principal who may see the document, and "not found" otherwise, exactly as for an id that does not exist.

Arguments are validated before any work: a wrong type, a query over 4,000 characters or a NUL byte is a tool
error naming the argument (``isError`` true; a lone surrogate is refused by the SDK's own parsing); the server
goes on serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import CallToolResult, ContentBlock, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from citeline.domain import SearchMode
from citeline.errors import AuthError, CitelineError
from citeline.facade import Authenticated, Citeline
from citeline.tracing import accept_request_id, request_context, set_principal, span

__all__ = ["AUTH_SCOPE_KEY", "DOCUMENT_URI", "AskOutput", "SearchOutput", "build_server", "document_uri",
           "serve_stdio"]

log = logging.getLogger(__name__)

AUTH_SCOPE_KEY = "citeline.mcp.caller"  # ASGI scope key: the Authenticated caller of one HTTP request
DOCUMENT_URI = "citeline://documents/{document_id}"
MAX_TEXT = 4000  # characters of a query or question (as /v1/ask)
_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

Query = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, description="what to look for")]
Question = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, description="the question to answer")]
TopK = Annotated[int, Field(ge=1, le=50, description="how many passages to return")]


def document_uri(document_id: int) -> str:
    return DOCUMENT_URI.replace("{document_id}", str(document_id))


class Hit(BaseModel):
    n: int
    document_id: int
    title: str
    url: str | None
    source: str
    external_id: str
    score: float
    text: str
    span_start: int | None
    span_end: int | None
    resource: str


class SearchOutput(BaseModel):
    query: str
    hits: list[Hit]
    audit_id: int


class Cited(BaseModel):
    n: int
    document_id: int
    title: str
    url: str | None
    source: str
    external_id: str
    snippet: str
    resource: str


class AskOutput(BaseModel):
    question: str
    answer: str
    refused: bool
    citations: list[Cited]
    verified: bool
    model: str
    audit_id: int


def _check_text(name: str, value: str) -> None:
    """PostgreSQL cannot store NUL (a lone surrogate never gets here: the SDK's JSON parser and pydantic refuse it)."""
    if "\x00" in value:
        raise ToolError(f"{name} contains a NUL byte (\\u0000); remove it")


def _link(document_id: int, title: str, source: str) -> ResourceLink:
    return ResourceLink(uri=document_uri(document_id), name=title or f"document {document_id}",
                        description=f"cited document from source {source!r}", mime_type="text/markdown")


class _Handlers:
    """The tools and the resource, bound to one facade and (stdio) one API key."""

    def __init__(self, cl: Citeline, api_key: str | None) -> None:
        self.cl = cl
        self.api_key = api_key

    def caller(self, ctx: Context) -> Authenticated:
        """The principal of this call: the HTTP request's checked key, or (stdio) the process's key, re-checked."""
        request = ctx.request_context.request
        if request is not None:
            who = request.scope.get(AUTH_SCOPE_KEY)
            if not isinstance(who, Authenticated):  # the edge did not run: never serve unauthenticated
                raise AuthError("missing API key: send 'Authorization: Bearer cl_...'")
            return who
        if self.api_key is None:
            raise AuthError("no API key for this connection: start `citeline mcp` with CITELINE_API_KEY or "
                            "--api-key-file")
        return self.cl.keys.authenticate(self.api_key)

    @contextlib.contextmanager
    def acting(self, name: str, ctx: Context, error: type[Exception]) -> Iterator[Authenticated]:
        """Run one call as its caller: under a request id (an HTTP request's sane ``X-Request-ID``, else a new
        one; it reaches the audit rows and log lines) and a span ``mcp.<name>``; a citeline error (a refused
        key, an unwritable audit log) becomes ``error`` with its message, said plainly to the client."""
        request = ctx.request_context.request
        header = request.headers.get("x-request-id") if request is not None else None
        with request_context(accept_request_id(header)[0] if header else None), span(f"mcp.{name}"):
            try:
                who = self.caller(ctx)
                set_principal(who.principal.user)
                yield who
            except CitelineError as exc:
                raise error(str(exc)) from exc

    def search(self, query: Query, ctx: Context, k: TopK = 5,
               mode: Literal["hybrid", "dense", "lexical"] = "hybrid") -> Annotated[CallToolResult, SearchOutput]:
        """Search the company's documents with the caller's access: the best passages, each with its document's
        title, URL and source, and a citeline://documents/{id} resource to read the whole document."""
        _check_text("query", query)
        with self.acting("search", ctx, ToolError) as who:
            result = self.cl.search(query, user=who.principal.user, k=k, mode=SearchMode(mode))
            hits = [Hit(n=i, document_id=h.document_id, title=h.title, url=h.url, source=h.source,
                        external_id=h.external_id, score=round(h.score, 6), text=h.text, span_start=h.span_start,
                        span_end=h.span_end, resource=document_uri(h.document_id))
                    for i, h in enumerate(result.hits, 1)]
            audit_id = self.cl.audit.append("search", "search", principal=who.principal.user, team=who.principal.team,
                                            payload=self._search_payload(who, query, k, mode, result.hits)).id
        out = SearchOutput(query=query, hits=hits, audit_id=audit_id)
        seen: dict[int, ContentBlock] = {h.document_id: _link(h.document_id, h.title, h.source) for h in hits}
        return CallToolResult(content=[TextContent(text=out.model_dump_json()), *seen.values()],
                              structured_content=out.model_dump(mode="json"))

    @staticmethod
    def _search_payload(who: Authenticated, query: str, k: int, mode: str, hits: tuple) -> dict[str, object]:
        return {"query": query, "k": k, "mode": mode, "via": "mcp", "key_id": who.key_id,
                "groups": list(who.principal.groups),
                "shown": [{"n": i, "chunk_id": h.chunk_id, "document_id": h.document_id, "source": h.source,
                           "external_id": h.external_id} for i, h in enumerate(hits, 1)]}

    def ask(self, question: Question, ctx: Context) -> Annotated[CallToolResult, AskOutput]:
        """Answer a question from the company's documents the caller may see: a grounded answer whose
        sentences cite [n], the cited sources (title, URL, snippet, resource), or a refusal when the
        documents do not say."""
        _check_text("question", question)
        with self.acting("ask", ctx, ToolError) as who:
            answer = self.cl.assistant.ask(question, who.principal)  # audited by the assistant (kind "ask")
        cited = [Cited(n=c.n, document_id=c.document_id, title=c.title, url=c.url, source=c.source,
                       external_id=c.external_id, snippet=c.snippet, resource=document_uri(c.document_id))
                 for c in answer.citations]
        out = AskOutput(question=question, answer=answer.text, refused=answer.refused, citations=cited,
                        verified=answer.verified, model=answer.model, audit_id=answer.audit_id)
        links: dict[int, ContentBlock] = {c.document_id: _link(c.document_id, c.title, c.source) for c in cited}
        text = answer.text + "".join(f"\n[{c.n}] {c.title} — {c.url or c.source}" for c in cited)
        return CallToolResult(content=[TextContent(text=text), *links.values()],
                              structured_content=out.model_dump(mode="json"))

    def document(self, document_id: str, ctx: Context) -> str:
        """A cited document's text (Markdown), readable only by a principal who may see it."""
        not_found = ResourceNotFoundError(f"document {document_id[:40]!r} not found")
        with self.acting("read", ctx, ResourceError) as who:
            doc = self.cl.document(int(document_id), user=who.principal.user) if _is_id(document_id) else None
            self.cl.audit.append("read", "document", principal=who.principal.user, team=who.principal.team,
                                 payload={"document": document_id[:40], "found": doc is not None, "via": "mcp",
                                          "key_id": who.key_id, "groups": list(who.principal.groups)})
        if doc is None:  # absent, or not visible to this principal: the same answer
            raise not_found
        head = f"# {doc.title}\n\nSource: {doc.source} ({doc.url or doc.external_id})\n\n"
        return head + doc.text


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 18  # a bigint


def build_server(cl: Citeline, *, api_key: str | None = None) -> MCPServer:
    """The MCP server over ``cl``. ``api_key``: the stdio process's key (HTTP requests bring their own)."""
    h = _Handlers(cl, api_key)
    server: MCPServer = MCPServer(
        "citeline", title="citeline", version=_version(),
        instructions="Search and ask over the company's documents with your own access. Answers cite their "
                     "sources as [n]; read a cited document through its citeline://documents/{id} resource.")
    server.add_tool(h.search, name="search", title="Search documents", annotations=_READ_ONLY)
    server.add_tool(h.ask, name="ask", title="Ask a question", annotations=_READ_ONLY)
    server.resource(DOCUMENT_URI, name="document", title="Cited document", mime_type="text/markdown")(h.document)
    return server


def serve_stdio(cl: Citeline, api_key: str, *, warm_up: Callable[[], object] = lambda: None) -> None:
    """Serve over this process's stdin and stdout as ``api_key``'s principal until the client closes stdin.

    The key is checked first (:class:`AuthError`: nothing is served). ``warm_up`` (start the database, load the
    models) runs with stdout pointed at stderr, so nothing a library prints can corrupt the protocol stream.
    """
    with _stdout_to_stderr():
        who = cl.keys.authenticate(api_key)
        warm_up()
    log.info("MCP over stdio as %s (key %s)", who.principal.user, who.key_id)
    anyio.run(build_server(cl, api_key=api_key).run_stdio_async)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("citeline")
