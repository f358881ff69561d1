"""Keeping the audit tree up to date and issuing signed checkpoints, in the background.

Runs in `tearline serve` (unless `TEARLINE_AUDIT_TREE_IN_SERVE=false`) and in `tearline worker`
processes. Any number may run: on PostgreSQL one maintains at a time (a try-lock; the others
skip their turn), on SQLite the writer's turn serialises them. Each step is one short
transaction: up to `tree.BATCH` new leaves, and the checkpoint if one is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from app.audit import checkpoints, tree
from app.audit.checkpoints import SignedCheckpoint
from app.config import Settings
from app.db import utcnow
from app.kit.jwt import SigningKey
from app.state import AppState
from app.webhooks import service as events

log = logging.getLogger("tearline.audit")


@dataclass(frozen=True)
class Progress:
    """What one step did: the size covered, whether leaves remain, the checkpoint issued."""

    size: int
    pending: bool
    checkpoint: SignedCheckpoint | None


def _due(last: SignedCheckpoint | None, size: int, now: datetime, settings: Settings) -> bool:
    if last is None:
        return size > 0
    if size <= last.tree_size:
        return False
    grown = size - last.tree_size >= settings.audit_checkpoint_entries
    waited = now - last.timestamp >= timedelta(seconds=settings.audit_checkpoint_seconds)
    return grown or waited


def maintain(
    conn: Connection, key: SigningKey, settings: Settings, now: datetime | None = None
) -> Progress | None:
    """Integrate a batch of leaves, issue a checkpoint if due; None if another holds the tree."""
    before = tree.tree_size(conn)
    size = tree.integrate(conn)
    if size is None:
        return None
    pending = size - before >= tree.BATCH
    now = now or utcnow()
    last = checkpoints.latest(conn)
    if not _due(last, size, now, settings):
        return Progress(size, pending, None)
    made = checkpoints.issue(conn, key, size, tree.root(conn, size), now)
    events.emit(conn, "audit.checkpoint", made.public())
    return Progress(size, pending, made)


@dataclass
class Maintainer:
    state: AppState

    def __post_init__(self) -> None:
        self._stopping = False
        self._wake = asyncio.Event()

    def _maintain(self, conn: Connection) -> Progress | None:
        return maintain(conn, self.state.signing_key, self.state.settings)

    async def step(self) -> Progress | None:
        progress = await self.state.db.append(self._maintain)
        if progress is not None and progress.checkpoint is not None:
            self.state.metrics.checkpoints.inc()
        return progress

    async def run(self) -> None:
        """Work until stopped; a failed step is logged and tried again at the next poll."""
        poll = self.state.settings.audit_tree_poll_seconds
        while not self._stopping:
            try:
                progress = await self.step()
            except Exception:
                log.exception("audit tree maintenance failed")
                progress = None
            if progress is not None and progress.pending:
                await asyncio.sleep(0)  # a backlog: keep going, but let requests in between
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()


async def cover(state: AppState, size: int, *, timeout: float = 10.0) -> None:
    """Return once the stored tree covers `size` leaves (integrating here if need be).

    For proofs asked about a size the background maintainer has not reached yet. TimeoutError
    if another process holds the tree all that time.
    """
    deadline = time.monotonic() + timeout

    def step(conn: Connection) -> int | None:
        covered = tree.tree_size(conn)
        return covered if covered >= size else tree.integrate(conn)

    before = -1
    while True:
        covered = await state.db.append(step)
        if covered is not None and covered >= size:
            return
        if covered == before:
            raise ValueError(f"the log holds only {covered} entries")
        if time.monotonic() > deadline:
            raise TimeoutError("the audit tree is busy")
        if covered is None:
            await asyncio.sleep(0.05)
        else:
            before = covered
            await asyncio.sleep(0)  # on SQLite the steps run on the loop: let requests in


@dataclass
class Running:
    maintainer: Maintainer
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.maintainer.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def start(state: AppState) -> Running:
    """Run a maintainer in the background of the running loop."""
    maintainer = Maintainer(state)
    return Running(maintainer, asyncio.get_running_loop().create_task(maintainer.run()))
