"""Engine, declarative base and the one place where transactions commit."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
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


def _sqlite_engine(url: str) -> Engine:
    # Transactions are begun explicitly (see _WriterTurn), never by the driver behind our back.
    return create_engine(
        url,
        connect_args={"check_same_thread": False, "isolation_level": None},
        pool_size=8,
        max_overflow=8,
        hide_parameters=True,
    )


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings each supported database needs."""
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url)
        turn = _WriterTurn()
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", turn.begin)
        event.listen(engine, "commit", turn.end)
        event.listen(engine, "rollback", turn.end)
        return engine
    if url.startswith("postgresql"):
        # READ COMMITTED, whatever the server's default: the audit log's next index is read
        # after its lock is granted and must see the previous appender's commit (a snapshot
        # taken earlier, as under REPEATABLE READ, would not).
        return create_engine(
            url,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            hide_parameters=True,
            isolation_level="READ COMMITTED",
        )
    return create_engine(url, poolclass=NullPool, hide_parameters=True)


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, _record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def make_read_engine(url: str) -> Engine:
    """An engine for reads only: a snapshot per statement, writes refused by the database.

    Reads take no transaction of their own (no BEGIN, no COMMIT round trip) and, on SQLite,
    never wait for the writer's turn: in WAL mode a reader sees the last commit.
    """
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url)
        event.listen(engine, "connect", _sqlite_read_only)
        return engine
    if url.startswith("postgresql"):
        # No pre-ping (a round trip on every checkout): a read that finds its pooled
        # connection dead is simply tried again, see _read_unit.
        return create_engine(
            url,
            pool_size=10,
            max_overflow=10,
            isolation_level="AUTOCOMMIT",
            connect_args={"options": "-c default_transaction_read_only=on"},
            hide_parameters=True,
        )
    return create_engine(url, poolclass=NullPool, hide_parameters=True)


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


def _read_unit(engine: Engine, work: Callable[[Connection], T]) -> T:
    try:
        with engine.connect() as conn:
            return work(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    # The pooled connection had died (a database restart, say) and the pool has dropped it
    # and its siblings. A read changes nothing, so trying it once more on a new one is safe.
    with engine.connect() as conn:
        return work(conn)


def _append_unit(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return work(conn)


class Database:
    """An engine, its sessions, and how requests reach them.

    SQLite (the embedded default) admits one writer and answers in microseconds from the same
    process, so its units run inline on the event loop: a hop to a worker thread would cost
    more than the work, and more threads would only queue on the one write lock while holding
    the GIL. PostgreSQL work runs on worker threads, as many at once as the pool has connections.
    """

    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        # The URL as text with its password: str(URL) masks it as "***".
        self.read_engine = read_engine or make_read_engine(
            engine.url.render_as_string(hide_password=False)
        )
        self.sessionmaker = make_sessionmaker(engine)
        self.inline = engine.dialect.name == "sqlite"
        self.concurrency = 1 if self.inline else engine.pool.size()  # type: ignore[attr-defined]
        # A plain executor: anyio's thread hop costs several times more per call.
        self._workers: ThreadPoolExecutor | None = None

    async def _dispatch(self, func: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return func(*args)
        if self._workers is None:
            self._workers = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tearline-db")
        # The request's context goes along (its request id is written into audit entries).
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._workers, functools.partial(context.run, func, *args)
        )

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run `work` as one transaction; committed when this returns.

        The transaction (and on SQLite the write lock) is held only while `work` runs, never
        across event-loop turns. This is the one place requests commit.
        """
        return await self._dispatch(_unit, self.sessionmaker, work)

    async def append(self, work: Callable[[Connection], T]) -> T:
        """Run `work` as one transaction on a bare connection: no session, no refusal survivors.

        For the audit writer's batches and the audit tree's maintenance.
        """
        return await self._dispatch(_append_unit, self.engine, work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run read-only `work` on a connection of the read engine (which refuses writes)."""
        return await self._dispatch(_read_unit, self.read_engine, work)

    def dispose(self) -> None:
        """Stop the worker threads and close every pooled connection of both engines."""
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None
        self.engine.dispose()
        self.read_engine.dispose()
