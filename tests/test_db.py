"""Engines and units: SQLite pragmas, the writer turn, the read engine, where units run, the
statements on the driver's cursor and the WAL checkpointer."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app import db
from app.audit import service as audit_service
from app.auth import service as auth_service
from app.db import make_engine
from app.reports import service as reports_service
from app.webhooks import service as webhooks_service
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


class TestPreparedInsert:
    """Inserts on the driver's cursor store what SQLAlchemy's own insert stores."""

    def test_a_report_row_is_stored_as_sqlalchemy_stores_it(self, fresh_world: World) -> None:
        # None into a JSON column ('null' there, not SQL NULL), datetimes, booleans, JSON lists.
        report = reports_service.StoredReport(
            id="00000000-0000-4000-8000-00000000000a",
            originator="USA",
            version=1,
            status="active",
            created_at=db.utcnow(),
            updated_at=db.utcnow(),
            classification="SECRET",
            tlp="AMBER",
            orcon=True,
            topics=["MOV.HAW"],
            grading=None,
            releasable_to=["ALL"],
            tearline_to=[],
            tearline_classification="UNCLASSIFIED",
            has_summary=False,
        )
        ours = dataclasses.asdict(report)
        theirs = {**ours, "id": "00000000-0000-4000-8000-00000000000b"}
        table = reports_service._reports
        with fresh_world.state.db.engine.begin() as conn:
            reports_service._INSERT_REPORT.run(conn, [ours])
            conn.execute(table.insert(), [theirs])
            # The values as the database holds them, read past every type processor.
            raw = conn.exec_driver_sql("SELECT * FROM reports WHERE orcon AND tlp = 'AMBER'")
            stored = {row[0]: row[1:] for row in raw}
        assert stored[ours["id"]] == stored[theirs["id"]]

    def test_a_value_the_statement_fixes_is_computed_by_the_database(
        self, fresh_world: World
    ) -> None:
        events = webhooks_service._events
        row = {
            "uid": "00000000-0000-4000-8000-0000000000e1",
            "type": "report.created",
            "occurred_at": db.utcnow(),
            "recipient": None,
            "report_id": None,
            "data": {"n": 1},
            "audience": None,
        }
        with fresh_world.state.db.engine.begin() as conn:
            insert = db.PreparedInsert(events, list(row), fixed={"position": text("41 + 1")})
            insert.run(conn, [row])
            ours = conn.execute(select(events).where(events.c.uid == row["uid"])).one()
        assert ours.position == 42
        assert ours.data == {"n": 1}
        assert ours.audience is None

    def test_a_column_whose_default_only_sqlalchemy_applies_must_be_given(self) -> None:
        # reports.status has default="active" in the model, not in the schema.
        with pytest.raises(ValueError, match="status"):
            db.PreparedInsert(reports_service._reports, ["id", "originator"])

    def test_on_a_fresh_connection_it_begins_the_transaction_its_rows_belong_to(
        self, fresh_world: World
    ) -> None:
        topic = {"report_id": fresh_world.submit("USA")["id"], "topic": "XX.TEST"}
        engine = fresh_world.state.db.engine
        count = text("SELECT count(*) FROM report_topics WHERE topic = 'XX.TEST'")
        with engine.connect() as conn:
            reports_service._INSERT_TOPIC.run(conn, [topic])
            assert conn.in_transaction()
            conn.rollback()
        with engine.connect() as conn:
            assert conn.execute(count).scalar() == 0
            reports_service._INSERT_TOPIC.run(conn, [topic])
            conn.commit()
        with engine.connect() as conn:
            assert conn.execute(count).scalar() == 1

    def test_a_row_with_a_key_it_does_not_insert_is_refused(self, fresh_world: World) -> None:
        row = {"report_id": "x", "topic": "XX.TEST", "surplus": 1}
        with (
            pytest.raises(ValueError, match="exactly"),
            fresh_world.state.db.engine.begin() as conn,
        ):
            reports_service._INSERT_TOPIC.run(conn, [row])

    def test_no_rows_is_no_statement(self, fresh_world: World) -> None:
        seen: list[str] = []
        engine = fresh_world.state.db.engine

        def before(_c: object, _cur: object, statement: str, *_: object) -> None:
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", before)
        try:
            with engine.begin() as conn:
                reports_service._INSERT_TOPIC.run(conn, [])
        finally:
            event.remove(engine, "before_cursor_execute", before)
        assert not any("report_topics" in s for s in seen)


def _write_pages(engine: Engine, commits: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (blob BLOB)"))
    for _ in range(commits):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO filler VALUES (randomblob(8000))"))


@pytest.mark.skipif(BACKEND != "sqlite", reason="PostgreSQL checkpoints on its own")
class TestCheckpointer:
    def test_the_log_is_copied_back_and_the_next_writer_starts_it_afresh(
        self, tmp_path: Path
    ) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        checkpointer = db.Checkpointer(engine)
        _write_pages(engine, 20)
        frames, copied = checkpointer.checkpoint()
        assert frames > 40
        assert copied == frames
        _write_pages(engine, 1)
        frames_after, _ = checkpointer.checkpoint()
        assert frames_after < 10
        engine.dispose()

    def test_commits_leave_the_copy_to_the_checkpointer(self, tmp_path: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        with engine.connect() as conn:
            bound = conn.execute(text("PRAGMA wal_autocheckpoint")).scalar()
        assert bound == db.AUTOCHECKPOINT_PAGES
        # Past SQLite's default bound of 1,000 pages, no commit copied the log back itself.
        _write_pages(engine, 300)
        frames, copied = db.Checkpointer(engine).checkpoint()
        assert frames > 1_000
        assert copied == frames
        engine.dispose()

    def test_the_last_frames_are_copied_in_the_writers_turn(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        checkpointer = db.Checkpointer(engine)
        turn = db._TURNS[engine]
        rounds: list[bool] = []

        def passive(_cursor: object) -> tuple[int, int]:
            # A writer committed while the first round copied: 10 frames are left.
            rounds.append(turn._lock.locked())
            return (100, 90) if len(rounds) == 1 else (100, 100)

        monkeypatch.setattr(checkpointer, "_passive", passive)
        assert checkpointer.checkpoint() == (100, 100)
        assert rounds == [False, True]
        assert not turn._lock.locked()
        engine.dispose()

    def test_far_behind_it_does_not_hold_up_the_writers(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        checkpointer = db.Checkpointer(engine)
        rounds: list[int] = []

        def passive(_cursor: object) -> tuple[int, int]:
            rounds.append(1)
            return 5_000, 5_000 - db.CATCH_UP_FRAMES - 1

        monkeypatch.setattr(checkpointer, "_passive", passive)
        checkpointer.checkpoint()
        assert len(rounds) == 1
        engine.dispose()

    def test_a_failing_stretch_is_logged_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        checkpointer = db.Checkpointer(engine, interval=0.005)
        calls: list[int] = []

        def failing() -> tuple[int, int]:
            calls.append(1)
            raise OSError("disk gone")

        monkeypatch.setattr(checkpointer, "checkpoint", failing)
        with caplog.at_level("WARNING", logger="tearline.db"):
            checkpointer.start()
            deadline = time.monotonic() + 5
            while len(calls) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            checkpointer.stop()
        assert len(calls) >= 5
        assert [r.getMessage() for r in caplog.records].count(
            "WAL checkpoint failed; retrying every 0.01 s"
        ) == 1
        engine.dispose()

    def test_the_thread_checkpoints_until_stopped(self, tmp_path: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        checkpointer = db.Checkpointer(engine, interval=0.01).start()
        _write_pages(engine, 5)
        deadline = time.monotonic() + 5
        while checkpointer.checkpoints < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        checkpointer.stop()
        assert checkpointer.checkpoints >= 2
        assert not checkpointer._thread.is_alive()
        engine.dispose()


class TestPreparedIn:
    """One IN list, any length: the rows SQLAlchemy's own expanding IN gives."""

    def _by_id(self, size: int) -> Any:
        table = reports_service._reports
        return select(table.c.id, table.c.originator, table.c.created_at).where(
            db.in_list(table.c.id, "id", size)
        )

    def test_any_number_of_items_gives_the_rows_of_the_plain_statement(
        self, fresh_world: World
    ) -> None:
        ids = [fresh_world.submit(code)["id"] for code in ("USA", "ITA", "DEU", "FRA", "ESP")]
        table = reports_service._reports
        with fresh_world.state.db.read_engine.connect() as conn:
            for most, items in ((8, ids[:3]), (2, ids), (1, ids[:1]), (4, [*ids, "unknown"])):
                lookup = db.PreparedIn(self._by_id, "id", most)
                ours = lookup.all(conn, {}, items)
                theirs = conn.execute(
                    select(table.c.id, table.c.originator, table.c.created_at).where(
                        table.c.id.in_(items)
                    )
                ).all()
                assert sorted(map(dict, ours), key=lambda r: r["id"]) == sorted(
                    (dict(r._mapping) for r in theirs), key=lambda r: r["id"]
                )
                assert {r["id"] for r in ours} == set(items) - {"unknown"}

    def test_no_items_is_no_rows(self, fresh_world: World) -> None:
        with fresh_world.state.db.read_engine.connect() as conn:
            assert db.PreparedIn(self._by_id, "id", 4).tuples(conn, {}, []) == []

    def test_the_largest_list_must_be_a_power_of_two(self) -> None:
        with pytest.raises(ValueError, match="power of two"):
            db.PreparedIn(self._by_id, "id", 6)
