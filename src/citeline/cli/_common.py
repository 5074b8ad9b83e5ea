"""Options and helpers shared by the command groups."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from citeline.facade import Citeline
from citeline.errors import CitelineError

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="citeline.toml to use (default: $CITELINE_CONFIG or ./citeline.toml)",
                 show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")]

console = Console(stderr=False)
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise SystemExit(code)


@contextlib.contextmanager
def opened(config: Path | None, **kwargs: Any) -> Iterator[Citeline]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=os.environ.get("CITELINE_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        with Citeline.open(config, **kwargs) as cl:
            yield cl
    except CitelineError as exc:
        fail(str(exc))


def cli_actor() -> str:
    """Who runs an admin command from the shell, for the audit log."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = f"uid {os.getuid()}"
    return f"cli:{who}"


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
