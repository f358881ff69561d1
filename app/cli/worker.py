"""`tearline worker`: webhook dispatch and audit tree maintenance in a process of its own
(as many as wanted)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Annotated

import typer

from app import bootstrap, logs
from app.audit.maintainer import Maintainer
from app.cli.common import refusals, settings_or_exit
from app.webhooks.dispatcher import Dispatcher

log = logging.getLogger("tearline.webhooks")


async def _serve(dispatcher: Dispatcher, maintainer: Maintainer) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        # Stop claiming, finish and record what is in flight, then exit.
        dispatcher.stop()
        maintainer.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    await asyncio.gather(dispatcher.run(), maintainer.run())


async def _once(dispatcher: Dispatcher, maintainer: Maintainer) -> None:
    # The tree first: a checkpoint it issues goes out with this run's deliveries.
    while (progress := await maintainer.step()) is not None and progress.pending:
        pass
    await dispatcher.run_until_idle(timeout=float("inf"))


def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=512, help="Deliveries sent at once")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Send what is due now, then exit")] = False,
) -> None:
    """Dispatch webhooks (fan events out, send deliveries) and keep the audit tree and its
    checkpoints up to date, until stopped."""
    settings = settings_or_exit()
    logs.configure(settings.log_level)
    with refusals():
        state = bootstrap.build_state(settings)
    if settings.webhook_worker_nice:
        # Only ever lowered: an unprivileged process cannot raise it back, and need not.
        os.nice(settings.webhook_worker_nice)
    dispatcher = Dispatcher(state, concurrency=concurrency or 0)
    maintainer = Maintainer(state)
    try:
        asyncio.run(_once(dispatcher, maintainer) if once else _serve(dispatcher, maintainer))
    finally:
        state.db.dispose()
    tally = dispatcher.tally
    typer.echo(
        f"events fanned out: {tally.fanned_out}; attempts: {tally.sent} "
        f"({tally.succeeded} succeeded, {tally.failed} failed)"
    )
