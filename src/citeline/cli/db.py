"""``citeline db status|migrate|drop-namespace``: the index's database lifecycle (logic in ``cl.database``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from citeline.cli._common import ConfigOption, JsonOption, PlainTable, console, fail, opened, print_json

app = typer.Typer(no_args_is_help=True)

NamespaceOption = Annotated[str | None, typer.Option("--namespace", metavar="NAME", show_default=False,
                                                     help="another namespace than database.namespace")]


@app.command("status")
def status(namespace: NamespaceOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Each migration of the namespace: ok, changed (edited since it ran), pending or unknown (applied by a newer
    citeline). Changes nothing; exit status 1 if any is not ok."""
    with opened(config) as cl:
        name = namespace or cl.namespace
        rows = cl.database.status(name)
    if as_json:
        print_json({"namespace": name, "migrations": [
            {"version": r.version, "name": r.name, "applied_at": r.applied_at, "state": r.state.value} for r in rows]})
    else:
        table = PlainTable("version", "name", "applied at", "state", title=f"namespace {name}")
        for r in rows:
            table.add_row(f"{r.version:04d}", r.name, _when(r.applied_at), r.state.value)
        console.print(table)
    if any(r.state.value != "ok" for r in rows):
        raise typer.Exit(1)


@app.command("migrate")
def migrate(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Apply the configured namespace's pending migrations (creating it if needed); print those applied."""
    with opened(config) as cl:
        applied = cl.database.migrate()
        name = cl.namespace
    if as_json:
        print_json({"namespace": name, "applied": [{"version": r.version, "name": r.name} for r in applied]})
        return
    if not applied:
        console.print(f"namespace {name}: up to date, nothing applied", markup=False)
    for r in applied:
        console.print(f"applied {r.version:04d}_{r.name} to namespace {name}", markup=False)


@app.command("drop-namespace")
def drop_namespace(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the namespace (Postgres schema) to drop")],
    yes: Annotated[bool, typer.Option("--yes", help="really drop it: there is no undo")] = False,
    config: ConfigOption = None,
) -> None:
    """Drop a namespace and everything in it: documents, principals, keys, adapters' registry and its audit log
    (so the drop itself is not audited there; it is logged as a warning). Only a citeline namespace (one with a
    schema_migrations table) is dropped; NAME must be given even for the configured one."""
    if not yes:
        fail(f"dropping namespace {name!r} deletes its documents, principals, keys and audit log for good; "
             f"run again with --yes: citeline db drop-namespace {name} --yes")
    with opened(config) as cl:
        cl.database.drop_namespace(name)
    console.print(f"dropped namespace {name}", markup=False)


def _when(t: datetime | None) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if t else ""
