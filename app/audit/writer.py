"""Group commit for the audit entries of reads: one transaction for every entry that is waiting.

A read changes nothing but the audit log, so it needs no transaction of its own: it reads, then
hands its entries here and answers only once they are committed. Entries that arrive while a
batch is being written wait for the next one, so under load one commit (one fsync on PostgreSQL)
covers many requests. If the batch cannot be written, every request in it fails: an access
that left no trace is never answered.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence

from app.audit import service as audit
from app.db import Database

# A bound on the rows of one batch, so one transaction (and its hold on the lock) stays short.
MAX_BATCH = 500

# The rows of one request, and the future its request waits on.
_Waiting = tuple[list[dict[str, object]], asyncio.Future[None]]


class AuditWriter:
    """Appends entries in batches; `append` returns when its entries are committed."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiting: deque[_Waiting] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, actor: audit.Actor, entries: Sequence[audit.Entry]) -> None:
        """Record `entries` durably; raises whatever the database raised if they could not be."""
        if not entries:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        # Rows are made now, in the request's context (its request id), not in the flusher's.
        self._waiting.append(([audit.row(actor, e) for e in entries], done))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            # A task of its own: a client that disconnects cancels its request, never the batch.
            self._flusher = asyncio.create_task(self._flush())
        # Shielded for the same reason; a cancelled request's entries are still written.
        await asyncio.shield(done)

    async def drain(self) -> None:
        """Wait until every entry handed over so far is written (at shutdown)."""
        loop = asyncio.get_running_loop()
        while (flusher := self._flusher) is not None and not flusher.done():
            if flusher.get_loop() is not loop:
                return
            # A failed batch has already failed its requests; here only completion matters.
            await asyncio.wait({flusher})

    async def _flush(self) -> None:
        # One turn of the loop lets requests that are already running add their entries.
        await asyncio.sleep(0)
        while self._waiting:
            batch, rows = self._take()
            try:
                await self._db.append(functools.partial(audit.insert_rows, rows=rows))
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                        # Marked as seen: a cancelled request no longer awaits its future.
                        done.exception()
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _take(self) -> tuple[list[_Waiting], list[dict[str, object]]]:
        batch: list[_Waiting] = []
        rows: list[dict[str, object]] = []
        while self._waiting and len(rows) < MAX_BATCH:
            item = self._waiting.popleft()
            batch.append(item)
            rows.extend(item[0])
        return batch, rows
