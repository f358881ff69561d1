"""The append path of the audit log: dense indexes in commit order, leaf hashes, entries that
commit or vanish with their action, a database that refuses to change them, many writers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Table, event, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app.audit import canonical, tree
from app.audit import service as audit
from app.audit import verify as verifier
from app.audit.models import AuditEntry
from app.auth.models import UsedAssertion
from app.db import transaction, utcnow
from app.reports.models import Report
from tests.audit.conftest import maintain, maintain_all
from tests.conftest import BACKEND, World, report_body

entries = cast(Table, AuditEntry.__table__)
ACTOR = audit.Actor(member="ITA", client="ITA.test")


def tag() -> str:
    return f"test:{uuid.uuid4().hex}"


def all_rows(world: World) -> list[Any]:
    with world.state.engine.connect() as conn:
        return list(conn.execute(select(entries).order_by(entries.c.id)))


def indexes_of(world: World, target: str) -> list[int]:
    with world.state.engine.connect() as conn:
        found = conn.execute(
            select(entries.c.id).where(entries.c.target == target).order_by(entries.c.id)
        )
        return [int(i) for i in found.scalars()]


def log_size(world: World) -> int:
    with world.state.engine.connect() as conn:
        return tree.log_size(conn)


def failing_insert(_conn: Any, rows: list[dict[str, object]]) -> None:
    raise OperationalError("INSERT INTO audit_entries", None, RuntimeError("disk full"))


class TestIndexesAndLeafHashes:
    def test_indexes_are_dense_from_0_and_each_leaf_hash_is_the_canonical_one(
        self, fresh_world: World
    ) -> None:
        created = fresh_world.submit("ITA")
        assert fresh_world.get("DEU", created["id"]).status_code == 200
        assert fresh_world.get("FATF", created["id"]).status_code == 200

        rows = all_rows(fresh_world)

        assert [r.id for r in rows] == list(range(len(rows)))
        for row in rows:
            assert bytes(row.leaf_hash) == canonical.leaf_hash(row._mapping), row.id

    def test_transactions_take_the_next_indexes_in_the_order_they_commit(
        self, fresh_world: World
    ) -> None:
        targets = [tag() for _ in range(3)]
        before = log_size(fresh_world)
        for target in targets:
            with transaction(fresh_world.state.sessionmaker) as session:
                audit.record(session, ACTOR, audit.Entry("test.log", "allow", target))

        assert [indexes_of(fresh_world, t) for t in targets] == [
            [before],
            [before + 1],
            [before + 2],
        ]

    def test_entries_of_one_transaction_take_consecutive_indexes_in_record_order(
        self, fresh_world: World
    ) -> None:
        targets = [tag() for _ in range(4)]
        before = log_size(fresh_world)
        with transaction(fresh_world.state.sessionmaker) as session:
            for target in targets:
                audit.record(session, ACTOR, audit.Entry("test.log", "allow", target))

        assert [indexes_of(fresh_world, t) for t in targets] == [[before + n] for n in range(4)]

    def test_the_leaf_hash_covers_the_index_so_the_same_content_hashes_differently_elsewhere(
        self, fresh_world: World
    ) -> None:
        with transaction(fresh_world.state.sessionmaker) as session:
            audit.record(session, ACTOR, audit.Entry("test.log", "allow", "test:same"))
        (row,) = (r for r in all_rows(fresh_world) if r.target == "test:same")

        moved = {**row._mapping, "id": row.id + 1}

        assert canonical.leaf_hash(moved) != bytes(row.leaf_hash)


class TestWrittenAtCommit:
    def test_entries_are_written_at_commit_after_the_sessions_own_changes(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        target = tag()
        statements: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(" ".join(statement.split()[:3]).upper())

        def used(jti: str) -> UsedAssertion:
            return UsedAssertion(client_id="ITA.test", jti=jti, expires_at=utcnow())

        event.listen(world.state.engine, "before_cursor_execute", seen)
        try:
            with transaction(world.state.sessionmaker) as session:
                # Recorded first, before the changes it records.
                audit.record(session, ACTOR, audit.Entry("test.log", "allow", target))
                session.add(used(f"{target}-flushed"))
                session.flush()
                written_before_commit = session.scalar(
                    select(func.count()).select_from(AuditEntry).where(AuditEntry.target == target)
                )
                session.add(used(f"{target}-at-commit"))
                mark = len(statements)
        finally:
            event.remove(world.state.engine, "before_cursor_execute", seen)

        assert written_before_commit == 0
        at_commit = statements[mark:]
        assert at_commit[0] == "INSERT INTO USED_ASSERTIONS", at_commit
        assert at_commit[-1] == "INSERT INTO AUDIT_ENTRIES", at_commit
        assert indexes_of(world, target) == [log_size(world) - 1]

    def test_a_rolled_back_transaction_leaves_no_entry_and_no_gap(self, fresh_world: World) -> None:
        world = fresh_world
        lost, kept = tag(), tag()
        before = log_size(world)

        def record_then_fail() -> None:
            with transaction(world.state.sessionmaker) as session:
                audit.record(session, ACTOR, audit.Entry("test.log", "allow", lost))
                raise RuntimeError

        with pytest.raises(RuntimeError):
            record_then_fail()
        with transaction(world.state.sessionmaker) as session:
            audit.record(session, ACTOR, audit.Entry("test.log", "allow", kept))

        assert indexes_of(world, lost) == []
        assert indexes_of(world, kept) == [before]

    def test_a_savepoint_rolled_back_keeps_the_entries_of_the_transaction_that_commits(
        self, fresh_world: World
    ) -> None:
        # The transaction (and the change it made) commits: so must what it recorded.
        world = fresh_world
        target = tag()
        with transaction(world.state.sessionmaker) as session:
            session.add(UsedAssertion(client_id="ITA.test", jti=target, expires_at=utcnow()))
            audit.record(session, ACTOR, audit.Entry("test.log", "allow", target))
            with contextlib.suppress(LookupError), session.begin_nested():
                raise LookupError  # a savepoint given up, as on a unique-key conflict

        with transaction(world.state.sessionmaker) as session:
            assert session.get(UsedAssertion, ("ITA.test", target)) is not None
        assert len(indexes_of(world, target)) == 1

    def test_a_released_savepoint_does_not_write_the_entries_before_the_commit(
        self, fresh_world: World
    ) -> None:
        # Releasing a savepoint fires before_commit too; the entries must still wait for the
        # real commit, or an outer savepoint rolled back afterwards would take them along.
        world = fresh_world
        target = tag()
        with transaction(world.state.sessionmaker) as session:
            session.add(UsedAssertion(client_id="ITA.test", jti=target, expires_at=utcnow()))
            audit.record(session, ACTOR, audit.Entry("test.log", "allow", target))
            with contextlib.suppress(LookupError), session.begin_nested():
                with session.begin_nested():
                    pass  # released
                raise LookupError  # the outer savepoint given up

        assert len(indexes_of(world, target)) == 1

    def test_a_refusal_survives_the_rollback_and_takes_the_next_index(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        action, refusal = tag(), tag()
        before = log_size(world)

        def refuse_then_fail() -> None:
            with transaction(world.state.sessionmaker) as session:
                audit.record(session, ACTOR, audit.Entry("test.log", "allow", action))
                audit.record_refusal(session, ACTOR, audit.Entry("test.log", "deny", refusal))
                raise RuntimeError

        with pytest.raises(RuntimeError):
            refuse_then_fail()

        assert indexes_of(world, action) == []
        assert indexes_of(world, refusal) == [before]
        assert log_size(world) == before + 1


class TestNoActionWithoutItsEntry:
    def test_a_report_whose_entry_cannot_be_written_is_not_stored_and_fails(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        headers = world.headers("ITA")  # the token is on record itself: taken first
        before = log_size(world)
        monkeypatch.setattr(audit, "insert_rows", failing_insert)
        # As a real server would: the error becomes a response instead of reaching the test.
        http = TestClient(world.app, base_url=world.issuer, raise_server_exceptions=False)

        response = http.post("/v1/reports", json=report_body(), headers=headers)

        assert response.status_code >= 500
        monkeypatch.undo()
        with transaction(world.state.sessionmaker) as session:
            assert session.scalar(select(func.count()).select_from(Report)) == 0
        assert log_size(world) == before

    def test_a_change_whose_entry_cannot_be_written_is_rolled_back(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        jti = tag()
        monkeypatch.setattr(audit, "insert_rows", failing_insert)

        def change_and_record() -> None:
            with transaction(world.state.sessionmaker) as session:
                session.add(UsedAssertion(client_id="ITA.test", jti=jti, expires_at=utcnow()))
                audit.record(session, ACTOR, audit.Entry("test.log", "allow", jti))

        with pytest.raises(OperationalError, match="disk full"):
            change_and_record()

        monkeypatch.undo()
        with transaction(world.state.sessionmaker) as session:
            stored = session.get(UsedAssertion, ("ITA.test", jti))
        assert stored is None
        assert indexes_of(world, jti) == []


# -- the database refuses changes ---------------------------------------------------------

CHANGES = {
    "update_entry": "UPDATE audit_entries SET decision = 'deny' WHERE id = 0",
    "delete_entry": "DELETE FROM audit_entries WHERE id = 0",
    "update_node": "UPDATE audit_nodes SET hash = hash WHERE level = 1 AND idx = 0",
    "delete_node": "DELETE FROM audit_nodes WHERE level = 1",
    "update_checkpoint": "UPDATE audit_checkpoints SET tree_size = tree_size + 1",
    "delete_checkpoint": "DELETE FROM audit_checkpoints",
}
TABLES = ("audit_entries", "audit_nodes", "audit_checkpoints")


def snapshot(conn: Connection) -> dict[str, list[Any]]:
    return {
        t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1, 2"))]  # noqa: S608 - constant
        for t in TABLES
    }


def execute_as_the_application(world: World, statement: str) -> None:
    with world.state.engine.begin() as conn:
        conn.execute(text(statement))


@pytest.fixture
def kept(fresh_world: World) -> World:
    """A log with stored tree nodes and a checkpoint."""
    fresh_world.submit("ITA")
    progress = maintain_all(fresh_world)
    assert progress is not None
    assert progress.checkpoint is not None
    return fresh_world


class TestAppendOnly:
    def test_an_entry_at_a_negative_index_is_refused(self, fresh_world: World) -> None:
        # Below index 0 the tree has no place for an entry, and listings would show it first.
        row = audit.row(ACTOR, audit.Entry("test.log", "allow", tag()))
        row.update(id=-1, leaf_hash=canonical.leaf_hash({**row, "id": -1}))
        with pytest.raises(DBAPIError), fresh_world.state.engine.begin() as conn:
            conn.execute(cast(Table, AuditEntry.__table__).insert(), [row])

    @pytest.mark.parametrize("statement", list(CHANGES.values()), ids=list(CHANGES))
    def test_the_database_refuses_to_change_or_remove_what_was_appended(
        self, kept: World, statement: str
    ) -> None:
        with kept.state.engine.connect() as conn:
            before = snapshot(conn)

        with pytest.raises(DBAPIError, match="append-only"):
            execute_as_the_application(kept, statement)

        with kept.state.engine.connect() as conn:
            assert snapshot(conn) == before

    @pytest.mark.parametrize("table", TABLES)
    def test_the_database_refuses_to_empty_a_table(self, kept: World, table: str) -> None:
        # TRUNCATE on PostgreSQL (a statement trigger); SQLite has only an unqualified DELETE.
        statement = f"TRUNCATE {table}" if BACKEND == "postgres" else f"DELETE FROM {table}"  # noqa: S608 - constant

        with pytest.raises(DBAPIError, match="append-only"):
            execute_as_the_application(kept, statement)

        with kept.state.engine.connect() as conn:
            count = conn.execute(text(f"SELECT count(*) FROM {table}"))  # noqa: S608 - constant
            assert count.scalar_one() > 0

    def test_an_entry_deleted_through_the_orm_is_refused(self, kept: World) -> None:
        def delete_the_first() -> None:
            with transaction(kept.state.sessionmaker) as session:
                first = session.get(AuditEntry, 0)
                assert first is not None
                session.delete(first)

        with pytest.raises(DBAPIError, match="append-only"):
            delete_the_first()

        assert log_size(kept) > 0
        assert all_rows(kept)[0].id == 0

    def test_an_entry_edited_through_the_orm_is_refused(self, kept: World) -> None:
        def edit_the_first() -> None:
            with transaction(kept.state.sessionmaker) as session:
                first = session.get(AuditEntry, 0)
                assert first is not None
                first.decision = "deny"

        with pytest.raises(DBAPIError, match="append-only"):
            edit_the_first()

        assert all_rows(kept)[0].decision != "deny"


# -- many writers at once -----------------------------------------------------------------

WRITERS = ("ITA", "DEU", "FRA", "GBR", "USA", "SAU", "TUR", "ESP")
OPERATIONS = 20


class TestConcurrentWriters:
    def test_many_writers_at_once_leave_a_dense_log_that_verifies(self, fresh_world: World) -> None:
        world = fresh_world
        headers = {code: world.headers(code) for code in WRITERS}
        seed = world.submit("ITA")["id"]
        start = log_size(world)
        midway = threading.Event()
        stop = threading.Event()
        issued: list[int] = []

        def keep_the_tree() -> None:
            # Each step a minute later: every step that finds new entries issues a checkpoint.
            step = 0
            while not stop.is_set():
                step += 1
                progress = maintain(world, now=utcnow() + timedelta(minutes=step))
                if progress is not None and progress.checkpoint is not None:
                    issued.append(progress.checkpoint.tree_size)
                    if progress.checkpoint.tree_size > start:
                        midway.set()
                time.sleep(0.01)

        def record_directly(code: str, n: int) -> None:
            with transaction(world.state.sessionmaker) as session:
                audit.record(
                    session,
                    audit.Actor(member=code, client=f"{code}.test"),
                    audit.Entry("test.concurrent", "allow", f"test:{code}-{n}"),
                )

        async def writer(http: httpx.AsyncClient, code: str) -> None:
            for n in range(OPERATIONS):
                if n == OPERATIONS // 2:
                    # Half-way, a checkpoint over some of the writers' entries must exist.
                    assert await asyncio.to_thread(midway.wait, 60)
                if n % 3 == 0:
                    created = await http.post(
                        "/v1/reports", json=report_body(), headers=headers[code]
                    )
                    assert created.status_code == 201, created.text
                elif n % 3 == 1:
                    read = await http.get(f"/v1/reports/{seed}", headers=headers[code])
                    assert read.status_code == 200, read.text
                else:
                    await asyncio.to_thread(record_directly, code, n)

        async def all_writers() -> None:
            transport = httpx.ASGITransport(app=world.app)
            async with httpx.AsyncClient(transport=transport, base_url=world.issuer) as http:
                await asyncio.gather(*(writer(http, code) for code in WRITERS))

        maintainer = threading.Thread(target=keep_the_tree)
        maintainer.start()
        try:
            asyncio.run(all_writers())
        finally:
            stop.set()
            maintainer.join()
        final = maintain_all(world, now=utcnow() + timedelta(days=1))

        rows = all_rows(world)
        assert [r.id for r in rows] == list(range(len(rows)))
        mine = [r for r in rows if r.id >= start]
        for code in WRITERS:
            done = [(r.action, r.target) for r in mine if r.actor == code]
            assert done.count(("report.read", f"report:{seed}")) == 7, code
            assert sum(1 for action, _ in done if action == "report.create") == 7, code
            assert sorted(t for a, t in done if a == "test.concurrent") == sorted(
                f"test:{code}-{n}" for n in range(2, OPERATIONS, 3)
            )
        # The last checkpoint covers the whole log (issued by the thread or the final step).
        assert final is not None
        if final.checkpoint is not None:
            issued.append(final.checkpoint.tree_size)
        assert issued[-1] == len(rows)
        assert any(start < size < len(rows) for size in issued), issued
        with world.state.engine.connect() as conn:
            report = verifier.verify(conn, world.state.verification_keys)
        assert report.findings == []
        assert (report.entries, report.checkpoints) == (len(rows), len(issued))
