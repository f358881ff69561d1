"""`tearline keys`: key versions, rotation, re-wrapping and retirement."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import Engine, func, select

from app import bootstrap
from app.audit import service as audit
from app.cli.common import fail, refusals, session_scope, settings_or_exit
from app.config import Settings
from app.db import make_engine, make_sessionmaker, utcnow
from app.keys import lifecycle
from app.keys.models import MemberKey
from app.keys.provider import KeyProvider, KeyringError, LocalKeyring, SigningEntry
from app.keys.service import CURRENT_VERSION_TTL, Envelope
from app.kit import crypto
from app.search.index import BlindIndex

app = typer.Typer(help="Service keys.", no_args_is_help=True)

# A new signing key is only published for this long before it signs (JWKS caches, processes).
SIGNING_LEAD_SECONDS = 3600


def _operator_record(settings: Settings, action: str, target: str, *reasons: str) -> None:
    """An audit entry of the operator, committed now (before the change it records)."""
    with session_scope(settings) as session:
        entry = audit.Entry(action=action, decision="allow", target=target, reasons=reasons)
        audit.record(session, audit.OPERATOR, entry)


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
    _operator_record(settings, "key.rotate_index", "index_key", f"old:{old_id}", f"new:{new_id}")
    try:
        keyring.rotate_index_key(key)
    except KeyringError as exc:
        raise fail(f"refused: {exc}") from None
    typer.echo(f"index key {old_id} replaced by {new_id}; now run `tearline search reindex`")


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.resolved_database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _provider(settings: Settings) -> KeyProvider:
    with refusals():
        return bootstrap.load_key_provider(settings)


def _local(settings: Settings, what: str) -> LocalKeyring:
    if settings.key_provider != "local":
        raise fail(
            f"refused: {what} changes the local keyring; with TEARLINE_KEY_PROVIDER=env the "
            "deployment's secret store holds the keys (see docs/operations.md)"
        )
    try:
        return LocalKeyring.load(
            settings.data_dir, require_strict_permissions=not settings.is_development
        )
    except KeyringError as exc:
        raise fail(f"refused: {exc}") from None


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """Every key version, what it protects (data keys, webhook secrets, member keys) and what a
    re-wrap still has to move."""
    settings = settings_or_exit()
    provider = _provider(settings)
    with _engine(settings) as engine, engine.connect() as conn:
        found = lifecycle.status(conn, provider, provider.held_master_versions())
    now = utcnow()
    signing = [
        {
            "kid": e.kid,
            "state": "retired"
            if e.private_pem is None
            else "pending"
            if e.activates_at is not None and e.activates_at > now
            else "active",
            "activates_at": e.activates_at.isoformat() if e.activates_at else None,
        }
        for e in provider.signing_entries()
    ]
    index_id = BlindIndex(provider.index_key()).key_id
    if as_json:
        document: dict[str, Any] = {
            "masters": [asdict(m) for m in found.masters],
            "member_keys": [
                {**asdict(k), "created_at": k.created_at.isoformat()} for k in found.member_keys
            ],
            "stale": {
                "member_keys": found.stale_member_keys,
                "data_keys": found.stale_data_keys,
                "secrets": found.stale_secrets,
            },
            "signing_keys": signing,
            "index_key": index_id,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"key provider: {settings.key_provider}")
    typer.echo("master versions (wrap member keys):")
    for m in found.masters:
        flags = ", ".join(f for f, on in (("current", m.current), ("not held", not m.held)) if on)
        typer.echo(f"  {m.version:>4}  member keys {m.member_keys:>6}  {flags}")
    typer.echo("member keys (wrap data keys and webhook secrets):")
    for k in found.member_keys:
        state = "destroyed" if k.destroyed else "current" if k.current else "old"
        typer.echo(
            f"  {k.member:<8} v{k.version:<3} master v{k.master_version:<3} {state:<9} "
            f"data keys {k.data_keys:>8}  secrets {k.secrets:>4}"
        )
    typer.echo(
        f"to re-wrap: {found.stale_member_keys} member key(s), {found.stale_data_keys} data "
        f"key(s), {found.stale_secrets} webhook secret(s)"
    )
    typer.echo("signing keys (newest first; all published in the JWKS):")
    for entry in signing:
        since = f"  signs from {entry['activates_at']}" if entry["activates_at"] else ""
        typer.echo(f"  {entry['kid']}  {entry['state']}{since}")
    typer.echo(f"blind-index key: {index_id}")


@app.command("rotate")
def rotate(
    master: Annotated[bool, typer.Option("--master", help="A new master key version")] = False,
    member: Annotated[
        list[str] | None, typer.Option("--member", help="A new key version for this member")
    ] = None,
    all_members: Annotated[
        bool, typer.Option("--all-members", help="A new key version for every member with keys")
    ] = False,
    signing: Annotated[
        bool, typer.Option("--signing", help="A new service signing key (tokens, checkpoints)")
    ] = False,
    activate_in: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --signing: seconds during which the new key is only published (JWKS) "
            "before it signs, so every verifier has it first",
        ),
    ] = SIGNING_LEAD_SECONDS,
) -> None:
    """Add a key version that new writes use. Older versions stay readable; `tearline keys
    rewrap` then moves what they protect onto the new ones, and `retire` destroys them."""
    settings = settings_or_exit()
    if not (master or member or all_members or signing):
        raise fail(
            "refused: say what to rotate: --master, --member CODE, --all-members or --signing"
        )
    if signing:
        keyring = _local(settings, "rotating the signing key")
        activates_at = utcnow() + timedelta(seconds=activate_in)
        kid, pem = keyring.new_signing_key()
        # Recorded first: a rotation that cannot be audited does not happen.
        _operator_record(
            settings,
            "key.rotate",
            "signing_key",
            f"kid:{kid}",
            f"activates_at:{activates_at.isoformat()}",
        )
        keyring.add_signing_key(activates_at, (kid, pem))
        typer.echo(f"signing key {kid} published now; it signs from {activates_at.isoformat()}")
    if master:
        keyring = _local(settings, "rotating the master key")
        old = keyring.current_master_version()
        # Recorded first: a rotation that cannot be audited does not happen.
        _operator_record(settings, "key.rotate", "master_key", f"old:{old}", f"new:{old + 1}")
        version = keyring.rotate_master()
        typer.echo(f"master key version {version} is current; run `tearline keys rewrap`")
    if member or all_members:
        provider = _provider(settings)
        envelope = Envelope(provider)
        with session_scope(settings) as session:
            codes = list(member or [])
            if all_members:
                codes = sorted(lifecycle.current_versions(session.connection()))
            try:
                made = {code: lifecycle.rotate_member(session, envelope, code) for code in codes}
            except lifecycle.KeyLifecycleError as exc:
                raise fail(f"refused: {exc}") from None
        for code, version in made.items():
            typer.echo(f"member {code}: key version {version} is current")
        typer.echo(
            f"API processes use the new versions within {CURRENT_VERSION_TTL:.0f} s; then run "
            "`tearline keys rewrap`"
        )


def _settled_at(engine: Engine) -> float:
    """When every API process will have seen the newest member key versions (monotonic)."""
    with engine.connect() as conn:
        newest: datetime | None = conn.scalar(select(func.max(MemberKey.created_at)))
    if newest is None:
        return time.monotonic()
    lag = (newest + timedelta(seconds=CURRENT_VERSION_TTL + 1) - utcnow()).total_seconds()
    return time.monotonic() + max(0.0, lag)


@app.command("rewrap")
def rewrap(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Keys per transaction")] = (
        lifecycle.REWRAP_BATCH
    ),
) -> None:
    """Re-wrap every member key under the current master version, and every data key and
    webhook secret under its member's current key version, in short transactions while the
    service runs. Report ciphertexts are not touched. Safe to interrupt and run again: it
    resumes with what is left."""
    settings = settings_or_exit()
    provider = _provider(settings)
    envelope = Envelope(provider)
    totals = lifecycle.RewrapTotals()
    with _engine(settings) as engine:
        factory = make_sessionmaker(engine)
        with engine.connect() as conn:
            found = lifecycle.status(conn, provider, provider.held_master_versions())
        todo = found.stale_member_keys + found.stale_data_keys + found.stale_secrets
        settled = _settled_at(engine)
        with typer.progressbar(length=todo, label="re-wrapping", file=None) as bar:
            while True:
                done = lifecycle.rewrap_pass(factory, provider, envelope, batch, totals, bar.update)
                # Writes may still use an older version for a few seconds after a rotation:
                # once that window is over, one more pass catches what they wrapped.
                if time.monotonic() >= settled and done == 0:
                    break
                time.sleep(min(1.0, max(0.0, settled - time.monotonic())))
    _operator_record(
        settings,
        "key.rewrap",
        "keys",
        f"member_keys:{totals.member_keys}",
        f"data_keys:{totals.data_keys}",
        f"secrets:{totals.secrets}",
        f"refused:{len(totals.refused)}",
    )
    typer.echo(
        f"re-wrapped {totals.member_keys} member key(s), {totals.data_keys} data key(s), "
        f"{totals.secrets} webhook secret(s)"
    )
    if totals.refused:
        raise fail(
            f"{len(totals.refused)} key(s) failed their integrity check and were left as they are; "
            "see `tearline keys status`"
        )


def _stopped_signing_at(entries: list[SigningEntry], kid: str) -> datetime | None:
    """When `kid` stopped signing: the first activation of a newer key (None: it still signs)."""
    newer: list[datetime] = []
    for entry in entries:
        if entry.kid == kid:
            break
        if entry.private_pem is not None and entry.activates_at is not None:
            newer.append(entry.activates_at)
    return min(newer) if newer else None


def _retire_signing(settings: Settings, kid: str) -> None:
    keyring = _local(settings, "retiring a signing key")
    entries = keyring.signing_entries()
    stopped = _stopped_signing_at(entries, kid)
    now = utcnow()
    if stopped is None or stopped > now:
        raise fail(f"refused: signing key {kid} still signs; rotate first")
    # Its tokens live for the access-token lifetime after it stopped signing (plus clock skew).
    free_at = stopped + timedelta(seconds=settings.access_token_ttl + 60)
    if free_at > now:
        raise fail(
            f"refused: tokens signed by {kid} may be valid until {free_at.isoformat()}; retire "
            "it after that"
        )
    _operator_record(settings, "key.retire", "signing_key", f"kid:{kid}")
    try:
        keyring.retire_signing_key(kid, now)
    except KeyringError as exc:
        raise fail(f"refused: {exc}") from None
    typer.echo(
        f"signing key {kid}: private key deleted; its public key stays in the JWKS so that "
        "checkpoints it signed can still be verified"
    )


@app.command("retire")
def retire(
    master: Annotated[
        int | None, typer.Option("--master", help="Delete this master key version")
    ] = None,
    signing: Annotated[
        str | None, typer.Option("--signing", help="Delete the private half of this signing key")
    ] = None,
    member: Annotated[str | None, typer.Option("--member", help="The member of --version")] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="Destroy this key version of --member")
    ] = None,
) -> None:
    """Destroy a key version that nothing uses any more (refused while anything does)."""
    settings = settings_or_exit()
    if signing is not None:
        _retire_signing(settings, signing)
        return
    if master is None and (member is None or version is None):
        raise fail("refused: give --master N, --member CODE --version N, or --signing KID")
    if member is not None and version is not None:
        with session_scope(settings) as session:
            try:
                lifecycle.retire_member_version(session, member, version)
            except lifecycle.KeyLifecycleError as exc:
                raise fail(f"refused: {exc}") from None
        typer.echo(f"key version {version} of {member} destroyed")
    if master is not None:
        with _engine(settings) as engine, engine.connect() as conn:
            users = lifecycle.master_in_use(conn, master)
        if users:
            raise fail(
                f"refused: master key {master} still wraps {users} member key(s); run "
                "`tearline keys rewrap` first"
            )
        if settings.key_provider != "local":
            typer.echo(
                f"master key {master} wraps nothing any more: remove version {master} from "
                "TEARLINE_MASTER_KEYS and restart the processes"
            )
            return
        keyring = _local(settings, "retiring a master key")
        _operator_record(settings, "key.retire", "master_key", f"version:{master}")
        try:
            keyring.remove_master(master)
        except KeyringError as exc:
            raise fail(f"refused: {exc}") from None
        typer.echo(f"master key {master} deleted from {keyring.path}")
