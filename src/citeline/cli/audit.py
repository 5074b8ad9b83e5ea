"""``citeline audit verify|anchor|export|replay``: check the keyed hash chain, write a signed head, export rows,
replay the chunks an audited answer was shown."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from citeline.cli._common import (
    ConfigOption,
    JsonOption,
    cli_actor,
    console,
    err_console,
    fail,
    opened,
    print_json,
)

app = typer.Typer(no_args_is_help=True)


def _read_anchor(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read the anchor {path} ({exc}): give a file written by `citeline audit anchor`")
    if not isinstance(found, dict):
        fail(f"{path} is not an anchor written by `citeline audit anchor`")
    return found


@app.command("verify")
def verify(
    anchor: Annotated[Path | None, typer.Option(help="also check a head written by `citeline audit anchor` (catches "
                                                "a truncated tail)")] = None,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Recompute the keyed hash chain; exit 1 if any row was edited, forged or deleted (or the anchor fails)."""
    head = _read_anchor(anchor) if anchor else None
    with opened(config) as cl:
        report = cl.audit.verify(anchor=head)
    legacy = f", {report.legacy_rows} legacy rows (before the chain was keyed)" if report.legacy_rows else ""
    if as_json:
        print_json(report.as_dict())
    elif report.ok:
        anchored = f"; anchor row {report.anchor_id} from {anchor} holds" if head is not None else ""
        console.print(f"audit log intact: {report.rows} rows{legacy}, head row {report.head_id} {report.head}"
                      f"{anchored}", highlight=False, markup=False)
    else:
        for p in report.problems:
            err_console.print(p, style="red", highlight=False, markup=False)
        err_console.print(f"audit log BROKEN: {len(report.problems)} problems in {report.rows} rows")
    if not report.ok:
        raise SystemExit(1)


@app.command("anchor")
def anchor(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the anchor here (keep it outside the "
                                                "database: another host, a ticket, a log shipper)")] = None,
    config: ConfigOption = None,
) -> None:
    """Write the chain's signed head (last id, its hash, the row count, the time) as JSON.

    Later, `citeline audit verify --anchor FILE` fails if the chain no longer holds that head unchanged
    (a truncated tail, a rewritten chain). The signature uses the audit key; the key is not in the file.
    """
    with opened(config) as cl:
        head = cl.audit.anchor()
    text = json.dumps(head, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)
    console.print(f"anchored row {head['id']} ({head['rows']} rows) in {output}", highlight=False, markup=False)


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


@app.command("replay")
def replay(
    row: Annotated[int, typer.Argument(min=1, help="the audit row's id (an answer, a search or a view-as search)")],
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """The chunks an audited answer was shown, as they are today: still indexed (then unchanged), and whether
    the asker may still see each. Writes an audit row of its own."""
    with opened(config) as cl:
        found = cl.inspect.replay(row, actor=cli_actor())
    if found is None:
        fail(f"no audit row {row}: see `citeline audit export`")
    chunks = [{**rec, "exists": now.exists, "unchanged": now.exists, "visible_now": now.visible, "title": now.title,
               "url": now.url, "text": now.text} for rec, now in found.chunks]
    if as_json:
        print_json({"row": found.row.as_dict(), "asker": found.asker, "asker_exists": found.asker_exists,
                    "chunks": chunks})
        return
    console.print(f"row {row} ({found.row.kind}/{found.row.action}) at {found.row.at.isoformat()}, shown to "
                  f"{found.asker or 'nobody'}{'' if found.asker_exists else ' (no longer a principal)'}",
                  highlight=False, markup=False)
    for c in chunks:
        state = "gone (re-indexed or deleted)" if not c["exists"] else \
            "unchanged, visible today" if c["visible_now"] else "unchanged, NOT visible to the asker today"
        console.print(f"[{c.get('n')}] chunk {c['chunk_id']} {c.get('source')}/{c.get('external_id')}: {state}",
                      highlight=False, markup=False)
