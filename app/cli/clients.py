"""`tearline clients`: register, list and revoke member clients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail, refusals, session_scope, settings_or_exit
from app.members import service
from app.policy.bundle import load_bundle

app = typer.Typer(help="Member clients and their public keys.", no_args_is_help=True)


@app.command("add")
def add(
    client_id: Annotated[str, typer.Argument(help="<MEMBER>.<name>, e.g. ITA.liaison")],
    public_key: Annotated[Path, typer.Option(help="PEM file of the client's public key")],
    kid: Annotated[str, typer.Option(help="Key id the client puts in its assertions")],
    scope: Annotated[
        list[str] | None, typer.Option(help="Scope (repeatable; default: all its member may hold)")
    ] = None,
) -> None:
    """Register a client with its public key."""
    settings = settings_or_exit()
    with refusals():
        bundle = load_bundle(Path(settings.policy_dir))
    try:
        with session_scope(settings) as session:
            info = service.add_client(
                session,
                bundle,
                client_id=client_id,
                public_pem=public_key.read_text(),
                kid=kid,
                scopes=scope,
            )
    except (service.ClientError, ValueError) as exc:
        raise fail(f"refused: {exc}") from None
    typer.echo(f"{info.id} registered for {info.member} with scopes {' '.join(info.scopes)}")


@app.command("list")
def list_() -> None:
    """List clients, their status, scopes and key ids."""
    settings = settings_or_exit()
    with session_scope(settings) as session:
        for c in service.list_clients(session):
            typer.echo(f"{c.id}\t{c.status}\t{' '.join(c.scopes)}\t{','.join(c.kids)}")


@app.command("revoke")
def revoke(client_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a client: its keys and unexpired tokens stop working at once."""
    settings = settings_or_exit()
    try:
        with session_scope(settings) as session:
            service.revoke_client(session, client_id)
    except service.ClientError as exc:
        raise fail(f"refused: {exc}") from None
    typer.echo(f"{client_id} revoked")
