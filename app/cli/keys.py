"""`tearline keys`: the local keyring."""

from __future__ import annotations

import typer

from app.audit import service as audit
from app.cli.common import fail, session_scope, settings_or_exit
from app.keys.provider import KeyringError, LocalKeyring
from app.kit import crypto
from app.search.index import BlindIndex

app = typer.Typer(help="Service keys.", no_args_is_help=True)


@app.command("init")
def init() -> None:
    """Create the local keyring for the configured environment (kept if it already exists)."""
    settings = settings_or_exit()
    if settings.key_provider != "local":
        raise fail("refused: TEARLINE_KEY_PROVIDER is not 'local'; no keyring file to make")
    try:
        keyring = LocalKeyring.create(
            settings.data_dir,
            development=settings.is_development,
            require_strict_permissions=not settings.is_development,
        )
    except KeyringError as exc:
        raise fail(f"refused: {exc}") from None
    kind = "development" if keyring.is_development else "production"
    typer.echo(f"{kind} keyring ready at {keyring.path}")


@app.command("rotate-index")
def rotate_index() -> None:
    """Replace the blind-index key in the local keyring. Stop the API processes first, then run
    `tearline search reindex` and start them again: searches find only rows of the key they hold."""
    settings = settings_or_exit()
    if settings.key_provider != "local":
        raise fail("refused: TEARLINE_KEY_PROVIDER is not 'local'; set TEARLINE_INDEX_KEY instead")
    try:
        keyring = LocalKeyring.load(
            settings.data_dir, require_strict_permissions=not settings.is_development
        )
    except KeyringError as exc:
        raise fail(f"refused: {exc}") from None
    key = crypto.new_key()
    old_id, new_id = BlindIndex(keyring.index_key()).key_id, BlindIndex(key).key_id
    # Recorded first: a rotation that cannot be audited does not happen.
    with session_scope(settings) as session:
        audit.record(
            session,
            audit.OPERATOR,
            audit.Entry(
                action="key.rotate_index",
                decision="allow",
                target="index_key",
                reasons=(f"old:{old_id}", f"new:{new_id}"),
            ),
        )
    try:
        keyring.rotate_index_key(key)
    except KeyringError as exc:
        raise fail(f"refused: {exc}") from None
    typer.echo(f"index key {old_id} replaced by {new_id}; now run `tearline search reindex`")
