"""``citeline sources list|status``."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from citeline.cli._common import ConfigOption, JsonOption, PlainTable, console, opened, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_(config: ConfigOption = None) -> None:
    """Sources configured in citeline.toml."""
    with opened(config) as cl:
        table = PlainTable("name", "connector", "schedule")
        for s in cl.settings.sources:
            table.add_row(s.name, s.connector, s.schedule or "")
        console.print(table)


@app.command("status")
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Last run, next run (from the cron schedule, UTC), counts and errors per source."""
    with opened(config) as cl:
        rows = cl.sources.status()
    if as_json:
        print_json([vars(r) for r in rows])
        return
    table = PlainTable("source", "documents", "last run", "started", "finished", "next run", "added", "updated",
                  "deleted", "failed", "error")
    for r in rows:
        c = r.counts
        table.add_row(r.name, str(r.documents), r.last_run_status or "never", _when(r.last_run_started),
                      _when(r.last_run_finished), _when(r.next_run) if r.schedule else "manual (no schedule)",
                      str(c["added"]), str(c["updated"]), str(c["deleted"]), str(c["failed"]), r.error or "")
    console.print(table)


def _when(t: datetime | None) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if t else ""
