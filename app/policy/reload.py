"""A changed bundle, in force without a restart: checked first, then swapped, then decided again.

The order is what keeps need-to-know intact:

1. The new bundle is loaded and validated, and its own decision cases must all pass; otherwise it
   is refused and the bundle in force stays.
2. The roster is mirrored into the members table (a suspended member is refused at once, tokens
   included, since every request confirms its member is active).
3. The bundle is swapped in. From that instant reads only count decisions stored under the new
   bundle's hash (`reports.service.readable_statement`): a report not yet decided again is hidden
   (fail closed), never served under the old decision.
4. A background task decides every report again, in short batches in report id order, until
   nothing stale is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.db import Database
from app.keys.service import Envelope
from app.members import service as members_service
from app.policy.bundle import PolicyBundle, PolicyError, load_bundle
from app.policy.engine import PolicyEngine
from app.policy.service import PolicyState
from app.reports.service import redecide_batch

log = logging.getLogger("tearline.policy")

# Reports decided again per transaction: short enough that writers (SQLite has one) never wait
# long, large enough that a million reports take minutes, not hours.
REDECIDE_BATCH = 200
# The longest wait between two tries of a failed re-decision batch.
RETRY_CAP_SECONDS = 30.0


def failing_cases(bundle: PolicyBundle) -> list[str]:
    """Each decision case of the bundle that its own engine gets wrong, as a printable line."""
    engine = PolicyEngine(bundle)
    failures = []
    for case in bundle.cases:
        got = engine.decide(case.report, [case.member])[case.member].level.value
        if got != case.expect.value:
            failures.append(f"{case.name}: {case.member} got {got}, expected {case.expect.value}")
    return failures


@dataclass(frozen=True)
class ReloadOutcome:
    accepted: bool
    previous_hash: str
    hash: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.accepted and self.hash != self.previous_hash


class Redecider:
    """Decides again, in the background, every report whose decisions an older bundle made."""

    def __init__(self, db: Database, policy: PolicyState) -> None:
        self._db = db
        self._policy = policy
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.batches = 0

    def kick(self) -> None:
        """Make sure a pass starts after this call (a new one, or the running one goes round)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            self._again = True
            return
        self._task = loop.create_task(self._run())

    async def wait(self) -> None:
        """Until no pass is running."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Cancel a running pass between two batches (each batch is its own transaction)."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        while True:
            self._again = False
            after: str | None = None
            while True:
                try:
                    decided = await self._db.run(
                        functools.partial(
                            redecide_batch, state=self._policy, after=after, batch=REDECIDE_BATCH
                        )
                    )
                except Exception:
                    # Stale reports stay hidden until decided again, so giving up is no
                    # option: log, back off, and take the same batch again.
                    failures += 1
                    log.exception("re-decision batch failed (%d so far); retrying", failures)
                    await asyncio.sleep(min(2.0**failures, RETRY_CAP_SECONDS))
                    continue
                failures = 0
                if not decided:
                    break
                after = decided[-1]
                self.batches += 1
                # Let requests in between batches.
                await asyncio.sleep(0)
            log.info("re-decision pass done (%d batches so far)", self.batches)
            if not self._again:
                return


class Reloader:
    """Loads the bundle from the policy directory again, one reload at a time."""

    def __init__(
        self,
        policy_dir: Path,
        policy: PolicyState,
        db: Database,
        envelope: Envelope,
        redecider: Redecider,
    ) -> None:
        self._dir = policy_dir
        self._policy = policy
        self._db = db
        self._envelope = envelope
        self._redecider = redecider
        self._lock = asyncio.Lock()

    async def reload(self, actor: audit.Actor) -> ReloadOutcome:
        """Check and swap in the bundle on disk; audited either way."""
        async with self._lock:
            previous = self._policy.bundle
            # Parsing and validating Cedar is CPU work of some milliseconds: off the event loop.
            outcome, bundle = await asyncio.to_thread(self._check, previous.hash)
            if bundle is None:
                await self._db.run(lambda s: _record(s, actor, outcome))
                log.warning("policy reload refused: %d problems", len(outcome.problems))
                return outcome
            if outcome.changed:
                await self._db.run(lambda s: self._adopt(s, bundle, actor, outcome))
                self._policy.replace(bundle)
                self._redecider.kick()
            else:
                await self._db.run(lambda s: _record(s, actor, outcome))
            log.info(
                "policy reload: %s -> %s", outcome.previous_hash[:12], (outcome.hash or "")[:12]
            )
            return outcome

    def _check(self, previous_hash: str) -> tuple[ReloadOutcome, PolicyBundle | None]:
        try:
            bundle = load_bundle(self._dir)
        except PolicyError as exc:
            refused = ReloadOutcome(
                accepted=False, previous_hash=previous_hash, problems=[str(exc)]
            )
            return refused, None
        failures = failing_cases(bundle)
        if failures:
            refused = ReloadOutcome(
                accepted=False,
                previous_hash=previous_hash,
                hash=bundle.hash,
                problems=[f"decision case failed: {f}" for f in failures],
            )
            return refused, None
        return ReloadOutcome(accepted=True, previous_hash=previous_hash, hash=bundle.hash), bundle

    def _adopt(
        self, session: Session, bundle: PolicyBundle, actor: audit.Actor, outcome: ReloadOutcome
    ) -> None:
        members_service.sync_roster(session, bundle)
        session.flush()  # new members must exist before their keys reference them
        for code in bundle.members:
            self._envelope.ensure_member_key(session, code)
        _record(session, actor, outcome)


def _record(session: Session, actor: audit.Actor, outcome: ReloadOutcome) -> None:
    reasons = [f"from:{outcome.previous_hash}"]
    if outcome.hash is not None:
        reasons.append(f"to:{outcome.hash}")
    if outcome.accepted and not outcome.changed:
        reasons.append("unchanged")
    # Problems name files and lines of the policy directory, never report content.
    reasons += [p[:300] for p in outcome.problems[:20]]
    audit.record(
        session,
        actor,
        audit.Entry(
            action="policy.reload",
            decision="allow" if outcome.accepted else "deny",
            target="policy",
            reasons=tuple(reasons),
            policy_hash=outcome.hash if outcome.accepted else outcome.previous_hash,
        ),
    )
