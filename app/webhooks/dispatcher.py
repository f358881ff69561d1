"""The dispatcher: sequences events, fans them out, and sends deliveries, with retries.

It runs inside `tearline serve` (the embedded default) and as `tearline worker` processes, as
many as wanted: the fan-out cursor is locked by one worker at a time and deliveries are claimed
with FOR UPDATE SKIP LOCKED under a lease, so no delivery is sent by two workers at once. The
database work of each step is one short transaction; sending happens between them, at most
`webhook_concurrency` requests at a time, and a slow receiver holds up only its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.db import utcnow
from app.kit import outbound, standard_webhooks
from app.state import AppState
from app.webhooks import delivery, service

log = logging.getLogger("tearline.webhooks")

# Seconds between fan-out passes while sends are in flight (when idle, every round prepares).
PREPARE_EVERY = 0.1
# After a send finishes, how long to let others finish too, so that one transaction records
# and claims for many rather than one at a time.
GATHER_SECONDS = 0.005


@dataclass
class Tally:
    """What a dispatcher has done since it started (for tests, benchmarks and logs)."""

    fanned_out: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass
class Dispatcher:
    state: AppState
    concurrency: int = 0
    tally: Tally = field(default_factory=Tally)

    def __post_init__(self) -> None:
        settings = self.state.settings
        self.concurrency = self.concurrency or settings.webhook_concurrency
        self._services = delivery.DeliveryServices(
            policy=self.state.policy, envelope=self.state.envelope, settings=settings
        )
        self._in_flight: set[asyncio.Task[delivery.Result]] = set()
        self._done: list[delivery.Result] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_prepare = 0.0

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    async def prepare(self, passes: int | None = None) -> int:
        """Sequence committed events (PostgreSQL) and fan them out, in at most `passes` passes
        of 500 (None: all there is); events passed."""
        db = self.state.db
        if db.engine.dialect.name == "postgresql":
            while await db.run(_sequence) > 0:
                pass
        total = 0
        done = 0
        while passes is None or done < passes:
            passed = await db.run(self._fan_out)
            total += passed
            done += 1
            if passed < delivery.CHUNK:
                break
        self.tally.fanned_out += total
        return total

    def _fan_out(self, session: Session) -> int:
        return delivery.fan_out(session, self.state.policy)

    def _claim(self, session: Session, limit: int) -> list[delivery.Job]:
        return delivery.claim(session, self._services, limit=limit)

    def _record(self, session: Session, results: list[delivery.Result]) -> None:
        delivery.record(session, self.state.settings, results)

    async def _send(self, job: delivery.Job) -> delivery.Result:
        settings = self.state.settings
        started = utcnow()
        timestamp = int(time.time())
        headers = standard_webhooks.headers(job.secrets, job.msg_id, timestamp, job.body)
        headers["user-agent"] = "Tearline-Webhooks/1"
        outcome = await outbound.send(
            job.url,
            job.body,
            headers,
            allow_private=settings.allow_private_webhooks,
            require_https=settings.require_https_webhooks,
            timeout=settings.webhook_timeout_seconds,
        )
        return delivery.Result(
            job=job,
            started_at=started,
            status=outcome.status,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
            retry_after=outcome.retry_after,
            excerpt=outcome.excerpt,
        )

    def _finished(self, task: asyncio.Task[delivery.Result]) -> None:
        self._in_flight.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # outbound.send answers every network failure with an outcome; this is a bug,
            # and the delivery's lease runs out so that it is tried again.
            log.error("webhook send failed unexpectedly", exc_info=exc)
            return
        self._done.append(task.result())
        self._wake.set()

    def _count(self, results: list[delivery.Result]) -> None:
        succeeded = sum(1 for r in results if r.succeeded)
        failed = len(results) - succeeded
        self.tally.sent += len(results)
        self.tally.succeeded += succeeded
        self.tally.failed += failed
        self.state.metrics.count_attempts(succeeded, failed)

    async def _flush(self) -> None:
        if not self._done:
            return
        results, self._done = self._done, []
        try:
            await self.state.db.run(lambda s: self._record(s, results))
        except BaseException:
            self._done[:0] = results
            raise
        self._count(results)

    async def step(self) -> int:
        """One round: prepare, record finished sends, claim and start new ones; jobs started."""
        now = time.monotonic()
        if now >= self._next_prepare or not self._in_flight:
            # Finished sends are recorded first: a long fan-out (a backlog) must not outlast
            # their leases, or another worker would send them again.
            await self._flush()
            # Under load, one fan-out pass (500 events) every 100 ms is enough; idle, all of it.
            await self.prepare(passes=1 if self._in_flight else None)
            self._next_prepare = now + PREPARE_EVERY
        free = self.concurrency - len(self._in_flight)
        if free <= 0 or self._stopping:
            await self._flush()
            return 0
        results, self._done = self._done, []

        def record_and_claim(session: Session) -> list[delivery.Job]:
            # One transaction (one commit) records what finished and claims what is due.
            self._record(session, results)
            return self._claim(session, free)

        try:
            jobs = await self.state.db.run(record_and_claim)
        except BaseException:
            # Recorded by the next round: only a lease that runs out first would resend them.
            self._done[:0] = results
            raise
        self._count(results)
        for job in jobs:
            task = asyncio.get_running_loop().create_task(self._send(job))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(jobs)

    async def drain(self) -> None:
        """Wait for every send in flight and record it."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))
        await self._flush()

    async def run_until_idle(self, *, timeout: float = 30.0) -> None:
        """Work until nothing is due or in flight (tests and the command line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = await self.step()
            if not started and not self._in_flight:
                await self._flush()
                return
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
        raise TimeoutError("the dispatcher did not become idle in time")

    async def run(self) -> None:
        """Work until stopped; each failure of a round is logged and the round tried again."""
        poll = self.state.settings.webhook_poll_seconds
        try:
            while not self._stopping:
                try:
                    started = await self.step()
                except Exception:
                    log.exception("webhook dispatch round failed")
                    started = 0
                    await asyncio.sleep(poll)
                if started:
                    continue
                self._wake.clear()
                waiters: set[asyncio.Future[Any]] = {
                    asyncio.ensure_future(self._wake.wait()),
                    *self._in_flight,
                }
                _, pending = await asyncio.wait(
                    waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    if waiter not in self._in_flight:
                        waiter.cancel()
                if self._in_flight and len(self._in_flight) > self.concurrency // 2:
                    await asyncio.sleep(GATHER_SECONDS)
        finally:
            await self.drain()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()


def _sequence(session: Session) -> int:
    return service.sequence(session.connection())


@dataclass
class Running:
    """A dispatcher running as a task of the current event loop."""

    dispatcher: Dispatcher
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.dispatcher.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def start(state: AppState) -> Running:
    """Run a dispatcher in the background of the running loop."""
    dispatcher = Dispatcher(state)
    return Running(dispatcher, asyncio.get_running_loop().create_task(dispatcher.run()))
