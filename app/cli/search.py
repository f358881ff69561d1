"""`tearline search`: maintenance of the blind index."""

from __future__ import annotations

from typing import Annotated

import typer

from app import bootstrap
from app.audit import service as audit
from app.cli.common import refusals, settings_or_exit
from app.db import transaction
from app.search.service import ReindexTally, reindex_batch

app = typer.Typer(help="The blind index of entities.", no_args_is_help=True)


@app.command("reindex")
def reindex(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Reports per transaction.")] = 500,
    after: Annotated[
        str | None, typer.Option(help="Resume after this report id (printed as it goes).")
    ] = None,
) -> None:
    """Rebuild every report's index rows with the index key in force (after it was rotated,
    or after the normalisation rules changed). Safe to interrupt and run again."""
    settings = settings_or_exit()
    with refusals():
        state = bootstrap.build_state(settings)
    tally = ReindexTally()
    try:
        while True:
            with transaction(state.sessionmaker) as session:
                after = reindex_batch(
                    session, state.envelope, state.blind_index, after, tally, batch
                )
            if after is None:
                break
            typer.echo(
                f"  {tally.reports:,} reports, {tally.entities:,} entities indexed; last {after}"
            )
        with transaction(state.sessionmaker) as session:
            audit.record(
                session,
                audit.OPERATOR,
                audit.Entry(
                    action="search.reindex",
                    decision="allow",
                    target="entity_index",
                    reasons=(
                        f"key:{state.blind_index.key_id}",
                        f"reports:{tally.reports}",
                        f"entities:{tally.entities}",
                        f"skipped:{tally.skipped}",
                    ),
                ),
            )
    finally:
        state.db.dispose()
    typer.echo(
        f"reindexed {tally.reports:,} reports ({tally.entities:,} entities, key "
        f"{state.blind_index.key_id}); {tally.skipped:,} values refused by the rules in force"
    )
