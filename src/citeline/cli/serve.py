"""``citeline serve``: the API server and chat page (uvicorn over :func:`citeline.serving.app.create_app`)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from citeline.cli._common import ConfigOption, err_console, json_logs, opened
from citeline.plugins import missing_module_error


def serve(
    host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 for all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the OpenAI-compatible API, /v1/ask and the chat page until interrupted."""
    try:
        import uvicorn

        from citeline.serving.app import create_app
    except ModuleNotFoundError as exc:  # a core install: the server is the [server] extra
        raise missing_module_error("citeline serve", exc) from exc

    with opened(config) as cl:
        err_console.print(f"starting: database and {cl.settings.generation.backend} backend…", markup=False)
        cl.db  # noqa: B018 - start the database and apply migrations before accepting requests
        cl.backend  # noqa: B018 - load the model now, not on the first question
        cl.embedder.embed_query("warm up")
        app = create_app(cl)
        err_console.print(f"citeline serving on http://{host}:{port}  (chat page at /, API at /v1)", markup=False)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=_log_config(uvicorn))


def model_server(
    host: Annotated[str, typer.Option(help="interface to bind; keep loopback (no authentication)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8001,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Serve the configured generation backend (default: embedded) with vLLM's OpenAI-compatible API, and the
    configured embedder as /v1/embeddings."""
    try:
        import uvicorn

        from citeline.serving.model_server import create_model_app
    except ModuleNotFoundError as exc:
        raise missing_module_error("citeline model-server", exc) from exc

    with opened(config) as cl:
        backend = cl.backend
        gen = cl.settings.generation
        app = create_model_app(backend, max_tokens=gen.max_tokens, context_tokens=gen.context_tokens,
                               embedder=lambda: cl.embedder)  # /v1/embeddings: the configured embedder
        err_console.print(f"model server ({backend.name}, base {backend.base_model}) on http://{host}:{port}/v1",
                          markup=False)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=_log_config(uvicorn))


def _log_config(uvicorn: Any) -> dict[str, Any] | None:
    """uvicorn's own text logging, or none with CITELINE_LOG_FORMAT=json: its lines then reach citeline's JSON
    handler like every other record."""
    return None if json_logs() else uvicorn.config.LOGGING_CONFIG
