"""Listing at scale: `GET /v1/reports?limit=50` as the number of stored reports grows.

Seeds reports through the service layer (one transaction per batch), growing the database size by
size (default 10,000 then 100,000 on SQLite, 10,000 then 1,000,000 on PostgreSQL). After each
size it starts `tearline serve` on the seeded data dir / scratch database, as bench/run.py does,
and measures sequential requests over HTTP for a state and a body: the first page and a page deep
in the cursor, each unfiltered and filtered by topic. Target: p99 at the largest size is at most
2x the p99 at the first. After the largest size it changes one member's clearance in a copy of
policies/ and times deciding every report again (reports/s), as the policy reloader does.

Prints a table, writes JSON to bench/results/. Every process, temporary dir and scratch database
is removed at the end, also on Ctrl-C. See bench/README.md, "Listing at scale".

    .venv/bin/python bench/listing.py --backend sqlite --sizes 2000,6000
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, event, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its helpers sit beside this file.
import entities
from run import (
    BENCH_DIR,
    DEFAULT_PG_ADMIN_URL,
    REPO,
    TEARLINE,
    BenchError,
    Cleanup,
    _on_sigterm,
    _tail,
    analyze_scratch_database,
    app_database_url,
    create_scratch_database,
    drop_stale_scratch_databases,
    free_port,
    git_info,
    tearline_cmd,
    tearline_env,
    wait_ready,
)

from app import bootstrap, db
from app.auth.service import Principal
from app.config import Settings
from app.db import PreparedInsert, transaction
from app.members import service as members_service
from app.policy.bundle import GROUPS, PolicyBundle, load_bundle
from app.policy.reload import REDECIDE_BATCH, failing_cases
from app.policy.service import PolicyState
from app.reports import service
from app.reports.models import Report, ReportAccess, ReportTopic
from app.reports.schemas import ReportIn
from app.state import AppState

PAGE = 50
DEEP = 0.9  # the deep page starts after the report at this fraction of the member's listing
P99_TARGET = 2.0
TOKEN_MAX_AGE = 600.0  # seconds; tokens live 15 minutes
CLASSIFICATIONS = ("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET")
TLPS = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
# Some topics are much more common than others, as in real traffic; the default --topic is the
# most common one (on about a quarter of the reports) and within both default members' mandates.
TOPIC_WEIGHTS = {"MOV.HAW": 6, "REV.OIL": 4, "MOV.BANK": 3, "REV.DON": 2, "MOV.VA": 2}
DEFAULT_TOPIC = "MOV.HAW"
CASES = (
    ("first", False, False),
    ("first+topic", True, False),
    ("deep", False, True),
    ("deep+topic", True, True),
)


# --- markings ------------------------------------------------------------------------------


class Markings:
    """Random but reproducible report submissions, spread over every member and marking.

    With a pool, markings (originator included) are drawn from `pool` distinct sets made up
    front, and only the content differs from report to report: the policy engine's cache then
    answers most decisions, which makes seeding two to three times faster.
    """

    def __init__(self, bundle: PolicyBundle, seed: int, pool: int = 0) -> None:
        self._rng = random.Random(seed)
        self.originators = sorted(c for c, m in bundle.members.items() if m.active)
        self._codes = sorted(bundle.members)
        self._topics = sorted(bundle.taxonomy.leaves)
        self._weights = [TOPIC_WEIGHTS.get(t, 1) for t in self._topics]
        self._pool = [self._markings() for _ in range(pool)]
        self._n = 0

    def _sample_topics(self) -> list[str]:
        rng, wanted, chosen = self._rng, self._rng.randint(1, 3), []
        while len(chosen) < wanted:
            topic = rng.choices(self._topics, self._weights)[0]
            if topic not in chosen:
                chosen.append(topic)
        return chosen

    def _audience(self, shares: tuple[float, ...]) -> list[str]:
        """A group alone, member codes alone, or a group and codes (shares: ALL, other group,
        codes alone; the rest is a group with codes)."""
        rng, r = self._rng, self._rng.random()
        if r < shares[0]:
            return ["ALL"]
        if r < shares[0] + shares[1]:
            return [rng.choice(GROUPS[1:])]
        codes = rng.sample(self._codes, rng.randint(1, 4))
        if r < sum(shares):
            return codes
        return [rng.choice(GROUPS), *codes]

    def _markings(self) -> tuple[str, dict[str, Any]]:
        """An originator and everything the policy engine decides on."""
        rng = self._rng
        markings: dict[str, Any] = {
            "topics": self._sample_topics(),
            "classification": rng.choice(CLASSIFICATIONS),
            "releasable_to": self._audience((0.35, 0.35, 0.15)),
            "tearline_to": self._audience((0.5, 0.3, 0.1)),
            "tearline_classification": rng.choice(("UNCLASSIFIED", "RESTRICTED")),
            "tlp": rng.choice(TLPS),
            "orcon": rng.random() < 0.05,
            "has_summary": rng.random() < 0.75,
        }
        return rng.choice(self.originators), markings

    def next(self) -> tuple[str, ReportIn]:
        """The originator and the submission of the next report."""
        rng = self._rng
        self._n += 1
        originator, markings = rng.choice(self._pool) if self._pool else self._markings()
        payload = {k: v for k, v in markings.items() if k != "has_summary"}
        topics = " / ".join(markings["topics"])
        payload["title"] = f"Listing bench report {self._n}: {topics}"
        payload["body"] = (
            f"Report {self._n}. A courier network settles proceeds through gold and "
            "exchange houses; ledgers are reconciled weekly. " * rng.randint(1, 4)
        )
        payload["entities"] = entities.draw(rng)
        if markings["has_summary"]:
            payload["summary"] = f"Sanitised summary of report {self._n}."
        if rng.random() < 0.6:
            payload["grading"] = {"reliability": rng.choice("ABCDEF"), "credibility": 3}
        return originator, ReportIn.model_validate(payload)


# --- seeding -------------------------------------------------------------------------------


@contextmanager
def engine_clock(policy: PolicyState, *, uncached: bool = False) -> Iterator[list[float]]:
    """Seconds spent in the policy engine's `decide` meanwhile (its share of the work); with
    `uncached`, every decision is computed (the engine's cache is cleared before each)."""
    spent = [0.0]
    original = policy.decide

    def timed(facts: Any) -> Any:
        if uncached:
            policy.engine.cache_clear()
        t0 = time.perf_counter()
        try:
            return original(facts)
        finally:
            spent[0] += time.perf_counter() - t0

    policy.decide = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        del policy.decide


def principal_of(code: str) -> Principal:
    """The caller the service sees for `<CODE>.dev` (the client `tearline dev init` made)."""
    # Not a secret: a token id only names the token in audit entries.
    bench_token = "listing-bench"  # noqa: S105
    return Principal(client_id=f"{code}.dev", member=code, scopes=frozenset(), token_id=bench_token)


class _GatheredInserts:
    """A session stand-in for `service.create` that gathers its plain INSERTs.

    Everything else (the member key lookup) goes to the real session's connection. The
    gathered rows are sent per table, in the order the tables were first written (so foreign
    keys hold), as one executemany each: the same rows `create` writes, in far fewer round
    trips. Anything `create` may do that this does not handle fails loudly, not silently.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._conn = session.connection()
        # Per table and keys, or per prepared insert: the rows, in the order first written.
        self._rows: dict[Any, list[dict[str, Any]]] = {}

    def connection(self) -> _GatheredInserts:
        return self

    @property
    def dialect(self) -> Any:
        return self._conn.dialect

    # The session's own: the audit entries `create` records are written at its commit.
    @property
    def info(self) -> dict[Any, Any]:
        return self._session.info

    def get_transaction(self) -> Any:
        return self._session.get_transaction()

    def get_nested_transaction(self) -> Any:
        return self._session.get_nested_transaction()

    def gather(self, insert: PreparedInsert, rows: Sequence[dict[str, Any]]) -> None:
        """Rows `create` hands to a prepared insert (see `gathering_prepared`)."""
        self._rows.setdefault(insert, []).extend(rows)

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        plain_insert = (
            isinstance(statement, Insert)
            and not statement._returning  # with RETURNING the caller wants rows back now
            and parameters is not None
        )
        if not plain_insert:
            return self._conn.execute(statement, parameters)
        rows = parameters if isinstance(parameters, list) else [parameters]
        for row in rows:
            self._rows.setdefault((statement.table, tuple(row)), []).append(row)
        return None

    def __getattr__(self, name: str) -> Any:
        raise BenchError(
            f"service.create used session/connection.{name}, which the batched seeding path "
            "does not support; run with --seed-path create"
        )

    def send(self) -> None:
        for key, rows in self._rows.items():
            if isinstance(key, PreparedInsert):
                key.run(self._conn, rows)
            else:
                table, _ = key
                self._conn.execute(table.insert(), rows)
        self._rows.clear()


@contextmanager
def gathering_prepared() -> Iterator[None]:
    """Prepared inserts on a _GatheredInserts are gathered too, not sent row by row; other
    statements on the driver's cursor (`db.Prepared`) go to its real connection."""
    original_run, original_on_cursor = PreparedInsert.run, db._on_cursor

    def run(insert: PreparedInsert, conn: Any, rows: Sequence[Any]) -> None:
        if isinstance(conn, _GatheredInserts):
            conn.gather(insert, rows)
        else:
            original_run(insert, conn, rows)

    def on_cursor(conn: Any, *args: Any, **kwargs: Any) -> Any:
        real = conn._conn if isinstance(conn, _GatheredInserts) else conn
        return original_on_cursor(real, *args, **kwargs)

    PreparedInsert.run = run  # type: ignore[method-assign]
    db._on_cursor = on_cursor
    try:
        yield
    finally:
        PreparedInsert.run = original_run  # type: ignore[method-assign]
        db._on_cursor = original_on_cursor


@dataclass
class Seeder:
    state: AppState
    markings: Markings
    path: str
    batch: int
    count: int = 0
    seconds: float = 0.0
    principals: dict[str, Principal] = field(default_factory=dict)

    def principal(self, code: str) -> Principal:
        if code not in self.principals:
            self.principals[code] = principal_of(code)
        return self.principals[code]

    def seed_to(self, target: int) -> dict[str, Any]:
        """Seed batches until `target` reports exist; throughput of this stretch."""
        start_count, started = self.count, time.perf_counter()
        last_print = started
        with engine_clock(self.state.policy) as engine_seconds, gathering_prepared():
            while self.count < target:
                self._seed_batch(min(self.batch, target - self.count))
                now = time.perf_counter()
                if now - last_print > 15 or self.count == target:
                    rate = (self.count - start_count) / (now - started)
                    print(f"  seeded {self.count:,} / {target:,}  ({rate:,.0f} reports/s)")
                    last_print = now
        wall = time.perf_counter() - started
        added = self.count - start_count
        return {
            "added": added,
            "seconds": wall,
            "reports_per_s": added / wall if wall else None,
            "engine_share": engine_seconds[0] / wall if wall else None,
            "path": self.path,
            "batch": self.batch,
        }

    def _seed_batch(self, n: int) -> None:
        """`n` reports through `service.create`, in one transaction."""
        submissions = [self.markings.next() for _ in range(n)]
        t0 = time.perf_counter()
        with transaction(self.state.sessionmaker) as session:
            writer: Any = _GatheredInserts(session) if self.path == "batched" else session
            for code, payload in submissions:
                service.create(
                    writer,
                    self.state.policy,
                    self.state.envelope,
                    self.state.blind_index,
                    self.principal(code),
                    payload,
                    None,
                )
            if isinstance(writer, _GatheredInserts):
                writer.send()
        self.seconds += time.perf_counter() - t0
        self.count += n


# --- the listing, as the service builds it ---------------------------------------------------


def listing_statement(member: str, policy_hash: str, topic: str | None) -> Any:
    """The member's readable listing, as `service.list_readable` filters it (no cursor)."""
    stmt = service.readable_statement(member, policy_hash)
    if topic is not None:
        stmt = stmt.where(
            Report.id.in_(select(ReportTopic.report_id).where(ReportTopic.topic == topic))
        )
    return stmt


def deep_cursor(conn: Connection, stmt: Any) -> tuple[int, int, str | None]:
    """(readable reports, depth of the cursor, a cursor after the report at DEEP of them)."""
    count = conn.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    depth = min(int(count * DEEP), max(count - 1, 0))
    row = conn.execute(
        stmt.order_by(ReportAccess.report_updated_at.desc(), ReportAccess.report_id.desc())
        .offset(depth)
        .limit(1)
    ).first()
    if row is None:
        return count, depth, None
    position = SimpleNamespace(id=row.id, updated_at=row.updated_at)
    return count, depth, service.encode_cursor(position)


@contextmanager
def captured_sql(engine: Engine, *markers: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with parameters) sent through `engine` meanwhile that contain every
    one of `markers`."""
    captured: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if all(m in statement for m in markers):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield captured
    finally:
        event.remove(engine, "before_cursor_execute", grab)


def explain(engine: Engine, statement: str, parameters: Any) -> dict[str, Any]:
    """The time and plan of one SELECT as sent (it is run once more): EXPLAIN ANALYZE on
    PostgreSQL, EXPLAIN QUERY PLAN on SQLite."""
    postgres = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        t0 = time.perf_counter()
        conn.exec_driver_sql(statement, parameters).all()
        query_ms = (time.perf_counter() - t0) * 1000
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    lines = [r[0] for r in rows] if postgres else [str(r[-1]) for r in rows]
    summary = f"{query_ms:.1f} ms: {_plan_summary(lines, postgres=postgres)}"
    # A sort under the LIMIT means every matching row is read and sorted for each page.
    sorts = any("Sort Key:" in line or "TEMP B-TREE FOR ORDER BY" in line for line in lines)
    return {"query_ms": query_ms, "sorts_all_rows": sorts, "plan": lines, "summary": summary}


def explain_listing(
    state: AppState, member: str, topic: str | None, cursor: str | None
) -> dict[str, Any]:
    """The plan of the listing query exactly as `list_readable` sends it (run once in-process)."""
    engine = state.engine
    with captured_sql(engine, "report_access", "ORDER BY") as captured, engine.connect() as conn:
        t0 = time.perf_counter()
        service.list_readable(
            conn,
            state.policy,
            state.envelope,
            principal_of(member),
            service.ListFilters(topic=topic),
            PAGE,
            cursor,
            [],
        )
        in_process_ms = (time.perf_counter() - t0) * 1000
    if not captured:
        return {"error": "no listing statement seen"}
    return {"in_process_ms": in_process_ms, **explain(engine, *captured[0])}


_NODE = re.compile(r"^\s*(?:->\s*)?([A-Z][A-Za-z ]+?(?: using \w+)?(?: on \w+)?)\s+\(")


def _plan_summary(lines: list[str], *, postgres: bool) -> str:
    if not postgres:
        return " | ".join(lines)
    nodes = [m.group(1) for line in lines if (m := _NODE.match(line))]
    sorts = [line.strip() for line in lines if "Sort Method" in line]
    took = next((line.strip() for line in lines if line.startswith("Execution Time")), "")
    return "; ".join([" > ".join(nodes), *sorts, took])


# --- HTTP measurement ----------------------------------------------------------------------


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)]


@dataclass
class Server:
    """`tearline serve` on the seeded database, and tokens from `tearline dev token`."""

    cleanup: Cleanup
    env: dict[str, str]
    tmp: Path
    port: int
    proc: Any = None
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start the server; seconds until it answered (start-up looks for stale decisions)."""
        log = self.tmp / "serve.log"
        t0 = time.perf_counter()
        self.proc = self.cleanup.procs.start(
            [*TEARLINE, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            log=log,
            cwd=self.tmp,
        )
        wait_ready(self.proc, f"{self.base}/healthz", log, "tearline serve")
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is not None:
                raise BenchError(f"tearline serve died:\n{_tail(self.tmp / 'serve.log')}")
            self.cleanup.procs.stop(self.proc)
            self.proc = None

    def auth(self, code: str) -> str:
        """A bearer token of `<CODE>.dev`, fetched again before it gets old."""
        cached = self.tokens.get(code)
        if cached is None or time.monotonic() - cached[1] > TOKEN_MAX_AGE:
            out = tearline_cmd(self.cleanup.procs, ["dev", "token", code], self.env, self.tmp)
            cached = ("Bearer " + out.splitlines()[-1].strip(), time.monotonic())
            self.tokens[code] = cached
        return cached[0]


def measure_case(
    server: Server, member: str, params: dict[str, str], requests: int, warmup: int
) -> dict[str, Any]:
    """`requests` sequential GETs after `warmup`; latency percentiles and what came back."""
    times: list[float] = []
    items: set[int] = set()
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.base, timeout=60) as http:
        for i in range(warmup + requests):
            # A case can outlast a token at large sizes: auth() fetches a new one when due.
            headers = {"Authorization": server.auth(member)}
            t0 = time.perf_counter()
            response = http.get("/v1/reports", params=params, headers=headers)
            elapsed = (time.perf_counter() - t0) * 1000
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code != 200:
                raise BenchError(
                    f"GET /v1/reports {params} as {member}: {response.status_code} "
                    f"{response.text[:500]}"
                )
            if i >= warmup:
                times.append(elapsed)
                items.add(len(response.json()["items"]))
    times.sort()
    return {
        "requests": requests,
        "warmup": warmup,
        "p50_ms": percentile(times, 50),
        "p90_ms": percentile(times, 90),
        "p99_ms": percentile(times, 99),
        "mean_ms": statistics.fmean(times),
        "max_ms": times[-1],
        "items_per_page": sorted(items),
        "statuses": statuses,
    }


# --- one backend ---------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    cleanup: Cleanup
    tmp: Path = field(init=False)
    database: str | None = None
    state: AppState | None = None

    def settings(self, policy_dir: Path, database_url: str | None, port: int) -> Settings:
        extra = {"database_url": database_url} if database_url else {}
        return Settings(
            _env_file=None,  # type: ignore[call-arg]
            env="development",
            data_dir=self.tmp / "data",
            policy_dir=policy_dir,
            issuer=f"http://127.0.0.1:{port}",
            **extra,
        )

    def run(self) -> dict[str, Any]:
        args = self.args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tearline-listing-{args.backend}-"))
        self.cleanup.tmp_dirs.append(self.tmp)
        database_url = None
        if args.backend == "postgres":
            for name in drop_stale_scratch_databases(args.pg_url):
                print(f"dropped stale scratch database {name}")
            self.database = create_scratch_database(args.pg_url)
            if not args.keep:
                self.cleanup.databases.append((args.pg_url, self.database))
            database_url = app_database_url(args.pg_url, self.database)
            print(f"scratch database {self.database}")
        port = free_port()
        env = tearline_env(self.tmp / "data", port, database_url)
        print("tearline dev init ...", flush=True)
        tearline_cmd(self.cleanup.procs, ["dev", "init"], env, self.tmp)
        policy_dir = REPO / "policies"
        self.state = bootstrap.build_state(self.settings(policy_dir, database_url, port))
        state = self.state
        bundle = state.policy.bundle
        check_members(bundle, args)
        markings = Markings(bundle, args.rng_seed, args.marking_pool)
        seeder = Seeder(state, markings, args.seed_path, args.seed_batch)
        server = Server(self.cleanup, env, self.tmp, port)
        print(
            f"policy bundle {bundle.hash[:12]}, {len(bundle.members)} members, "
            f"{len(markings.originators)} originators, {len(bundle.taxonomy.leaves)} topics",
            flush=True,
        )
        sizes = []
        for size in args.size_list:
            print(f"\n== {size:,} reports", flush=True)
            seeding = seeder.seed_to(size)
            print(
                f"  seeding: {seeding['added']:,} reports in {seeding['seconds']:.1f} s = "
                f"{seeding['reports_per_s']:,.0f} reports/s ({args.seed_path} path, batches of "
                f"{args.seed_batch}; {seeding['engine_share']:.0%} of it in the policy engine)",
                flush=True,
            )
            if self.database is not None:
                # autovacuum is off on this machine: without this the planner would plan
                # against the statistics of an empty database, and the checkpoint after a
                # bulk load of gigabytes would land in the middle of the measurement.
                t0 = time.perf_counter()
                analyze_scratch_database(args.pg_url, self.database, settle=True)
                print(
                    f"  VACUUM (ANALYZE) and CHECKPOINT done ({time.perf_counter() - t0:.1f} s; "
                    "autovacuum is off)"
                )
            sizes.append(self.measure_size(size, seeding, server))
        redecide = None if args.skip_redecide else self.redecide(database_url, port)
        return {
            "backend": args.backend,
            "database": self.database,
            "policy_hash": bundle.hash,
            "sizes": sizes,
            "redecide": redecide,
            "seeding_total": {
                "reports": seeder.count,
                "seconds_in_transactions": seeder.seconds,
                "reports_per_s": seeder.count / seeder.seconds if seeder.seconds else None,
            },
        }

    def database_bytes(self) -> int | None:
        assert self.state is not None
        with self.state.engine.connect() as conn:
            if self.database is not None:
                return conn.scalar(text("SELECT pg_database_size(current_database())"))
        path = self.tmp / "data" / "tearline.db"
        return sum(p.stat().st_size for p in path.parent.glob("tearline.db*"))

    def measure_size(self, size: int, seeding: dict[str, Any], server: Server) -> dict[str, Any]:
        args, state = self.args, self.state
        assert state is not None
        policy_hash = state.policy.bundle.hash
        members: dict[str, Any] = {}
        for member in (args.state, args.body):
            info: dict[str, Any] = {"cases": {}}
            with state.engine.connect() as conn:
                for topic in (None, args.topic):
                    count, depth, cursor = deep_cursor(
                        conn, listing_statement(member, policy_hash, topic)
                    )
                    key = "topic" if topic else "all"
                    info[f"readable_{key}"] = count
                    info[f"deep_depth_{key}"] = depth
                    info[f"cursor_{key}"] = cursor
            print(
                f"  {member}: reads {info['readable_all']:,} reports "
                f"({info['readable_topic']:,} with {args.topic}); deep page after position "
                f"{info['deep_depth_all']:,} / {info['deep_depth_topic']:,}",
                flush=True,
            )
            for name, with_topic, deep in CASES:
                cursor = info["cursor_topic" if with_topic else "cursor_all"] if deep else None
                plan = explain_listing(state, member, args.topic if with_topic else None, cursor)
                info["cases"][name] = {"plan": plan}
            members[member] = info
        seeded_bytes = self.database_bytes()
        print(f"  database size {_bytes(seeded_bytes)}", flush=True)
        startup = server.start()
        print(f"  tearline serve ready in {startup:.1f} s", flush=True)
        try:
            for member, info in members.items():
                for name, with_topic, deep in CASES:
                    params = {"limit": str(PAGE)}
                    if with_topic:
                        params["topic"] = args.topic
                    if deep:
                        cursor = info["cursor_topic" if with_topic else "cursor_all"]
                        if cursor is None:
                            continue
                        params["cursor"] = cursor
                    result = measure_case(server, member, params, args.requests, args.warmup)
                    case = info["cases"][name]
                    case.update(result)
                    plan = case["plan"]
                    print(
                        f"  {member:<8} {name:<12} p50 {result['p50_ms']:7.1f} ms  "
                        f"p99 {result['p99_ms']:7.1f} ms  items {result['items_per_page']}  "
                        f"| query alone {plan.get('query_ms', 0):.1f} ms"
                        + (", sorts every matching row" if plan.get("sorts_all_rows") else ""),
                        flush=True,
                    )
        finally:
            server.stop()
        return {
            "size": size,
            "seeding": seeding,
            "server_startup_s": startup,
            "database_bytes": seeded_bytes,
            # Each listing request also writes an audit entry per item listed.
            "database_bytes_after_requests": self.database_bytes(),
            "members": members,
        }

    def redecide(self, database_url: str | None, port: int) -> dict[str, Any]:
        """Change one member's clearance in a copy of the bundle; time deciding all again."""
        args = self.args
        assert self.state is not None
        print(f"\n== deciding again after a bundle change ({args.changed_member}'s clearance)")
        changed_dir = self.tmp / "policies-changed"
        shutil.copytree(REPO / "policies", changed_dir)
        before, after = change_clearance(changed_dir / "roster.yaml", args.changed_member)
        failures = failing_cases(load_bundle(changed_dir))
        if failures:
            raise BenchError(f"the changed bundle fails its own cases: {failures[:5]}")
        state = bootstrap.build_state(self.settings(changed_dir, database_url, port))
        try:
            if state.policy.bundle.hash == self.state.policy.bundle.hash:
                raise BenchError("the changed bundle has the same hash as the original")
            with transaction(state.sessionmaker) as session:
                # What the reloader does before it swaps the bundle in.
                members_service.sync_roster(session, state.policy.bundle)
                session.flush()  # members must exist before their keys reference them
                for code in state.policy.bundle.members:
                    state.envelope.ensure_member_key(session, code)
            result = time_redecision(state, args.redecide_budget)
        finally:
            state.db.dispose()
        result["changed"] = f"{args.changed_member} clearance {before} -> {after}"
        print(
            f"  {result['reports']:,} of {result['total']:,} reports decided again in "
            f"{result['seconds']:.1f} s = {result['reports_per_s'] or 0:,.0f} reports/s "
            f"(batches of {REDECIDE_BATCH}; a batch took {result['first_tenth_batch_ms']:.0f} ms "
            f"in the first tenth, {result['last_tenth_batch_ms']:.0f} ms in the last; "
            f"{result['engine_share'] or 0:.0%} in the policy engine); stale decisions left: "
            f"{result['stale_decisions_left']:,}",
            flush=True,
        )
        if not result["complete"]:
            print(f"  STOPPED after the budget of {self.args.redecide_budget:g} s")
        for label, plan in result["stale_query_plans"].items():
            print(f"  plan of the stale query at {label}: {plan['summary'][:300]}")
        return result


def time_redecision(state: AppState, budget: float) -> dict[str, Any]:
    """`redecide_batch(session, policy, after, REDECIDE_BATCH)`, one transaction each, resuming
    after the last id, until none is left (as the reloader's Redecider does) or `budget` seconds
    have passed.

    The engine's cache is cleared before each decision: the rate is that of reports whose
    markings all differ, whatever --marking-pool did to the seeding.
    """
    total = seeded_reports(state)
    batches: list[float] = []
    plans: dict[str, Any] = {}
    stale_sql: list[tuple[str, Any]] = []
    done, complete = 0, False
    after: str | None = None
    started = time.perf_counter()
    last_print = started
    with engine_clock(state.policy, uncached=True) as engine_seconds:
        while time.perf_counter() - started < budget:
            t0 = time.perf_counter()
            with (
                captured_sql(state.engine, "report_access", "DISTINCT") as captured,
                transaction(state.sessionmaker) as session,
            ):
                ids = service.redecide_batch(session, state.policy, after, REDECIDE_BATCH)
            # The latest one: each batch resumes after the last id, so its SQL differs.
            stale_sql = captured[:1] or stale_sql
            n = len(ids)
            if n == 0:
                complete = True
                break
            batches.append(time.perf_counter() - t0)
            after = ids[-1]
            done += n
            for label, at in (("start", 0), ("half", total // 2)):
                if stale_sql and label not in plans and done >= at:
                    # The query that finds stale decisions, with this much left to do.
                    t1 = time.perf_counter()
                    plans[label] = {"decided": done, **explain(state.engine, *stale_sql[0])}
                    started += time.perf_counter() - t1  # not part of the timing
            if time.perf_counter() - last_print > 15:
                last_print = time.perf_counter()
                print(f"  {done:,} decided again ({done / (last_print - started):,.0f}/s)")
        seconds = time.perf_counter() - started
    with state.engine.connect() as conn:
        stale = conn.scalar(
            select(func.count())
            .select_from(ReportAccess)
            .where(ReportAccess.policy_hash != state.policy.bundle.hash)
        )
    tenth = max(1, len(batches) // 10)
    return {
        "batch": REDECIDE_BATCH,
        "total": total,
        "reports": done,
        "complete": complete,
        "seconds": seconds,
        "reports_per_s": done / seconds if seconds else None,
        "batches": len(batches),
        "first_tenth_batch_ms": 1000 * statistics.fmean(batches[:tenth]) if batches else 0.0,
        "last_tenth_batch_ms": 1000 * statistics.fmean(batches[-tenth:]) if batches else 0.0,
        "engine_share": engine_seconds[0] / seconds if seconds else None,
        "stale_decisions_left": stale or 0,
        "stale_query_plans": plans,
    }


def seeded_reports(state: AppState) -> int:
    with state.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Report)) or 0


def check_members(bundle: PolicyBundle, args: argparse.Namespace) -> None:
    for code, kind in ((args.state, "state"), (args.body, "body")):
        member = bundle.members.get(code)
        if member is None or member.kind != kind or not member.active:
            raise BenchError(f"{code} is not an active {kind} of the roster")
    if args.topic not in bundle.taxonomy.leaves:
        raise BenchError(f"--topic {args.topic} is not a leaf topic of the taxonomy")
    if args.changed_member not in bundle.members:
        raise BenchError(f"--changed-member {args.changed_member} is not in the roster")
    if any(case.member == args.changed_member for case in bundle.cases):
        raise BenchError(
            f"--changed-member {args.changed_member} is decided in policies/tests/; changing "
            "its clearance could break the bundle's own cases: pick another"
        )


_CLEARANCE = re.compile(r"(- code: (\w+)\n(?:[ \t]+\w+:.*\n)*?[ \t]+clearance: )(\w+)")


def change_clearance(roster: Path, code: str) -> tuple[str, str]:
    """Lower (or, at the bottom, raise) `code`'s clearance in roster.yaml; (before, after)."""
    source = roster.read_text()
    for m in _CLEARANCE.finditer(source):
        if m.group(2) != code:
            continue
        before = m.group(3)
        i = CLASSIFICATIONS.index(before)
        after = CLASSIFICATIONS[i - 1] if i > 0 else CLASSIFICATIONS[1]
        roster.write_text(source[: m.start(3)] + after + source[m.end(3) :])
        return before, after
    raise BenchError(f"no clearance line for {code} in {roster}")


# --- output --------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per member and case: p99 at the last size over p99 at the first, against the target."""
    first, last = result["sizes"][0], result["sizes"][-1]
    rows = []
    for member, info in last["members"].items():
        for name, *_ in CASES:
            a = first["members"][member]["cases"].get(name, {}).get("p99_ms")
            b = info["cases"].get(name, {}).get("p99_ms")
            ratio = b / a if a and b else None
            rows.append(
                {
                    "member": member,
                    "case": name,
                    "ratio": ratio,
                    "meets_target": ratio is not None and ratio <= P99_TARGET,
                }
            )
    return rows


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    sizes = result["sizes"]
    print(
        f"\n{result['backend']}: GET /v1/reports?limit={PAGE}, {args.requests} sequential "
        f"requests per case after {args.warmup} warm-up (deep: cursor at {DEEP:.0%} of the "
        f"member's listing; topic={args.topic})"
    )
    head = f"{'member':<9}{'case':<13}" + "".join(
        f"{format(s['size'], ',') + ': p50':>16}{'p99':>8}" for s in sizes
    )
    head += f"{'p99 ratio':>11}  target <= {P99_TARGET:g}"
    print(head)
    print("-" * len(head))
    by_key = {(v["member"], v["case"]): v for v in verdicts(result)}
    for member in sizes[-1]["members"]:
        for name, *_ in CASES:
            cells = ""
            for s in sizes:
                case = s["members"][member]["cases"].get(name, {})
                if "p50_ms" in case:
                    cells += f"{case['p50_ms']:16.1f}{case['p99_ms']:8.1f}"
                else:
                    cells += f"{'-':>16}{'-':>8}"
            v = by_key[(member, name)]
            ratio = f"{v['ratio']:.2f}" if v["ratio"] is not None else "-"
            verdict = "ok" if v["meets_target"] else "MISSED"
            print(f"{member:<9}{name:<13}{cells}{ratio:>11}  {verdict}")
    if sizes[0]["size"] != 10_000:
        print(f"(the ratio's baseline is the first size, {sizes[0]['size']:,}, not 10,000)")
    for s in sizes:
        seed = s["seeding"]
        print(
            f"size {s['size']:,}: seeded at {seed['reports_per_s']:,.0f} reports/s "
            f"({seed['path']} path), database {_bytes(s['database_bytes'])}"
        )
    redecide = result.get("redecide")
    if redecide:
        print(
            f"deciding again after a bundle change ({redecide['changed']}): "
            f"{redecide['reports']:,} of {redecide['total']:,} reports in "
            f"{redecide['seconds']:.1f} s = {redecide['reports_per_s'] or 0:,.0f} reports/s"
            + ("" if redecide["complete"] else " (STOPPED at the budget)")
        )
    if result["backend"] == "postgres":
        print(
            "PostgreSQL: autovacuum is off on this machine; VACUUM (ANALYZE) and CHECKPOINT "
            "ran after each seeding"
        )


def write_results(args: argparse.Namespace, doc: dict[str, Any]) -> Path:
    import json  # noqa: PLC0415

    out_dir: Path = args.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"listing-{args.backend}-{args.stamp}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


# --- command line --------------------------------------------------------------------------


def _parse_size(value: str) -> int:
    value = value.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    return int(float(value.rstrip("km")) * scale)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument(
        "--sizes",
        help="increasing report counts, e.g. 10000,100000 or 10k,1M (default: 10k,100k on "
        "SQLite,\n10k,1M on PostgreSQL); the first is the baseline of the p99 ratio",
    )
    p.add_argument(
        "--requests", type=int, default=300, help="timed requests per case (default 300)"
    )
    p.add_argument(
        "--warmup", type=int, default=20, help="untimed requests before each case (default 20)"
    )
    p.add_argument(
        "--seed-batch", type=int, default=500, help="reports per seeding transaction (default 500)"
    )
    p.add_argument(
        "--seed-path",
        choices=["batched", "create"],
        default="batched",
        help="batched (default): service.create with its INSERTs sent per table per batch;\n"
        "create: service.create as is, one round trip per INSERT",
    )
    p.add_argument("--rng-seed", type=int, default=1, help="seed of the markings (default 1)")
    p.add_argument(
        "--marking-pool",
        type=int,
        default=0,
        help="draw markings from this many distinct sets (default 0: every report its own);\n"
        "up to ~1000, the policy engine's cache answers most decisions while seeding",
    )
    p.add_argument(
        "--redecide-budget",
        type=float,
        default=1800.0,
        help="stop deciding again after this many seconds and report the rate so far\n"
        "(default 1800)",
    )
    p.add_argument("--state", default="DEU", help="the state measured (default DEU)")
    p.add_argument("--body", default="EGMONT", help="the body measured (default EGMONT)")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help=f"topic filter (default {DEFAULT_TOPIC})")
    p.add_argument(
        "--changed-member",
        default="NLD",
        help="member whose clearance the changed bundle lowers (default NLD; must not be\n"
        "decided in policies/tests/)",
    )
    p.add_argument("--skip-redecide", action="store_true", help="do not time deciding again")
    p.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL, help="admin URL for scratch DBs")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary data dir and the scratch database (the next bench run drops\n"
        "scratch databases whose process is gone)",
    )
    args = p.parse_args(argv)
    default_sizes = "10000,100000" if args.backend == "sqlite" else "10000,1000000"
    try:
        args.size_list = [_parse_size(s) for s in (args.sizes or default_sizes).split(",")]
    except ValueError:
        p.error(f"--sizes: not a list of counts: {args.sizes!r}")
    if any(b <= a for a, b in zip(args.size_list, args.size_list[1:], strict=False)):
        p.error("--sizes must be increasing")
    if args.size_list[0] < 1 or args.size_list[-1] > 5_000_000:
        p.error("--sizes must be within 1..5,000,000")
    if not 10 <= args.requests <= 100_000 or not 0 <= args.warmup <= 10_000:
        p.error("--requests must be 10..100000 and --warmup 0..10000")
    if not 1 <= args.seed_batch <= 10_000:
        p.error("--seed-batch must be 1..10000")
    if args.marking_pool < 0 or args.redecide_budget <= 0:
        p.error("--marking-pool must be >= 0 and --redecide-budget > 0")
    args.started = datetime.now(UTC)
    args.stamp = args.started.strftime("%Y%m%dT%H%M%SZ")
    return args


@contextmanager
def _no_tearline_environment() -> Iterator[list[str]]:
    """The in-process state must see the settings the server sees, nothing inherited."""
    removed = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("TEARLINE_")}
    try:
        yield sorted(removed)
    finally:
        os.environ.update(removed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5:
        print(
            f"NOTE: load average {load_at_start[0]:.2f} before the run: other processes share "
            "this machine's CPUs; latencies suffer"
        )
    print(
        f"listing at scale on {args.backend}: sizes {', '.join(f'{s:,}' for s in args.size_list)}; "
        f"members {args.state} (state) and {args.body} (body); machine {os.cpu_count()} cores",
        flush=True,
    )
    cleanup = Cleanup(keep=args.keep)
    bench = Bench(args, cleanup)
    result: dict[str, Any] | None = None
    status = 0
    error = None
    try:
        with _no_tearline_environment() as removed:
            if removed:
                print(f"ignoring {', '.join(removed)} from the environment")
            result = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the server, dropping the scratch database", flush=True)
        status, error = 130, "interrupted"
    except BenchError as exc:
        print(f"FAILED: {exc}")
        status, error = 1, str(exc)
    except Exception as exc:
        # A database that is unreachable or refuses: say so, without a traceback.
        if not type(exc).__module__.startswith(("psycopg", "sqlalchemy")):
            raise
        print(f"FAILED: database: {exc}")
        status, error = 1, f"database: {exc}"
    finally:
        if bench.state is not None:
            bench.state.db.dispose()
        if args.keep and bench.database:
            print(f"kept scratch database {bench.database}")
        cleanup.run(final=True)
    if result is None:
        return status
    print_table(result, args)
    rows = verdicts(result)
    doc = {
        "started_at": args.started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "git": git_info(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "backend",
                "size_list",
                "requests",
                "warmup",
                "seed_batch",
                "seed_path",
                "rng_seed",
                "marking_pool",
                "redecide_budget",
                "state",
                "body",
                "topic",
                "changed_member",
            )
        },
        "page": PAGE,
        "deep_fraction": DEEP,
        "p99_target_ratio": P99_TARGET,
        "verdicts": rows,
        "error": error,
        "result": result,
    }
    print(f"\nresults: {write_results(args, doc)}")
    missed = [f"{r['member']} {r['case']}" for r in rows if not r["meets_target"]]
    print(f"p99 target missed: {', '.join(missed)}" if missed else "p99 target met everywhere")
    return status


if __name__ == "__main__":
    sys.exit(main())
