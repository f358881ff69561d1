"""`tearline dev`: local keys and clients for development, nothing else."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from app import bootstrap
from app.auth.client import make_assertion
from app.auth.scopes import scopes_for_member
from app.auth.service import TokenRequestError, issue_token
from app.cli.common import fail, refusals, session_scope, settings_or_exit
from app.config import Settings
from app.kit.jwt import SigningKey
from app.members.models import Client, ClientKey
from app.members.service import add_client

app = typer.Typer(
    help="Development helpers (refused outside development mode).", no_args_is_help=True
)


def _require_development(settings: Settings) -> None:
    if not settings.is_development:
        raise fail("refused: `tearline dev` works only with TEARLINE_ENV=development")


def thumbprint(key: SigningKey) -> str:
    """RFC 7638 JWK thumbprint of the public key, used as its kid."""
    jwk = key.public_jwk()
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)


def load_dev_key(settings: Settings, code: str) -> tuple[str, SigningKey]:
    """The client id and private key of `<CODE>.dev` as `dev init` wrote them."""
    client_id = f"{code}.dev"
    pem_path = settings.dev_clients_dir / f"{client_id}.pem"
    kid_path = settings.dev_clients_dir / f"{client_id}.kid"
    if not pem_path.exists() or not kid_path.exists():
        raise fail(f"no development key for {client_id}; run `tearline dev init` first")
    return client_id, SigningKey.from_pem(kid_path.read_text().strip(), pem_path.read_text())


@app.command("init")
def init() -> None:
    """Create service keys, keyring, database and one `<CODE>.dev` client per member."""
    settings = settings_or_exit()
    _require_development(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with refusals():
        bootstrap.upgrade_database(settings.resolved_database_url)
        state = bootstrap.build_state(settings)
        bootstrap.prepare_database(state)
    bundle = state.policy.bundle
    created = 0
    with session_scope(settings) as session:
        for code, member in sorted(bundle.members.items()):
            client_id = f"{code}.dev"
            pem_path = settings.dev_clients_dir / f"{client_id}.pem"
            kid_path = settings.dev_clients_dir / f"{client_id}.kid"
            if pem_path.exists():
                key = SigningKey.from_pem("pending", pem_path.read_text())
            else:
                key = SigningKey.generate("pending")
            kid = thumbprint(key)
            key = SigningKey(kid=kid, private_key=key.private_key)
            client = session.get(Client, client_id)
            if client is None:
                add_client(
                    session,
                    bundle,
                    client_id=client_id,
                    public_pem=key.public_pem(),
                    kid=kid,
                    scopes=list(scopes_for_member(member.is_chair)),
                )
                created += 1
            elif session.scalar(select(ClientKey).where(ClientKey.kid == kid)) is None:
                session.add(
                    ClientKey(
                        kid=kid, client_id=client_id, alg="ES256", public_pem=key.public_pem()
                    )
                )
            if not pem_path.exists():
                _write_private(pem_path, key.private_pem())
            kid_path.write_text(kid + "\n")
    state.db.dispose()
    typer.echo(f"development data ready in {settings.data_dir} ({created} clients created)")


@app.command("token")
def token(
    code: Annotated[str, typer.Argument(help="Member code, e.g. ITA")],
    scope: Annotated[list[str] | None, typer.Option(help="Scope to request (repeatable)")] = None,
) -> None:
    """Print an access token for the member's `<CODE>.dev` client."""
    settings = settings_or_exit()
    _require_development(settings)
    client_id, key = load_dev_key(settings, code.upper())
    with refusals():
        state = bootstrap.build_state(settings)
    assertion = make_assertion(client_id, key, state.issuer)
    try:
        with session_scope(settings) as session:
            issued = issue_token(
                session,
                grant_type="client_credentials",
                assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                assertion=assertion,
                requested_scope=" ".join(scope) if scope else None,
                issuer=state.issuer,
                signing_key=state.signing_key,
                ttl=settings.access_token_ttl,
            )
    except TokenRequestError as exc:
        raise fail(f"refused: {exc.error}") from None
    finally:
        state.db.dispose()
    typer.echo(issued.access_token)
