"""The ``citeline`` command line: one Typer app per command group, logic in :class:`citeline.Citeline` and
:mod:`citeline.workflows` (the CLI imports nothing else of the core).

Naming a user: ``--as USER`` is the principal a command acts as (``search``, ``ask``, ``adapter eval
--grounding``: only what USER may see); a positional ``USER`` is the principal a command administers
(``principals add|remove USER``, ``keys create|list USER``).
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Annotated

import typer

from citeline.cli import (
    adapter,
    adapter_registry,
    ask,
    audit,
    db,
    evaluate,
    feedback,
    keys,
    mcp,
    principals,
    scheduler,
    search,
    serve,
    sources,
    sync,
)
from citeline.cli._common import LiteralHelpGroup, fail
from citeline.errors import CitelineError
from citeline.plugins import extra_for, missing_module_error

__all__ = ["app", "main"]

app = typer.Typer(
    name="citeline",
    cls=LiteralHelpGroup,
    help="Permission-aware retrieval over your company's documents.\n\n"
         "--as USER: act as that principal (see only what it may see); a positional USER: the principal "
         "being administered.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"citeline {importlib.metadata.version('citeline')}")  # pyproject's, as citeline.__version__
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print citeline's version and exit")] = False) -> None:
    """Permission-aware retrieval over your company's documents."""


app.command("sync")(sync.sync)
app.command("search")(search.search)
app.command("ask")(ask.ask)
app.command("serve")(serve.serve)
app.command("model-server")(serve.model_server)
app.command("scheduler")(scheduler.scheduler)
app.command("mcp")(mcp.mcp)
app.add_typer(principals.app, name="principals", help="Users and their groups (who may see what).")
app.add_typer(sources.app, name="sources", help="Configured sources and their sync state.")
app.add_typer(evaluate.app, name="eval", help="Measure retrieval (BEIR files) and answer quality (QA files).")
app.add_typer(keys.app, name="keys", help="API keys for the server.")
app.add_typer(audit.app, name="audit", help="Verify and export the audit log.")
app.add_typer(db.app, name="db", help="The index's database: migrations' status, migrate, drop a namespace.")
app.add_typer(feedback.app, name="feedback", help="Users' feedback on answers, per team and model.")
adapter.app.add_typer(feedback.data_app, name="data", help="Training data for a team's adapter, from its users' "
                      "feedback.")
# one `adapter` group: training commands (citeline.cli.adapter) and the registry and hot-swap commands
adapter_registry.attach(adapter.app)
app.add_typer(adapter.app, name="adapter", help="Team LoRA adapters: check data, train, evaluate, register, "
              "promote, sync to the model servers.")


def main() -> None:
    try:
        app()
    except CitelineError as exc:
        fail(str(exc))
    except ModuleNotFoundError as exc:  # a command that needs an extra this install lacks (torch in a [server] one)
        if extra_for(exc) is None:
            raise
        fail(str(missing_module_error("this command", exc)))
    except KeyboardInterrupt:
        sys.exit(130)
