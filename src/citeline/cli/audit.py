"""``citeline audit verify|export``: check the hash chain; export rows as JSON lines or CSV."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from citeline.cli._common import ConfigOption, JsonOption, console, err_console, fail, opened, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("verify")
def verify(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Recompute the hash chain; exit 1 if any row was edited or deleted."""
    with opened(config) as cl:
        report = cl.audit.verify()
    if as_json:
        print_json({"ok": report.ok, "rows": report.rows, "head": report.head, "problems": list(report.problems)})
    elif report.ok:
        console.print(f"audit log intact: {report.rows} rows, head {report.head}")
    else:
        for p in report.problems:
            err_console.print(f"[red]{p}[/]", highlight=False)
        err_console.print(f"audit log BROKEN: {len(report.problems)} problems in {report.rows} rows")
    if not report.ok:
        raise SystemExit(1)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(f"--since {value!r}: give an ISO date or time, e.g. 2026-11-01 or 2026-11-01T08:00:00+00:00")


@app.command("export")
def export(
    since: Annotated[str | None, typer.Option(help="only rows at or after this ISO date/time")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    config: ConfigOption = None,
) -> None:
    """Export audit rows (with their hashes, so a copy can be verified elsewhere)."""
    if fmt not in ("jsonl", "csv"):
        fail(f"--format {fmt!r}: use jsonl or csv")
    when = _since(since)
    with opened(config) as cl:
        out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            for line in cl.audit.export(fmt, since=when):
                out.write(line)
        finally:
            if output:
                out.close()
