"""`tearline audit`: verify the log against its checkpoints, and export it."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError

from app import bootstrap
from app.audit import queries, tree
from app.audit import service as audit
from app.audit.verify import Report, verify
from app.cli.common import fail, refusals, settings_or_exit
from app.db import make_engine, make_read_engine, make_sessionmaker, transaction
from app.kit.jwt import VerificationKey

app = typer.Typer(help="The audit log.", no_args_is_help=True)


def _keys_from_jwks(path: Path) -> dict[str, VerificationKey]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {
            k["kid"]: VerificationKey.from_jwk(k["kid"], k.get("alg", "ES256"), k)
            for k in document["keys"]
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise fail(f"cannot read a JWKS from {path}: {exc}") from None


def _saved_checkpoints(path: Path) -> list[Mapping[str, Any]]:
    """Checkpoints as the API gives them: one object, a list, a page ({items}), or NDJSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise fail(f"{path} holds neither JSON nor NDJSON checkpoints") from None
    if isinstance(document, dict):
        document = document.get("items", [document])
    if not isinstance(document, list) or not all(isinstance(d, dict) for d in document):
        raise fail(f"{path} does not hold checkpoints")
    return document


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "checkpoints": report.checkpoints,
                    "saved_checkpoints": report.saved,
                    "nodes_checked": report.nodes,
                    "seconds": round(report.seconds, 3),
                    "entries_per_second": round(report.rate),
                    "findings": [
                        {
                            "kind": f.kind,
                            "entry": f.entry,
                            "checkpoint": f.checkpoint,
                            "detail": f.detail,
                        }
                        for f in report.findings
                    ],
                    "unlisted": report.unlisted,
                },
                indent=2,
            )
        )
        return
    for finding in report.findings:
        typer.echo(f"FAIL {finding}")
    for kind, count in sorted(report.unlisted.items()):
        typer.echo(f"FAIL ... and {count} more findings of kind {kind}")
    total = len(report.findings) + sum(report.unlisted.values())
    verdict = "ok" if report.ok else f"{total} findings"
    typer.echo(
        f"{verdict}: {report.entries:,} entries, {report.checkpoints:,} stored and "
        f"{report.saved:,} saved checkpoints, {report.nodes:,} tree nodes checked in "
        f"{report.seconds:.1f} s ({report.rate:,.0f} entries/s)"
    )


@app.command("verify")
def verify_command(
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints",
            help="Checkpoints saved elsewhere (as GET /v1/audit/checkpoints exports them): "
            "prove the log still extends them.",
        ),
    ] = None,
    jwks: Annotated[
        Path | None,
        typer.Option(
            help="Verify signatures with this JWKS (as /.well-known/jwks.json serves "
            "it) instead of the keyring's public keys."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recompute the Merkle tree from the stored entries and check every checkpoint; exit code 1
    on any finding (each names the entry or checkpoint it is about)."""
    settings = settings_or_exit()
    saved = _saved_checkpoints(checkpoints) if checkpoints is not None else []
    if jwks is not None:
        keys = _keys_from_jwks(jwks)
    else:
        with refusals():
            provider = bootstrap.load_key_provider(settings)
        # Every key that ever signed, retired ones too (their public half is kept for this).
        keys = {
            e.kid: VerificationKey.from_pem(e.kid, "ES256", e.public_pem)
            for e in provider.signing_entries()
        }
    engine = make_engine(settings.resolved_database_url)
    # Reads on the read engine: on SQLite a write connection would hold the writer's lock (and
    # stop the service's writes) for the whole run.
    reader = make_read_engine(settings.resolved_database_url)

    def progress(done: int, total: int) -> None:
        if total >= 1_000_000:
            typer.echo(f"  {done:,} / {total:,} entries", err=True)

    try:
        with reader.connect() as conn:
            report = verify(conn, keys, saved, progress)
        # A look at the whole log is an access like any other: on the record.
        with transaction(make_sessionmaker(engine)) as session:
            audit.record(
                session,
                audit.OPERATOR,
                audit.Entry(
                    action="audit.verify",
                    decision="allow",
                    target="audit",
                    reasons=(
                        f"entries:{report.entries}",
                        f"findings:{len(report.findings) + sum(report.unlisted.values())}",
                    ),
                ),
            )
    except (OperationalError, ProgrammingError) as exc:
        raise fail(f"cannot read the database: {exc.orig}") from None
    finally:
        engine.dispose()
        reader.dispose()
    _print(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


class Format(StrEnum):
    ndjson = "ndjson"
    csv = "csv"


@app.command("export")
def export_command(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout)")
    ] = None,
    format: Annotated[Format, typer.Option(help="ndjson (exact, hashable) or csv")] = Format.ndjson,
    actor: Annotated[str | None, typer.Option(help="Only entries of this member")] = None,
    action: Annotated[str | None, typer.Option(help="Only entries of this action")] = None,
    report_id: Annotated[str | None, typer.Option(help="Only entries about this report")] = None,
    decision: Annotated[str | None, typer.Option(help="allow, deny, ...")] = None,
    since: Annotated[datetime | None, typer.Option(help="At or after this time (UTC)")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time (UTC)")] = None,
) -> None:
    """Export entries as the audit API does, streamed in index order (the operator's export is
    on record too)."""
    settings = settings_or_exit()
    filters = queries.Filters(actor, action, report_id, decision, _utc(since), _utc(until))
    engine = make_engine(settings.resolved_database_url)
    reader = make_read_engine(settings.resolved_database_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            end = tree.log_size(session.connection())
            audit.record(
                session,
                audit.OPERATOR,
                audit.Entry(
                    action="audit.export",
                    decision="allow",
                    target="audit",
                    reasons=(*filters.reasons(), f"format:{format.value}"),
                ),
            )
        with reader.connect() as conn:
            if output is None:
                count = _write(conn, filters, end, format, sys.stdout)
            else:
                with output.open("w", encoding="utf-8", newline="") as out:
                    count = _write(conn, filters, end, format, out)
    except (OperationalError, ProgrammingError) as exc:
        raise fail(f"cannot read the database: {exc.orig}") from None
    finally:
        engine.dispose()
        reader.dispose()
    typer.echo(f"exported {count:,} entries", err=True)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _write(conn: Any, filters: queries.Filters, end: int, format: Format, out: TextIO) -> int:
    lines = queries.ndjson_lines if format is Format.ndjson else queries.csv_lines
    if format is Format.csv:
        out.write(queries.csv_header())
    count = 0
    after: int | None = None
    while True:
        items, last = queries.page(conn, filters, after, queries.EXPORT_CHUNK, before=end)
        out.write(lines(items))
        count += len(items)
        if last is None:
            return count
        after = last
