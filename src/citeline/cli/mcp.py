"""``citeline mcp``: the ``search`` and ``ask`` tools (and cited documents) for MCP clients, as a key's principal.

The server is :mod:`citeline.serving.mcp` (stdio) and :mod:`citeline.serving.mcp_http` (streamable HTTP).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Annotated

import typer

from citeline.cli._common import ConfigOption, err_console, opened
from citeline.errors import AuthError
from citeline.plugins import missing_module_error

KEY_ENV = "CITELINE_API_KEY"  # stdio: the key an MCP client's server entry passes in its environment


class McpTransport(str, enum.Enum):
    STDIO = "stdio"
    HTTP = "http"


def _stdio_key(key_file: Path | None) -> str:
    """The stdio server's key: from ``--api-key-file`` (first line) or $CITELINE_API_KEY; never an argument
    (a command line is visible to every user of the machine)."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {key_file}: {exc.strerror}", param_hint="--api-key-file") from exc
    else:
        key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise AuthError(f"missing API key: set {KEY_ENV} or pass --api-key-file (create a key with "
                        "`citeline keys create USER`)")
    return key


def mcp(
    transport: Annotated[McpTransport, typer.Option(help="stdio (a client starts this command) or http "
                                                    "(streamable HTTP; each request sends its own key)")]
        = McpTransport.STDIO,
    api_key_file: Annotated[Path | None, typer.Option("--api-key-file", help="stdio: a file holding the API key "
                                                      f"to act as (default: ${KEY_ENV})", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="http: interface to bind (0.0.0.0 for all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="http: port")] = 8090,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="http: uvicorn log level")] = "warning",
) -> None:
    """Serve search and ask over the Model Context Protocol with exactly the access of an API key's principal."""
    try:
        from citeline.serving.mcp import serve_stdio
        from citeline.serving.mcp_http import MCP_PATH, serve_http
    except ModuleNotFoundError as exc:  # a core install: the MCP server is in the [server] extra
        raise missing_module_error("citeline mcp", exc) from exc
    if transport is McpTransport.HTTP and api_key_file is not None:
        raise typer.BadParameter("over HTTP every request sends its own key (Authorization: Bearer cl_...)",
                                 param_hint="--api-key-file")
    key = _stdio_key(api_key_file) if transport is McpTransport.STDIO else None
    with opened(config) as cl:

        def warm_up() -> None:
            cl.db  # noqa: B018 - start the database and apply migrations before the first call
            cl.backend  # noqa: B018 - load the model now, not on the first question
            cl.embedder.embed_query("warm up")

        if key is not None:
            serve_stdio(cl, key, warm_up=warm_up)
            return
        warm_up()
        err_console.print(f"citeline MCP on http://{host}:{port}{MCP_PATH} (streamable HTTP; "
                          "Authorization: Bearer cl_... on every request)", markup=False)
        serve_http(cl, host=host, port=port, log_level=log_level)
