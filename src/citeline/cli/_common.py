"""Options and helpers shared by the command groups.

Rich reads ``[...]`` as style tags, so text that is not ours (errors, names, titles, sources) and help
written with literal brackets (``[[sources]]``) must never reach it as markup: :func:`fail` escapes its
message, :class:`PlainTable` shows every cell and title as written, and :class:`LiteralHelpGroup` (the root
command) escapes every help text below it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from citeline import tracing
from citeline.errors import CitelineError
from citeline.facade import Citeline

__all__ = ["AS_USER_HELP", "AsUserOption", "ConfigOption", "JsonOption", "LiteralHelpGroup", "OldUserOption",
           "PlainTable", "administered", "cli_actor", "console", "err_console", "escape", "fail", "json_logs", "opened",
           "prepare", "print_json", "reported"]

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="citeline.toml to use (default: $CITELINE_CONFIG or ./citeline.toml)",
                 show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")]
# One way to name a user: `--as USER` is the principal a command acts as (whose access it has: search, ask,
# adapter eval --grounding); a positional USER is the principal a command administers (principals add/remove,
# keys create/list).
AS_USER_HELP = "act as this principal: only the documents it may see (see `citeline principals list`)"
AsUserOption = Annotated[str | None, typer.Option("--as", metavar="USER", help=AS_USER_HELP, show_default=False)]
# `keys create --user USER` was documented before USER became positional: still accepted, not shown
OldUserOption = Annotated[str | None, typer.Option("--user", hidden=True, show_default=False,
                                                   help="the USER argument's former spelling")]

console = Console(stderr=False)
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise SystemExit(code)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """A library error ends the command with ``error: ...`` and exit status 1 instead of a traceback."""
    try:
        yield
    except CitelineError as exc:
        fail(str(exc))


def prepare() -> None:
    """Before a command touches the core: models are read from local files only (no Hugging Face Hub lookups)
    unless HF_HUB_OFFLINE says otherwise; log lines at CITELINE_LOG_LEVEL (default WARNING) go to stderr, as
    text or, with CITELINE_LOG_FORMAT=json, one JSON object per line; spans are exported when the OTEL_*
    variables ask for it (:func:`citeline.tracing.configure_tracing`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with reported():
        tracing.configure_logging(os.environ.get("CITELINE_LOG_LEVEL", "WARNING"),
                                  os.environ.get("CITELINE_LOG_FORMAT", "text"))
        tracing.configure_tracing()


def json_logs() -> bool:
    """Whether log lines are JSON (CITELINE_LOG_FORMAT=json; checked by :func:`prepare`)."""
    return os.environ.get("CITELINE_LOG_FORMAT", "text").strip().lower() == "json"


@contextlib.contextmanager
def opened(config: Path | None, **kwargs: Any) -> Iterator[Citeline]:
    prepare()
    with reported(), Citeline.open(config, **kwargs) as cl:
        yield cl


def administered(user: str | None, old_spelling: str | None) -> str | None:
    """The positional USER, or the same principal given with the hidden ``--user`` (not two different ones)."""
    if user is not None and old_spelling is not None and user != old_spelling:
        raise typer.BadParameter(f"two principals given: {user!r} and --user {old_spelling!r}", param_hint="USER")
    return user if user is not None else old_spelling


def cli_actor() -> str:
    """Who runs an admin command from the shell, for the audit log."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = f"uid {os.getuid()}"
    return f"cli:{who}"


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")


class PlainTable(Table):
    """A table whose headers, cells and title are shown as written (plain strings are not read as markup);
    pass a :class:`rich.text.Text` for a styled cell."""

    def __init__(self, *headers: str, title: str | None = None, **kwargs: Any) -> None:
        super().__init__(title=Text(title, style="table.title") if title is not None else None, **kwargs)
        for header in headers:
            self.add_column(header)

    def add_column(self, header: Any = "", *args: Any, **kwargs: Any) -> None:
        super().add_column(Text(header) if isinstance(header, str) else header, *args, **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)


class LiteralHelpGroup(TyperGroup):
    """The root command: the help of every command, group and parameter below it is shown as written
    (``[[principals]]`` stays ``[[principals]]`` instead of being read as a Rich style tag)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _escape_help(self)


def _escape_help(command: Any) -> None:
    """Escape the help texts of ``command`` and everything under it (Typer builds these afresh per run)."""
    for attr in ("help", "short_help", "epilog"):
        text = getattr(command, attr, None)
        if isinstance(text, str):
            setattr(command, attr, escape(text))
    for param in command.params:
        text = getattr(param, "help", None)
        if isinstance(text, str):
            param.help = escape(text)
    for sub in getattr(command, "commands", {}).values():
        _escape_help(sub)
