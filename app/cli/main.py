"""The `tearline` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from sqlalchemy.exc import OperationalError, ProgrammingError

from app import bootstrap, logs
from app.audit import service as audit
from app.cli import audit as audit_cli
from app.cli import clients, dev, keys, search, worker
from app.cli.common import fail, refusals, session_scope, settings_or_exit
from app.config import Settings
from app.db import make_engine, make_sessionmaker, transaction
from app.main import create_app
from app.members import removal
from app.policy import explain
from app.policy.bundle import load_bundle
from app.policy.engine import PolicyEngine
from app.policy.reload import failing_cases
from app.policy.service import PolicyState

app = typer.Typer(help="Tearline: need-to-know sharing of CTF intelligence.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
members_app = typer.Typer(help="The roster.", no_args_is_help=True)
policy_app = typer.Typer(help="The policy bundle.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(dev.app, name="dev")
app.add_typer(clients.app, name="clients")
app.add_typer(keys.app, name="keys")
app.add_typer(members_app, name="members")
app.add_typer(policy_app, name="policy")
app.add_typer(search.app, name="search")
app.command()(worker.worker)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind")] = None,
) -> None:
    """Serve the API (applying migrations first in development)."""
    base = settings_or_exit()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = (
        Settings(**{**base.model_dump(exclude_unset=True), **overrides}) if overrides else base
    )
    with refusals():
        application = create_app(settings)
    logs.configure(settings.log_level)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        # Our JSON lines (app/logs.py), not uvicorn's own handlers.
        log_config=None,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations."""
    settings = settings_or_exit()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        bootstrap.upgrade_database(settings.resolved_database_url)
    except OperationalError as exc:
        # The driver's message names the host and database, never a password of ours.
        raise fail(f"database unreachable: {exc.orig}") from None
    typer.echo("database at head")


@members_app.command("list")
def members_list() -> None:
    """List the roster: code, kind, roles, clearance, active."""
    settings = settings_or_exit()
    with refusals():
        bundle = load_bundle(Path(settings.policy_dir))
    for m in sorted(bundle.members.values(), key=lambda m: m.code):
        roles = ",".join(sorted(m.roles))
        status = "active" if m.active else "suspended"
        typer.echo("\t".join((m.code, m.kind, roles, m.clearance.name, status, m.name)))


@members_app.command("remove")
def members_remove(
    code: Annotated[str, typer.Argument(help="The member's code")],
    confirm: Annotated[
        str, typer.Option("--confirm", help="The code again: removal cannot be undone")
    ],
) -> None:
    """Remove a member for good: its keys are destroyed (everything it originated becomes
    unrecoverable), its clients revoked, its reports made tombstones. Drop it from roster.yaml
    and reload the policy first. Safe to run again after an interruption."""
    settings = settings_or_exit()
    if confirm != code:
        raise fail("refused: --confirm must repeat the member's code")
    with refusals():
        policy = PolicyState.load(Path(settings.policy_dir))
    engine = make_engine(settings.resolved_database_url)
    factory = make_sessionmaker(engine)
    try:
        with transaction(factory) as session:
            try:
                done = removal.remove(session, policy.bundle, code)
            except removal.RemovalError as exc:
                raise fail(f"refused: {exc}") from None
        typer.echo(
            f"member {code} removed: {done.keys_destroyed} key version(s) destroyed, "
            f"{done.clients_revoked} client(s) revoked"
        )
        shredded = 0
        while True:
            with transaction(factory) as session:
                made = removal.shred_originated(session, policy, code, removal.SHRED_BATCH)
            shredded += made
            if made < removal.SHRED_BATCH:
                break
        typer.echo(f"{shredded} report(s) made tombstones")
    finally:
        engine.dispose()


@policy_app.command("check")
def policy_check() -> None:
    """Validate the bundle, roster and taxonomy together."""
    settings = settings_or_exit()
    with refusals():
        bundle = load_bundle(Path(settings.policy_dir))
    typer.echo(
        f"policy bundle {bundle.hash} ok: {len(bundle.files)} files, {len(bundle.members)} members"
    )


@policy_app.command("test")
def policy_test() -> None:
    """Run every decision case in the bundle's tests; non-zero exit on any failure."""
    settings = settings_or_exit()
    with refusals():
        bundle = load_bundle(Path(settings.policy_dir))
    failures = failing_cases(bundle)
    for failure in failures:
        typer.echo(f"FAIL {failure}")
    typer.echo(f"{len(bundle.cases) - len(failures)} passed, {len(failures)} failed")
    if failures:
        raise fail("policy decision cases failed")


@policy_app.command("explain")
def policy_explain(
    member: Annotated[str, typer.Argument(help="Roster code of the member, e.g. DEU")],
    report: Annotated[str, typer.Argument(help="Id of a stored report")],
) -> None:
    """Print a member's level to a stored report and the ids of the policies that decided it."""
    settings = settings_or_exit()
    with refusals():
        bundle = load_bundle(Path(settings.policy_dir))
    if member not in bundle.members:
        raise fail(f"unknown member {member!r}: not on the roster")
    try:
        with session_scope(settings) as session:
            facts = explain.stored_facts(session.connection(), report)
            if facts is None:
                raise fail(f"no report {report[:64]!r}")
            decision = PolicyEngine(bundle).explain(member, facts)
            # An operator's look at a decision is an access like any other: on the record.
            audit.record(
                session,
                audit.OPERATOR,
                audit.Entry(
                    action=explain.ACTION,
                    decision="allow",
                    target=f"report:{facts.id}",
                    reasons=(f"member:{member}", f"level:{decision.level.value}"),
                    policy_hash=decision.policy_hash,
                ),
            )
    except (OperationalError, ProgrammingError) as exc:
        # Unreachable, or not yet migrated (PostgreSQL says "undefined table" as a programming
        # error); the driver's message names the host, database or
        # table, never a password of ours.
        raise fail(f"cannot read the database: {exc.orig}") from None
    typer.echo(f"level: {decision.level.value}")
    typer.echo(f"decided by: {', '.join(decision.policy_ids) or '(no policy)'}")
    typer.echo(f"policy bundle: {decision.policy_hash}")
