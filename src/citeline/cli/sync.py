"""``citeline sync [SOURCE]``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from citeline.cli._common import ConfigOption, JsonOption, PlainTable, console, err_console, escape, opened, print_json
from citeline.workflows import SyncReport


def sync(
    source: Annotated[str | None, typer.Argument(help="source name from citeline.toml (default: all)")] = None,
    full: Annotated[bool, typer.Option("--full", help="ignore the saved cursor and start from the beginning")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull sources into the index: chunk, embed, write; skip unchanged; prune deleted."""
    with opened(config) as cl:
        show = err_console.is_terminal and not as_json
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=err_console, disable=not show, transient=True) as progress:
            task = progress.add_task("starting", total=None)

            def on_progress(r: SyncReport) -> None:
                progress.update(task, description=f"{escape(r.source)}: {r.seen} seen, {r.chunks} chunks written, "
                                                  f"{r.deleted} deleted, {r.failed} failed")

            reports = cl.sync(source, full=full, on_progress=on_progress)
    if as_json:
        print_json([{k: v for k, v in vars(r).items()} for r in reports])
        return
    table = PlainTable(title="sync summary")
    for col in ("source", "added", "updated", "unchanged", "deleted", "failed", "chunks", "seconds"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in reports:
        table.add_row(r.source, str(r.added), str(r.updated), str(r.unchanged), str(r.deleted), str(r.failed),
                      str(r.chunks), f"{r.seconds:.1f}")
    console.print(table)
    for r in reports:
        for external_id, reason in r.failures:
            console.print(f"[yellow]failed[/] {escape(f'{r.source}/{external_id}: {reason}')}", highlight=False)
    if any(r.failed for r in reports):
        raise typer.Exit(code=2)
