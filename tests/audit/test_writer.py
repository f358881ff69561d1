"""Group commit of read traces: one transaction for many requests, and no answer without a trace."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.audit.writer import AuditWriter
from app.db import transaction
from tests.conftest import World

ACTOR = audit.Actor(member="ITA", client="ITA.test")


def entry(n: int) -> audit.Entry:
    return audit.Entry(action="report.read", decision="allow", target=f"report:writer-test-{n}")


def written(world: World) -> set[str]:
    with transaction(world.state.sessionmaker) as session:
        targets = session.scalars(
            select(AuditEntry.target).where(AuditEntry.target.like("report:writer-test-%"))
        )
        return {t for t in targets if t is not None}


def count_commits(world: World) -> list[int]:
    commits = [0]

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(world.state.db.engine, "commit", on_commit)
    return commits


def failing_insert(_conn: Any, rows: list[dict[str, object]]) -> None:
    raise OperationalError("INSERT INTO audit_entries", None, RuntimeError("disk full"))


class TestGroupCommit:
    def test_concurrent_requests_are_committed_together_and_all_written(
        self, fresh_world: World
    ) -> None:
        writer = AuditWriter(fresh_world.state.db)
        commits = count_commits(fresh_world)

        async def many() -> None:
            await asyncio.gather(*(writer.append(ACTOR, [entry(n)]) for n in range(20)))

        asyncio.run(many())

        assert written(fresh_world) == {f"report:writer-test-{n}" for n in range(20)}
        assert 1 <= commits[0] < 20

    def test_a_batch_that_cannot_be_written_fails_every_request_in_it(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        writer = AuditWriter(fresh_world.state.db)
        monkeypatch.setattr(audit, "insert_rows", failing_insert)

        async def many() -> list[BaseException | None]:
            return await asyncio.gather(
                *(writer.append(ACTOR, [entry(n)]) for n in range(5)), return_exceptions=True
            )

        outcomes = asyncio.run(many())

        assert all(isinstance(o, OperationalError) for o in outcomes), outcomes
        assert written(fresh_world) == set()

    def test_the_writer_recovers_after_a_failed_batch(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        writer = AuditWriter(fresh_world.state.db)

        async def fail_then_succeed() -> None:
            with monkeypatch.context() as patched:
                patched.setattr(audit, "insert_rows", failing_insert)
                with pytest.raises(OperationalError):
                    await writer.append(ACTOR, [entry(1)])
            await writer.append(ACTOR, [entry(2)])

        asyncio.run(fail_then_succeed())

        assert written(fresh_world) == {"report:writer-test-2"}

    def test_a_cancelled_request_still_has_its_entries_written(self, fresh_world: World) -> None:
        writer = AuditWriter(fresh_world.state.db)

        async def cancel_one() -> None:
            request = asyncio.create_task(writer.append(ACTOR, [entry(7)]))
            await asyncio.sleep(0)  # the request has handed its entries over
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await writer.append(ACTOR, [entry(8)])

        asyncio.run(cancel_one())

        assert written(fresh_world) == {"report:writer-test-7", "report:writer-test-8"}

    def test_nothing_to_record_commits_nothing(self, fresh_world: World) -> None:
        writer = AuditWriter(fresh_world.state.db)
        commits = count_commits(fresh_world)

        asyncio.run(writer.append(ACTOR, []))

        assert commits[0] == 0


class TestReadsThroughTheWriter:
    def test_a_read_whose_trace_cannot_be_written_is_not_answered(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        created = fresh_world.submit("USA", title="Only with a trace")
        fresh_world.token("ITA")  # the token itself is audited; get it first
        monkeypatch.setattr(audit, "insert_rows", failing_insert)
        # As a real server would: the error becomes a response instead of reaching the test.
        http = TestClient(fresh_world.app, raise_server_exceptions=False)

        response = http.get(
            f"{fresh_world.issuer}/v1/reports/{created['id']}", headers=fresh_world.headers("ITA")
        )

        assert response.status_code >= 500
        assert "Only with a trace" not in response.text
        assert response.headers["content-type"].startswith("application/problem+json")

    def test_reads_of_many_clients_at_once_each_leave_one_entry(self, fresh_world: World) -> None:
        created = fresh_world.submit("USA")
        readers = ["ITA", "DEU", "FRA", "GBR", "SAU", "TUR"]
        for code in readers:
            fresh_world.token(code)
        with transaction(fresh_world.state.sessionmaker) as session:
            before = session.scalar(select(func.count()).select_from(AuditEntry))

        async def read_all() -> list[int]:
            transport = httpx.ASGITransport(app=fresh_world.app)
            async with httpx.AsyncClient(transport=transport, base_url=fresh_world.issuer) as c:
                responses = await asyncio.gather(
                    *(
                        c.get(f"/v1/reports/{created['id']}", headers=fresh_world.headers(code))
                        for code in readers
                    )
                )
            return [r.status_code for r in responses]

        assert asyncio.run(read_all()) == [200] * len(readers)
        with transaction(fresh_world.state.sessionmaker) as session:
            reads = session.scalars(
                select(AuditEntry.actor).where(
                    AuditEntry.id >= before,
                    AuditEntry.action == "report.read",
                    AuditEntry.target == f"report:{created['id']}",
                )
            ).all()
        assert sorted(reads) == sorted(readers)

    def test_drain_waits_for_entries_already_handed_over(self, fresh_world: World) -> None:
        writer = AuditWriter(fresh_world.state.db)

        async def hand_over_then_drain() -> None:
            request = asyncio.create_task(writer.append(ACTOR, [entry(9)]))
            await asyncio.sleep(0)  # handed over; the request is then cancelled
            request.cancel()
            await writer.drain()

        asyncio.run(hand_over_then_drain())

        assert written(fresh_world) == {"report:writer-test-9"}
