"""`tearline worker`: webhook dispatch in a process of its own (as many as wanted)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Annotated

import typer

from app import bootstrap
from app.cli.common import refusals, settings_or_exit
from app.webhooks.dispatcher import Dispatcher

log = logging.getLogger("tearline.webhooks")


async def _serve(dispatcher: Dispatcher) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Stop claiming, finish and record what is in flight, then exit.
        loop.add_signal_handler(sig, dispatcher.stop)
    await dispatcher.run()


def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=512, help="Deliveries sent at once")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Send what is due now, then exit")] = False,
) -> None:
    """Dispatch webhooks: fan events out and send deliveries, until stopped."""
    settings = settings_or_exit()
    logging.basicConfig(level=settings.log_level.upper())
    with refusals():
        state = bootstrap.build_state(settings)
    if settings.webhook_worker_nice:
        # Only ever lowered: an unprivileged process cannot raise it back, and need not.
        os.nice(settings.webhook_worker_nice)
    dispatcher = Dispatcher(state, concurrency=concurrency or 0)
    try:
        if once:
            asyncio.run(dispatcher.run_until_idle(timeout=float("inf")))
        else:
            asyncio.run(_serve(dispatcher))
    finally:
        state.db.dispose()
    tally = dispatcher.tally
    typer.echo(
        f"events fanned out: {tally.fanned_out}; attempts: {tally.sent} "
        f"({tally.succeeded} succeeded, {tally.failed} failed)"
    )
