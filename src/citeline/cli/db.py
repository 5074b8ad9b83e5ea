"""``citeline db status|migrate|drop-namespace``: the index's database lifecycle (logic in ``cl.database``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

import typer

from citeline.cli._common import ConfigOption, JsonOption, PlainTable, console, fail, opened, print_json

app = typer.Typer(no_args_is_help=True)

NamespaceOption = Annotated[str | None, typer.Option("--namespace", metavar="NAME", show_default=False,
                                                     help="another namespace than database.namespace")]


RUNTIME_PASSWORD_ENV = "CITELINE_RUNTIME_DB_PASSWORD"


@app.command("status")
def status(namespace: NamespaceOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Each migration of the namespace: ok, changed (edited since it ran), pending or unknown (applied by a newer
    citeline), and the login this runs as (may it migrate?). Changes nothing; exit status 1 if any is not ok."""
    with opened(config) as cl:
        name = namespace or cl.namespace
        rows = cl.database.status(name)
        login = cl.database.login(name)
    if as_json:
        print_json({"namespace": name, "login": {"name": login.login, "superuser": login.superuser,
                                                 "may_migrate": login.may_migrate},
                    "migrations": [{"version": r.version, "name": r.name, "applied_at": r.applied_at,
                                    "state": r.state.value} for r in rows]})
    else:
        table = PlainTable("version", "name", "applied at", "state", title=f"namespace {name}")
        for r in rows:
            table.add_row(f"{r.version:04d}", r.name, _when(r.applied_at), r.state.value)
        console.print(table)
        console.print(f"login {login.login}: {'may' if login.may_migrate else 'may not'} migrate namespace {name}"
                      f"{' (superuser)' if login.superuser else ''}", markup=False)
    if any(r.state.value != "ok" for r in rows):
        raise typer.Exit(1)


@app.command("migrate")
def migrate(
    runtime_login: Annotated[str | None, typer.Option(
        "--runtime-login", metavar="NAME", show_default=False,
        help=f"then create login NAME if missing (password from ${RUNTIME_PASSWORD_ENV}; set on an existing "
             "login, it is changed) and grant it citeline_reader and citeline_writer only: the login servers and "
             "the scheduler use")] = None,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Apply the configured namespace's pending migrations (creating it if needed) as this login (the admin), even
    with database.auto_migrate false; print those applied."""
    password = os.environ.get(RUNTIME_PASSWORD_ENV)  # never printed nor logged
    with opened(config) as cl:
        done = cl.database.migrate(runtime_login, password if runtime_login else None)
        name = cl.namespace
    login = done.runtime_login
    if as_json:
        report: dict[str, object] = {"namespace": name,
                                     "applied": [{"version": r.version, "name": r.name} for r in done.applied]}
        if login is not None:
            report["runtime_login"] = {"name": login.name, "created": login.created,
                                       "password_set": login.password_set, "roles": list(login.roles),
                                       "granted": list(login.granted)}
        print_json(report)
        return
    if not done.applied:
        console.print(f"namespace {name}: up to date, nothing applied", markup=False)
    for r in done.applied:
        console.print(f"applied {r.version:04d}_{r.name} to namespace {name}", markup=False)
    if login is not None:
        what = "created" if login.created else ("password changed" if login.password_set else "exists")
        console.print(f"runtime login {login.name}: {what}; holds {', '.join(login.roles)}", markup=False)


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
