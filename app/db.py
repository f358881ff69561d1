"""Engine, declarative base and the one place where transactions commit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

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
    # NORMAL in WAL mode is durable across application crashes (not power loss mid-fsync of
    # the WAL); FULL makes an acknowledged write survive power loss too.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN so two writers never deadlock upgrading read locks.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings each supported database needs."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "isolation_level": None},
            pool_size=8,
            max_overflow=8,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
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


def get_session(request: Request) -> Iterator[Session]:
    """The request's session; the transaction commits before the response is sent."""
    with transaction(request.app.state.tearline.sessionmaker) as session:
        yield session


# scope="function": the commit happens before FastAPI sends the response, so a 2xx is never
# sent for a write that later fails to commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
