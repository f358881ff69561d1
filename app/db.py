"""Engine, declarative base and the one place where transactions commit."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ColumnElement, Insert, Select
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")

log = logging.getLogger("tearline.db")
BUSY_TIMEOUT_SECONDS = 10
# SQLite's own bound is 1,000 pages. Where a Checkpointer runs, the commits' copy is only the
# fallback: the bound is raised so that they rarely meet it.
AUTOCHECKPOINT_PAGES = 10_000
# What a Checkpointer copies while holding the writers' turn, at most (see Checkpointer).
CATCH_UP_FRAMES = 256

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


class Record(dict[str, Any]):
    """A row as `Prepared` returns it: a dict that also answers `row.name` and `row._mapping`,
    like SQLAlchemy's Row, so code reading rows takes either."""

    __slots__ = ()

    @property
    def _mapping(self) -> Mapping[str, Any]:
        return self

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_Processor = Callable[[Any], Any] | None
AnySelect = Select[*tuple[Any, ...]]


class _Compiled:
    def __init__(
        self,
        statement: AnySelect | Insert,
        dialect: Dialect,
        column_keys: Sequence[str] | None = None,
    ) -> None:
        compiled = statement.compile(
            dialect=dialect,
            column_keys=list(column_keys) if column_keys is not None else None,
            compile_kwargs={"render_postcompile": True},
        )
        self.sql = str(compiled)
        # qmark/numeric drivers (sqlite3) take a sequence in this order; pyformat ones (psycopg)
        # take the names.
        self.positions: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positiontup is not None else None
        )
        # compiled name -> (processor, the caller's key, or None for a value fixed in the statement)
        self.binds: dict[str, tuple[_Processor, str | None, Any]] = {
            name: (
                bind.type.dialect_impl(dialect).bind_processor(dialect),
                bind.key if bind.required else None,
                bind.value,
            )
            for bind, name in compiled.bind_names.items()
        }
        columns = list(statement.selected_columns) if isinstance(statement, Select) else []
        self.keys = tuple(str(c.key) for c in columns)
        self.results: tuple[_Processor, ...] = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
        self.plain = all(p is None for p in self.results)

    def values(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if self.plain:
            return raw
        return tuple(p(v) if p is not None else v for p, v in zip(self.results, raw, strict=True))

    def parameters(self, values: Mapping[str, Any]) -> Any:
        bound = {}
        for name, (process, key, fixed) in self.binds.items():
            value = values[key] if key is not None else fixed
            # As SQLAlchemy does, None goes through the processor too (JSON makes it 'null').
            bound[name] = process(value) if process is not None else value
        if self.positions is None:
            return bound
        return tuple(bound[name] for name in self.positions)

    def record(self, raw: tuple[Any, ...]) -> Record:
        return Record(zip(self.keys, self.values(raw), strict=True))


class Prepared:
    """A SELECT compiled once per dialect and run on the driver's own cursor.

    For the few statements on every request's path: SQLAlchemy's work per execution (execution
    context, parameter and result processing, Row objects) costs several times what the
    statement itself does on SQLite. Parameters and results go through the same type processors
    SQLAlchemy would apply, so the rows are the same (tests/test_db.py compares them). The
    statement must use only named bind parameters and literal IN lists.
    """

    def __init__(self, statement: AnySelect) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        return compiled

    def all(self, conn: Connection, values: Mapping[str, Any]) -> list[Record]:
        """Every row, on the connection's current transaction (if any)."""
        compiled = self._for(conn.dialect)
        raw = _on_cursor(conn, compiled.sql, compiled.parameters(values), many=False)
        return [compiled.record(r) for r in raw]

    def tuples(self, conn: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row as a plain tuple in the order of the selected columns (cheaper than `all`)."""
        compiled = self._for(conn.dialect)
        raw = _on_cursor(conn, compiled.sql, compiled.parameters(values), many=False)
        return [compiled.values(r) for r in raw]

    def first(self, conn: Connection, values: Mapping[str, Any]) -> Record | None:
        """The first row, or None."""
        rows = self.all(conn, values)
        return rows[0] if rows else None


def in_list(column: ColumnElement[Any], key: str, size: int) -> ColumnElement[bool]:
    """`column IN (:<key>__in0, ..., :<key>__in<size-1>)`, for the statements of a PreparedIn;
    "__in" keeps the names apart from SQLAlchemy's own (report_id_1, ...)."""
    return column.in_([bindparam(f"{key}__in{i}", type_=column.type) for i in range(size)])


class PreparedIn:
    """A SELECT with one IN list (made with `in_list`), prepared for every power of two of
    items up to `most`: a list is padded by repeating its last item (which changes no IN), and
    a longer one is sent in chunks of `most`, their rows together. So a list of any length runs
    on the driver's cursor like `Prepared`, from a handful of compiled statements.
    """

    def __init__(self, build: Callable[[int], AnySelect], key: str, most: int) -> None:
        if most < 1 or most & (most - 1):
            raise ValueError("most must be a power of two")
        self.key = key
        self.most = most
        self._build = build
        self._statements: dict[int, Prepared] = {}

    def _statement(self, bits: int) -> Prepared:
        prepared = self._statements.get(bits)
        if prepared is None:
            prepared = self._statements[bits] = Prepared(self._build(1 << bits))
        return prepared

    def _chunks(
        self, values: Mapping[str, Any], items: Sequence[Any]
    ) -> Iterator[tuple[Prepared, dict[str, Any]]]:
        for start in range(0, len(items), self.most):
            chunk = list(items[start : start + self.most])
            bits = (len(chunk) - 1).bit_length()
            chunk += [chunk[-1]] * ((1 << bits) - len(chunk))
            bound = {**values, **{f"{self.key}__in{i}": item for i, item in enumerate(chunk)}}
            yield self._statement(bits), bound

    def all(
        self, conn: Connection, values: Mapping[str, Any], items: Sequence[Any]
    ) -> list[Record]:
        """Every row for `items` (none for no items)."""
        chunks = self._chunks(values, items)
        return [row for prepared, bound in chunks for row in prepared.all(conn, bound)]

    def tuples(
        self, conn: Connection, values: Mapping[str, Any], items: Sequence[Any]
    ) -> list[tuple[Any, ...]]:
        """Every row for `items` as plain tuples (none for no items)."""
        chunks = self._chunks(values, items)
        return [row for prepared, bound in chunks for row in prepared.tuples(conn, bound)]


class PreparedInsert:
    """An INSERT of every row's `keys`, compiled once per dialect and sent as one executemany on
    the driver's cursor (for the inserts on every request's path: audit entries, reports and
    their decisions, index rows, events).

    `keys` must name every column the rows give, and the rows must give each of them: a column
    left out gets its server default, never a Python-side `default=` of the model. `fixed`
    holds SQL expressions the statement itself supplies (a subquery, say), per column.
    """

    def __init__(
        self, table: Table, keys: Sequence[str], fixed: Mapping[str, Any] | None = None
    ) -> None:
        self.table = table
        self.keys = tuple(keys)
        self.fixed = dict(fixed or {})
        self._compiled: dict[str, _Compiled] = {}
        left_out = [
            c.key
            for c in table.columns
            if c.default is not None and c.key not in self.keys and c.key not in self.fixed
        ]
        if left_out:
            raise ValueError(f"{table.name}: give {left_out} (defaults only SQLAlchemy applies)")

    def run(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert `rows` (each with exactly the keys given) in the connection's transaction,
        begun here if the connection has none yet (as `conn.execute` would)."""
        if not rows:
            return
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            # inline(): no RETURNING of generated keys, which an executemany would discard.
            statement = self.table.insert().inline()
            if self.fixed:
                statement = statement.values(self.fixed)
            compiled = _Compiled(statement, conn.dialect, self.keys)
            self._compiled[conn.dialect.name] = compiled
        width = len(self.keys)
        if any(len(r) != width for r in rows):
            # A key given but not declared would be dropped silently; a missing one is a
            # KeyError below. SQLAlchemy's insert refuses both.
            raise ValueError(f"{self.table.name}: each row must give exactly {self.keys}")
        if not conn.in_transaction():
            conn.begin()
        _on_cursor(conn, compiled.sql, [compiled.parameters(r) for r in rows], many=True)


def _on_cursor(conn: Connection, sql: str, parameters: Any, *, many: bool) -> list[Any]:
    dialect = conn.dialect
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is None:
        raise RuntimeError("the connection is closed")
    cursor = dbapi_connection.cursor()
    try:
        # Listeners (statement logging, tests that count statements) see it before it runs
        # (before_cursor_execute, without an execution context); no after_cursor_execute.
        conn.dispatch.before_cursor_execute(conn, cursor, sql, parameters, None, many)
        if many:
            cursor.executemany(sql, parameters)
            return []
        cursor.execute(sql, parameters)
        return list(cursor.fetchall())
    except dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy itself would: a dead connection is invalidated (the pool drops it) and
        # the error arrives as a DBAPIError, which the callers' retry and error handling know.
        gone = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            parameters,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=gone,
            dialect=dialect,
        ) from exc
    finally:
        with contextlib.suppress(dialect.loaded_dbapi.Error):
            cursor.close()


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
    # Copying the WAL back into the database is left to a Checkpointer thread where one runs
    # (serve); this is the bound at which a committing writer does it itself, as a fallback.
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.close()


class Checkpointer:
    """Copies SQLite's write-ahead log back into the database file on a thread of its own.

    Left to SQLite, the commit that takes the log past its bound does the copy (and its
    fsync) itself, and on SQLite commits run on the event loop, so every request waits. This
    thread checkpoints every `interval` seconds instead, in PASSIVE mode: it never waits for
    a writer or a reader, and the driver releases the GIL while SQLite works. A checkpoint
    that fails is logged and tried again at the next turn; the commits' own fallback stays.
    """

    def __init__(self, engine: Engine, interval: float = 0.25) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tearline-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=BUSY_TIMEOUT_SECONDS)

    @staticmethod
    def _passive(cursor: Any) -> tuple[int, int]:
        _, frames, copied = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(copied)

    def checkpoint(self) -> tuple[int, int]:
        """One round: (frames in the log, frames copied back into the database file).

        Under steady writes the copy rarely catches up with the log, and SQLite starts the log
        afresh only once every frame is copied. So when little is left (CATCH_UP_FRAMES), the
        rest is copied holding the writers' turn, a few milliseconds during which the writers
        (and so, on SQLite, the event loop) wait; the next writer then starts the log from its
        beginning. The connection is taken before the turn, so no wait for the pool holds it.
        """
        # A raw pooled connection: no SQLAlchemy transaction, so no writer's turn is taken.
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                frames, copied = self._passive(cursor)
                turn = _TURNS.get(self._engine)
                if turn is not None and 0 < frames - copied <= CATCH_UP_FRAMES:
                    with turn.held():
                        frames, copied = self._passive(cursor)
            finally:
                cursor.close()
        finally:
            raw.close()
        self.checkpoints += 1
        return frames, copied

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint()
            except Exception:
                # Once per failing stretch, not four times a second.
                if not failing:
                    log.exception("WAL checkpoint failed; retrying every %.2f s", self._interval)
                failing = True
            else:
                if failing:
                    log.warning("WAL checkpoints succeed again")
                failing = False


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

    @contextmanager
    def held(self) -> Iterator[None]:
        """The turn without a transaction: writers of this engine wait meanwhile."""
        if not self._lock.acquire(timeout=BUSY_TIMEOUT_SECONDS):
            raise OperationalError("checkpoint", None, TimeoutError("database is busy"))
        try:
            yield
        finally:
            self._lock.release()


# Each SQLite engine's writer turn, for its Checkpointer.
_TURNS: weakref.WeakKeyDictionary[Engine, _WriterTurn] = weakref.WeakKeyDictionary()


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
        turn = _TURNS[engine] = _WriterTurn()
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
