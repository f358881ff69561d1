"""Engines and units: SQLite pragmas, the writer turn, the read engine, where units run."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app import db
from app.audit import service as audit_service
from app.auth import service as auth_service
from app.db import make_engine
from app.reports import service as reports_service
from tests.conftest import BACKEND, World


class TestSqlitePragmas:
    def test_sqlite_runs_in_wal_mode_with_foreign_keys(self, tmp_path: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        engine.dispose()


class TestSqliteWriterTurn:
    def test_a_second_transaction_on_the_same_thread_fails_instead_of_hanging(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.2)
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        with engine.begin() as first:
            first.execute(text("SELECT 1"))
            with pytest.raises(OperationalError), engine.begin() as second:
                second.execute(text("SELECT 1"))
        # The turn was handed back: a later transaction proceeds.
        with engine.begin() as third:
            assert third.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()


class TestReadEngine:
    def test_the_read_engine_refuses_writes(self, fresh_world: World) -> None:
        db = fresh_world.state.db

        def write(conn: Connection) -> None:
            conn.execute(text("DELETE FROM audit_entries"))

        with pytest.raises(DBAPIError):
            asyncio.run(db.read(write))
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_entries")).scalar()

    @pytest.mark.skipif(BACKEND != "postgres", reason="a server-side disconnect needs PostgreSQL")
    def test_a_read_whose_pooled_connection_died_is_tried_again(self, fresh_world: World) -> None:
        db = fresh_world.state.db

        def backend_pid(conn: Connection) -> int:
            return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

        pid = asyncio.run(db.read(backend_pid))
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()

        assert asyncio.run(db.read(backend_pid)) != pid


class TestReadEngineUrl:
    def test_the_read_engine_connects_with_the_same_credentials(self) -> None:
        # str(URL) masks the password; a read engine built from it could never log in.
        database = db.Database(make_engine("postgresql+psycopg://app:s3cret@db.invalid/tearline"))
        assert database.read_engine.url.password == "s3cret"
        assert database.read_engine.url == database.engine.url
        database.dispose()


class TestWhereUnitsRun:
    def test_sqlite_units_run_on_the_calling_thread_and_postgresql_ones_on_workers(
        self, fresh_world: World
    ) -> None:
        db = fresh_world.state.db

        async def threads() -> tuple[int, int, int]:
            here = threading.get_ident()
            in_run = await db.run(lambda _session: threading.get_ident())
            in_read = await db.read(lambda _conn: threading.get_ident())
            return here, in_run, in_read

        here, in_run, in_read = asyncio.run(threads())
        if BACKEND == "sqlite":
            assert in_run == here
            assert in_read == here
        else:
            assert in_run != here
            assert in_read != here


def _read_one_values(world: World, member: str, report_id: str) -> dict[str, object]:
    return {
        "member": member,
        "policy_hash": world.state.policy.bundle.hash,
        "report_id": report_id,
        "now": db.utcnow(),
    }


class TestPrepared:
    """Statements on the driver's cursor give what SQLAlchemy's own execution gives."""

    def test_a_read_gives_the_same_row_as_sqlalchemy(self, world: World) -> None:
        # Datetimes, JSON lists and objects, booleans, bytes, a CASE label and literal binds.
        report_id = world.submit("USA", grading={"reliability": "B", "credibility": 2})["id"]
        values = _read_one_values(world, "USA", report_id)
        with world.state.db.read_engine.connect() as conn:
            ours = reports_service._READ_ONE.first(conn, values)
            theirs = conn.execute(reports_service._READ_ONE.statement, values).one()
        assert ours is not None
        assert dict(ours) == dict(theirs._mapping)
        assert ours.created_at.tzinfo is not None
        assert isinstance(ours.wrapped_data_key, bytes)

    def test_tuples_keep_the_order_of_the_selected_columns(self, world: World) -> None:
        report_id = world.submit("USA")["id"]
        values = {"report_id": report_id, "now": db.utcnow()}
        with world.state.db.read_engine.connect() as conn:
            ours = reports_service._AUDIENCE.tuples(conn, values)
            theirs = conn.execute(reports_service._AUDIENCE.statement, values).all()
        assert sorted(ours) == sorted(tuple(r) for r in theirs)
        assert len(ours) > 1

    def test_no_row_is_none_and_an_empty_list(self, world: World) -> None:
        values = _read_one_values(world, "USA", "00000000-0000-4000-8000-000000000000")
        with world.state.db.read_engine.connect() as conn:
            assert reports_service._READ_ONE.first(conn, values) is None
            assert reports_service._READ_ONE.all(conn, values) == []

    def test_a_value_fixed_in_the_statement_is_bound_by_the_statement(self, world: World) -> None:
        # `status == "active"` and `active IS true` are bound parameters the caller never gives.
        client = world.client_id("ITA")
        with world.state.db.read_engine.connect() as conn:
            found = auth_service._CLIENT_STATUS.first(conn, {"client_id": client})
            revoked_or_unknown = auth_service._CLIENT_STATUS.first(conn, {"client_id": "nobody"})
        assert found is not None
        assert found.id == client
        assert found.member_code == "ITA"
        assert revoked_or_unknown is None

    def test_listeners_see_the_statement(self, world: World) -> None:
        seen: list[str] = []

        def before(_c: object, _cur: object, statement: str, *_: object) -> None:
            seen.append(statement)

        engine = world.state.db.read_engine
        event.listen(engine, "before_cursor_execute", before)
        try:
            with engine.connect() as conn:
                auth_service._CLIENT_STATUS.first(conn, {"client_id": "nobody"})
        finally:
            event.remove(engine, "before_cursor_execute", before)
        assert any("FROM clients" in s for s in seen)

    def test_a_driver_error_arrives_as_a_dbapi_error_and_writes_nothing(
        self, fresh_world: World
    ) -> None:
        entry = audit_service.Entry("test.db", "allow")
        rows = [audit_service.row(audit_service.OPERATOR, entry) for _ in range(2)]
        # The second row takes an index that exists: the whole insert is refused by the
        # database (the driver's error, wrapped as SQLAlchemy's), and its transaction with it.
        leaves = [{**r, "id": 10**9 + i, "leaf_hash": b"\0" * 32} for i, r in enumerate(rows)]
        leaves[1]["id"] = 0
        engine = fresh_world.state.db.engine
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            audit_service._INSERT.run(conn, leaves)
        assert not caught.value.connection_invalidated
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM audit_entries WHERE id = 1000000000"))
            assert count.scalar() == 0

    @pytest.mark.skipif(BACKEND != "postgres", reason="a server-side disconnect needs PostgreSQL")
    def test_a_dead_connection_is_invalidated_and_the_read_tried_again(
        self, fresh_world: World
    ) -> None:
        database = fresh_world.state.db
        report_id = fresh_world.submit("USA")["id"]
        values = _read_one_values(fresh_world, "USA", report_id)

        def read(conn: Connection) -> tuple[int, object]:
            pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            return pid, reports_service._READ_ONE.first(conn, values)

        pid, _ = asyncio.run(database.read(read))
        with database.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
        # The first statement on the dead connection is ours: it must be seen as a disconnect.
        row = asyncio.run(database.read(lambda conn: reports_service._READ_ONE.first(conn, values)))
        assert row is not None
        assert row.id == report_id
