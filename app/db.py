"""Engine, declarative base and the one place where transactions commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")
BUSY_TIMEOUT_SECONDS = 10

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, on SQLite too (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # In WAL mode NORMAL keeps every committed transaction across a crash or kill of the
    # process (the WAL is in the OS's hands at commit); only an OS crash or power loss can lose
    # the last commits. The embedded default accepts that; production runs on PostgreSQL.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.close()


class _WriterTurn:
    """One SQLite transaction at a time per engine, handed over without polling.

    SQLite admits one writer; left to its busy handler, waiting writers poll with sleeps of up
    to 100 ms, which under load turns milliseconds into seconds. Waiting on a lock hands the
    database over as soon as it is free. The busy timeout still guards against other processes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def begin(self, conn: Any) -> None:
        # Bounded like SQLite's own busy timeout, so a thread that (wrongly) opened a second
        # transaction on the same engine gets an error instead of waiting on itself forever.
        if not self._lock.acquire(timeout=BUSY_TIMEOUT_SECONDS):
            raise OperationalError("BEGIN IMMEDIATE", None, TimeoutError("database is busy"))
        conn.info["tearline_turn"] = True
        try:
            # Take the write lock at BEGIN so two writers never deadlock upgrading read locks.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.end(conn)
            raise

    def end(self, conn: Any) -> None:
        # SQLAlchemy fires commit/rollback events just before the driver call; a writer taking
        # the lock in that instant meets SQLite's busy handler once, briefly, never a deadlock.
        if conn.info.pop("tearline_turn", False):
            self._lock.release()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings each supported database needs."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "isolation_level": None},
            pool_size=8,
            max_overflow=8,
        )
        turn = _WriterTurn()
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", turn.begin)
        event.listen(engine, "commit", turn.end)
        event.listen(engine, "rollback", turn.end)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    return create_engine(url, poolclass=NullPool)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


def _commit_or_keep_trace(session: Session, exc: BaseException | None) -> None:
    if exc is None:
        session.commit()
        return
    session.rollback()
    # A refused request writes nothing, except the audit entries recording the refusal:
    # a denial must leave a trace even though the action it denies is rolled back.
    survivors: list[Callable[[Session], None]] = session.info.pop("on_rollback", [])
    if survivors:
        for add in survivors:
            add(session)
        session.commit()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error (keeping refusal traces)."""
    session = factory()
    try:
        yield session
    except BaseException as exc:
        _commit_or_keep_trace(session, exc)
        raise
    else:
        _commit_or_keep_trace(session, None)
    finally:
        session.close()


def _unit(factory: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    with transaction(factory) as session:
        return work(session)


class Database:
    """An engine, its sessions, and how many transactions may run at once in this process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessionmaker = make_sessionmaker(engine)
        # SQLite runs one writer at a time: more worker threads would only queue on its lock
        # while holding the GIL hostage. PostgreSQL gets as many as the pool has connections.
        self.concurrency = 1 if engine.dialect.name == "sqlite" else engine.pool.size()  # type: ignore[attr-defined]
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run `work` as one transaction on one worker thread; committed when this returns.

        A request's database work runs in a single hop to a worker thread, so the transaction
        (and on SQLite the write lock) is held only while that work runs, never across
        event-loop turns. This is the one place requests commit.
        """
        if self._limiter is None:
            # Made on first use, inside the event loop that will use it.
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        return await anyio.to_thread.run_sync(_unit, self.sessionmaker, work, limiter=self._limiter)
