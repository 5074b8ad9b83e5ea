"""``citeline keys create|list|revoke``: API keys for the server (only their hashes are stored)."""

from __future__ import annotations

from typing import Annotated

import typer

from citeline.cli._common import (
    ConfigOption,
    JsonOption,
    OldUserOption,
    PlainTable,
    administered,
    cli_actor,
    console,
    fail,
    opened,
    print_json,
)

app = typer.Typer(no_args_is_help=True)


@app.command("create")
def create(
    user: Annotated[str | None, typer.Argument(metavar="USER", help="the principal the key acts as",
                                               show_default=False)] = None,
    old_user: OldUserOption = None,
    admin: Annotated[bool, typer.Option("--admin", help="may call /v1/admin endpoints")] = False,
    label: Annotated[str, typer.Option(help="a note to recognise the key by")] = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key for USER; it is printed once and cannot be shown again."""
    user = administered(user, old_user)
    if user is None:
        raise typer.BadParameter("name the principal: citeline keys create USER", param_hint="USER")
    with opened(config) as cl:
        new = cl.admin.create_key(user, actor=cli_actor(), admin=admin, label=label)
    if as_json:
        print_json({"key_id": new.key.key_id, "user": user, "admin": admin, "key": new.secret})
        return
    console.print(f"key {new.key.key_id} for {user}{' (admin)' if admin else ''}; store it now, it is not shown again:",
                  markup=False)
    typer.echo(new.secret)


@app.command("list")
def list_(user: Annotated[str | None, typer.Argument(metavar="USER", help="only this principal's keys (default: "
                                                     "everyone's)", show_default=False)] = None,
          old_user: OldUserOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List keys (ids, owners, state; never the secrets)."""
    user = administered(user, old_user)
    with opened(config) as cl:
        keys = cl.keys.list(user)
    if as_json:
        print_json([{"key_id": k.key_id, "user": k.user, "admin": k.is_admin, "label": k.label,
                     "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys])
        return
    table = PlainTable("key id", "user", "admin", "label", "created", "revoked")
    for k in keys:
        table.add_row(k.key_id, k.user, "yes" if k.is_admin else "", k.label, f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    console.print(table)


@app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    with opened(config) as cl:
        if not cl.admin.revoke_key(key_id, actor=cli_actor()):
            fail(f"no active key {key_id!r} (see `citeline keys list`)")
    console.print(f"revoked {key_id}", markup=False)
