"""``citeline principals add|import|list|remove|sync``: USER (positional) is the principal administered."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citeline.cli._common import ConfigOption, JsonOption, PlainTable, cli_actor, console, fail, opened, print_json
from citeline.domain import Principal

app = typer.Typer(no_args_is_help=True)


@app.command("add")
def add(
    user: Annotated[str, typer.Argument(metavar="USER", help="user id, as it appears in document access lists")],
    groups: Annotated[str, typer.Option(help="comma-separated groups, e.g. staff,engineering")] = "",
    team: Annotated[str | None, typer.Option(help="team (selects its adapter when answering)")] = None,
    config: ConfigOption = None,
) -> None:
    """Add principal USER or replace its groups."""
    try:
        principal = Principal(user, tuple(g.strip() for g in groups.split(",") if g.strip()), team)
    except ValueError as exc:
        fail(str(exc))
    with opened(config) as cl:
        cl.admin.add_principal(principal, actor=cli_actor())
    console.print(f"principal {principal.user}: groups {', '.join(principal.groups) or '(none)'}", markup=False)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="TOML file with [[principals]] tables")],
    config: ConfigOption = None,
) -> None:
    """Add or replace principals from a TOML file (user, groups, team per [[principals]] table)."""
    with opened(config) as cl:
        done = cl.admin.import_principals(path, actor=cli_actor())
    console.print(f"imported {len(done)} principals: {', '.join(p.user for p in done)}", markup=False)


@app.command("list")
def list_(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List principals and their groups."""
    with opened(config) as cl:
        found = cl.principals.list()
    if as_json:
        print_json([{"user": p.user, "groups": list(p.groups), "team": p.team} for p in found])
        return
    table = PlainTable("user", "groups", "team")
    for p in found:
        table.add_row(p.user, ", ".join(p.groups), p.team or "")
    console.print(table)


@app.command("remove")
def remove(user: Annotated[str, typer.Argument(metavar="USER", help="the principal to remove")],
           config: ConfigOption = None) -> None:
    """Remove principal USER and revoke its API keys (a principal re-created later under the name gets new keys)."""
    with opened(config) as cl:
        revoked = cl.admin.delete_principal(user, actor=cli_actor())
    if revoked is None:
        fail(f"no principal named {user!r}")
    console.print(f"removed {user}; revoked keys: {', '.join(revoked) or '(none)'}", highlight=False, markup=False)


@app.command("sync")
def sync(source: Annotated[str, typer.Option("--source", help="a [[principal_sources]] name (ldap, scim, ...)")],
         config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Sync the principals a principal source manages (added, updated, removed with their keys revoked)."""
    with opened(config) as cl:
        done = cl.principal_sources.sync(source, actor=cli_actor())
    if as_json:
        print_json(done.summary())
        return
    if done.empty:
        console.print(f"principal source {source}: unchanged", markup=False)
    else:
        console.print(f"principal source {source}: {len(done.added)} added, {len(done.updated)} updated, "
                      f"{len(done.removed)} removed ({len(done.revoked_keys)} keys revoked)", markup=False)
    for user in done.conflicts:
        console.print(f"  skipped {user}: a principal of that name exists and is not managed by {source}",
                      markup=False)
