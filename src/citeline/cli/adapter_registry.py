"""``citeline adapter register|list|promote|retire|sync``: the registry and hot swap on the model servers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citeline.cli._common import (
    ConfigOption,
    JsonOption,
    PlainTable,
    cli_actor,
    console,
    escape,
    fail,
    opened,
    print_json,
)

__all__ = ["attach", "list_", "promote", "register", "retire", "sync"]


def register(
    path: Annotated[Path, typer.Argument(help="a PEFT LoRA adapter folder (what `citeline adapter train` writes)")],
    team: Annotated[str, typer.Option("--team", help="the team whose requests may use it")],
    name: Annotated[str | None, typer.Option(help="adapter name (default: the team); the served name adds the "
                                             "version")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check an adapter against the served base model and record it as a new version (not yet serving)."""
    with opened(config) as cl:
        adapter = cl.adapters.register(path, team=team, name=name, actor=cli_actor())
    if as_json:
        print_json(adapter.as_dict())
        return
    console.print(f"registered {adapter.served_name} for team {adapter.team} (status {adapter.status}); "
                  f"promote it with `citeline adapter promote {adapter.served_name}`", markup=False)


def list_(team: Annotated[str | None, typer.Option(help="only this team's adapters")] = None,
          config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Registered adapters: served name, team, status, rank and evaluation numbers."""
    with opened(config) as cl:
        adapters = cl.adapters.list(team=team)
    if as_json:
        print_json([a.as_dict() for a in adapters])
        return
    table = PlainTable("served name", "team", "status", "rank", "format", "baseline", "created", "promoted")
    for a in adapters:
        m = a.metrics
        table.add_row(a.served_name, a.team, a.status, str(a.rank), _num(m.get("format_compliance")),
                      _num(m.get("baseline_format_compliance")), f"{a.created_at:%Y-%m-%d %H:%M}",
                      f"{a.promoted_at:%Y-%m-%d %H:%M}" if a.promoted_at else "")
    console.print(table)


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


def promote(
    served_name: Annotated[str, typer.Argument(help="a registered adapter's served name")],
    force: Annotated[bool, typer.Option("--force", help="promote although it does not beat the prompting "
                                        "baseline (or was never evaluated)")] = False,
    drain: Annotated[float | None, typer.Option(help="seconds before the old version is unloaded "
                                                "(default adapters.drain_s)")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Load on every model server, make it the team's adapter, then unload the previous version."""
    with opened(config) as cl:
        result = cl.adapters.promote(served_name, actor=cli_actor(), force=force, drain_s=drain)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(f"{served_name} is now team {result.adapter.team}'s adapter (loaded on "
                  f"{', '.join(result.loaded_on) or 'no remote server: in process on first use'})", markup=False)
    if result.previous:
        console.print(f"unloaded the previous version {result.previous.served_name} from "
                      f"{', '.join(result.unloaded_from) or 'nothing'}", markup=False)
    for error in result.errors:
        console.print(f"[yellow]warning:[/] {escape(error)}")


def retire(served_name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Withdraw an adapter (its team falls back to the base model); `citeline adapter sync` unloads it."""
    with opened(config) as cl:
        adapter = cl.adapters.retire(served_name, actor=cli_actor())
    console.print(f"retired {adapter.served_name}; run `citeline adapter sync` to unload it from the model servers",
                  markup=False)


def sync(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Make every configured model server serve exactly the active adapters (e.g. after a restart)."""
    with opened(config) as cl:
        reports = cl.adapters.sync(actor=cli_actor())
    if as_json:
        print_json([r.as_dict() for r in reports])
    else:
        table = PlainTable("server", "loaded", "unloaded", "kept", "errors")
        for r in reports:
            table.add_row(r.host, ", ".join(r.loaded), ", ".join(r.unloaded), ", ".join(r.kept), "\n".join(r.errors))
        console.print(table)
    if not reports:
        fail("no model server to sync: set adapters.replicas (or generation.backend = 'openai' with base_url)")
    if any(not r.ok for r in reports):
        raise typer.Exit(1)


def attach(app: typer.Typer) -> None:
    """Add these commands to the ``citeline adapter`` group."""
    app.command("register")(register)
    app.command("list")(list_)
    app.command("promote")(promote)
    app.command("retire")(retire)
    app.command("sync")(sync)
