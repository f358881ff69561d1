"""Engines and units: SQLite pragmas, the writer turn, the read engine, where units run."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app import db
from app.db import make_engine
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
