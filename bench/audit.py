"""The audit log as a Merkle tree: what appending costs reads, proofs at scale, verification.

Three parts (`--parts`), each printing a table with its target and writing to one JSON file in
bench/results/ (audit-<UTC stamp>.json):

get     `bench/run.py`'s GET (`GET /v1/reports/{id}` read at `full` by another member, with its
        audit entry) against `tearline serve` with the tree kept and checkpoints issued every
        `--checkpoint-seconds` (on), without (off, TEARLINE_AUDIT_TREE_IN_SERVE=false), and at
        `--baseline-ref` (the commit before the Merkle log). The variants run side by side, each
        on its own data dir or scratch database, measured in turn (rotated order per round)
        with the bare endpoint at the start of each round. Target: on/off >= 0.90.
proofs  A log of `--entries` entries (PostgreSQL; SQLite with `--sqlite-entries`, for context) is
        bulk-loaded (COPY on PostgreSQL) with leaf hashes from app.audit.canonical and tree nodes
        from app.kit.merkle.Frontier, then `GET /v1/audit/proofs/inclusion` for random indexes
        (tree_size = N, and a random earlier size): sequential latencies, wrk throughput, and
        `tree.inclusion` in-process (no HTTP). Target (PostgreSQL): p99 < 20 ms.
verify  `tearline audit verify --json` on that log: entries/s, wall time, peak RSS (reported).

    .venv/bin/python bench/audit.py [--parts get,proofs,verify] [--backends sqlite,postgres] ...

See bench/README.md, "Audit log".
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import importlib
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its helpers sit beside this file.
from loadgen import LoadError, LoadSettings, Measurement, run_wrk
from run import (
    BENCH_DIR,
    DEFAULT_PG_ADMIN_URL,
    REPO,
    SOURCE,
    TEARLINE,
    BenchError,
    Cleanup,
    Runner,
    _on_sigterm,
    _pct,
    _tail,
    analyze_scratch_database,
    app_database_url,
    create_scratch_database,
    drop_stale_scratch_databases,
    export_ref,
    free_port,
    git_info,
    machine_cpu,
    pick_generator,
    process_cpu_seconds,
    report_payload,
    tearline_cmd,
    tearline_env,
    wait_ready,
)

GET_RATIO_TARGET = 0.90  # GET req/s with the tree kept / without
PROOF_P99_TARGET_MS = 20.0  # PostgreSQL, any entry of the loaded log
PARTS = ("get", "proofs", "verify")
# The commit before the Merkle log (5cea249): entries with database-sequence ids, no leaf hash.
BASELINE_REF = "a6dea6f"
PROOFS_SCRIPT = BENCH_DIR / "wrk_proofs.lua"
SETTINGS_KEPT = (
    "parts", "backends", "entries", "sqlite_entries", "repeat", "duration", "warmup", "threads",
    "connections", "timeout", "checkpoint_seconds", "get_preload", "baseline_ref", "member",
    "reader", "chair", "body_bytes", "proof_requests", "sqlite_proof_requests", "proof_warmup",
    "proof_earlier", "proof_duration", "load_jobs", "load_chunk", "seed", "ref", "verify_timeout",
)  # fmt: skip
# Roughly what one entry costs on disk (row, indexes, its share of tree nodes), to warn early.
BYTES_PER_ENTRY = {"postgres": 750, "sqlite": 450}


# --- the application's modules -------------------------------------------------------------

APP = SimpleNamespace()


def import_app(source: Path) -> SimpleNamespace:
    """app's modules, imported only now, from `source` (the working tree or an export of
    --ref, put first on sys.path so that it wins over the venv's editable install)."""
    if source != REPO and str(source) not in sys.path:
        sys.path.insert(0, str(source))
    for name in ("bootstrap", "db", "audit.canonical", "audit.models", "audit.tree", "kit.merkle"):
        setattr(APP, name.rpartition(".")[2], importlib.import_module(f"app.{name}"))
    return APP


# --- entries as the app writes them ----------------------------------------------------------

MEMBERS = (
    "USA", "ITA", "SAU", "DEU", "FRA", "GBR", "NLD", "ESP", "TUR", "ARE", "QAT", "IRQ", "JOR",
    "KWT", "BHR", "EGY", "MAR", "NGA", "KEN", "IND", "IDN", "MYS", "SGP", "AUS", "CAN", "JPN",
    "KOR", "NOR", "DNK", "BEL", "CHE", "POL",
)  # fmt: skip
APPS = ("dev", "portal", "fiu-sync", "analyst")
LEVELS = ("full", "full", "full", "tearline", "hit")
SCOPES = ("scope:reports:read", "scope:reports:write", "scope:search", "scope:webhooks")
PURPOSES = (None, None, None, None, "case 2026-0117", "joint analysis cell", "quarterly review")
SPACING_US = 2000  # entries ~2 ms apart on average; times strictly increase with the index
REPORT_POOL = 200_000


class EntryMaker:
    """Realistic stored entries (the shapes the app records), reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.reports = [f"{rng.getrandbits(128):032x}" for _ in range(REPORT_POOL)]
        self.reports = [f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}" for h in self.reports]
        self.policies = [f"{rng.getrandbits(256):064x}" for _ in range(3)]

    def rows(self, start: int, count: int, base: datetime) -> list[dict[str, Any]]:
        """Entries start .. start + count - 1 with their leaf hashes, as insert_rows makes them."""
        rng = random.Random(self.seed * 1_000_003 + start)
        out = []
        for index in range(start, start + count):
            when = base + timedelta(microseconds=index * SPACING_US + rng.randrange(SPACING_US))
            row = self._entry(rng)
            row["id"] = index
            row["time"] = when
            row["leaf_hash"] = APP.canonical.leaf_hash(row)
            out.append(row)
        return out

    def _entry(self, rng: random.Random) -> dict[str, Any]:
        code = rng.choice(MEMBERS)
        client = f"{code}.{rng.choice(APPS)}"
        report = f"report:{rng.choice(self.reports)}"
        policy = self.policies[0] if rng.random() < 0.9 else rng.choice(self.policies)
        version = f"version:{rng.choice((1, 1, 1, 2, 3))}"
        k = rng.random()
        actor: str | None = code
        target: str | None = report
        decision, purpose, reasons = "allow", None, []
        if k < 0.50:
            action, reasons = "report.read", [f"level:{rng.choice(LEVELS)}", version]
            purpose = rng.choice(PURPOSES)
        elif k < 0.70:
            action, reasons = "report.list_item", [f"level:{rng.choice(LEVELS)}", version]
        elif k < 0.76:
            action, target, reasons = "report.list", None, [f"items:{rng.randint(0, 50)}"]
        elif k < 0.81:
            action, reasons = "report.create", ["version:1"]
        elif k < 0.91:
            action, target, policy = "auth.token", f"client:{client}", None
            reasons = list(SCOPES[: rng.randint(1, len(SCOPES))])
        elif k < 0.95:
            action, decision, reasons = "report.read", "deny", ["not_found"]
        elif k < 0.98:
            action, target = "search.query", None
            reasons = [
                f"kind:{rng.choice(('iban', 'phone', 'wallet'))}",
                f"hits:{rng.randint(0, 9)}",
            ]
        else:
            action, decision, target, policy = "auth.reject", "deny", "/v1/reports/{id}", None
            actor, client, reasons = None, None, [rng.choice(("expired", "bad_signature"))]
        return {
            "actor": actor,
            "client": client,
            "action": action,
            "target": target,
            "decision": decision,
            "reasons": reasons,
            "policy_hash": policy,
            "purpose": purpose,
            "request_id": f"{rng.getrandbits(128):032x}",
        }


ENTRY_COLUMNS = (
    "id", "time", "actor", "client", "action", "target", "decision", "reasons", "policy_hash",
    "purpose", "request_id", "leaf_hash",
)  # fmt: skip
COPY_ENTRIES = f"COPY audit_entries ({', '.join(ENTRY_COLUMNS)}) FROM STDIN"
COPY_NODES = "COPY audit_nodes (level, idx, hash) FROM STDIN"
_COPY_UNSAFE = re.compile(r"[\t\n\r\\]")


def _copy_text(value: str | None) -> str:
    if value is None:
        return "\\N"
    if _COPY_UNSAFE.search(value):
        raise ValueError(f"generated value needs COPY escaping: {value!r}")
    return value


def copy_lines(rows: list[dict[str, Any]]) -> str:
    """The rows in COPY's text format, the values as psycopg would send them."""
    lines = []
    for r in rows:
        fields = [
            str(r["id"]),
            r["time"].isoformat(sep=" "),
            *(_copy_text(r[c]) for c in ("actor", "client", "action", "target", "decision")),
            _copy_text(json.dumps(r["reasons"])),
            *(_copy_text(r[c]) for c in ("policy_hash", "purpose", "request_id")),
            "\\\\x" + r["leaf_hash"].hex(),  # bytea hex input; the backslash escaped for COPY
        ]
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


# Each load worker process: its own EntryMaker (the same pools in every process, same seed).
_MAKER: list[EntryMaker] = []


def _worker_init(source: str, seed: int) -> None:
    import_app(Path(source))
    _MAKER.append(EntryMaker(seed))


def _make_chunk(task: tuple[int, int, float, str]) -> tuple[Any, bytes]:
    """Rows start .. start + count - 1: COPY text (PostgreSQL) or row dicts, and their leaves."""
    start, count, base_ts, kind = task
    rows = _MAKER[0].rows(start, count, datetime.fromtimestamp(base_ts, UTC))
    leaves = b"".join(r["leaf_hash"] for r in rows)
    return (copy_lines(rows) if kind == "copy" else rows), leaves


def chunks(
    source: Path, seed: int, n: int, chunk: int, jobs: int, kind: str, base: datetime
) -> Iterator[tuple[Any, bytes]]:
    """The entries 0 .. n - 1 in order, chunk by chunk, made by `jobs` processes (0: here)."""
    tasks = [(s, min(chunk, n - s), base.timestamp(), kind) for s in range(0, n, chunk)]
    if jobs <= 0:
        _worker_init(str(source), seed)
        for task in tasks:
            yield _make_chunk(task)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_worker_init, initargs=(str(source), seed)) as pool:
        # A window of chunks in flight, so results never pile up in memory.
        pending: collections.deque[Any] = collections.deque()
        todo = iter(tasks)
        for task in todo:
            pending.append(pool.apply_async(_make_chunk, (task,)))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            result = pending.popleft().get(timeout=600)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(_make_chunk, (nxt,)))
            yield result


@dataclass
class LoadStats:
    entries: int = 0
    nodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    root: bytes = b""  # the root over the loaded entries, as the loader computed it

    def to_json(self) -> dict[str, Any]:
        total = sum(self.seconds.values())
        return {
            "entries": self.entries,
            "nodes": self.nodes,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "total_seconds": round(total, 2),
            "entries_per_second": round(self.entries / total) if total else None,
        }


def _progress(done: int, n: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    print(f"    {done:,} / {n:,} entries ({rate:,.0f}/s)", flush=True)


def load_postgres(url: str, args: argparse.Namespace, n: int, base: datetime) -> LoadStats:
    """COPY n entries and their tree nodes into an empty, migrated database."""
    import psycopg  # noqa: PLC0415 - only the PostgreSQL backend needs it

    stats = LoadStats()
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0]:
            raise BenchError("the audit log is not empty before the load")
        # The secondary indexes are built once after the load (faster than row by row), from
        # their own definitions, so the schema ends up as the migrations made it.
        indexes = conn.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = 'audit_entries'::regclass AND NOT x.indisprimary"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.commit()
        frontier = APP.merkle.Frontier()
        started = time.perf_counter()
        next_note = 1_000_000
        for text, leaves in chunks(
            SOURCE[0], args.seed, n, args.load_chunk, args.load_jobs, "copy", base
        ):
            nodes = []
            for at in range(0, len(leaves), 32):
                for (level, idx), digest in frontier.append(leaves[at : at + 32]):
                    nodes.append(f"{level}\t{idx}\t\\\\x{digest.hex()}\n")
            with conn.cursor() as cur:
                with cur.copy(COPY_ENTRIES) as copy:
                    copy.write(text)
                if nodes:
                    with cur.copy(COPY_NODES) as copy:
                        copy.write("".join(nodes))
            conn.commit()
            stats.nodes += len(nodes)
            if frontier.size >= next_note:
                _progress(frontier.size, n, started)
                next_note += 1_000_000
        conn.execute("UPDATE audit_tree SET size = %s WHERE id = 1", (n,))
        conn.commit()
        stats.seconds["entries_and_nodes"] = time.perf_counter() - started
        stats.entries = frontier.size
        t = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        conn.commit()
        stats.seconds["indexes"] = time.perf_counter() - t
        stats.root = frontier.root()
    return stats


def load_sqlite(url: str, args: argparse.Namespace, n: int, base: datetime) -> LoadStats:
    """Insert n entries and their tree nodes through the app's engine and tables."""
    from sqlalchemy import text  # noqa: PLC0415

    stats = LoadStats()
    engine = APP.db.make_engine(url)
    entries, nodes_table = APP.models.AuditEntry.__table__, APP.models.AuditNode.__table__
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT count(*) FROM audit_entries")).scalar_one():
                raise BenchError("the audit log is not empty before the load")
            indexes = conn.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = 'audit_entries' AND sql IS NOT NULL"
                )
            ).all()
            for name, _ in indexes:
                conn.execute(text(f'DROP INDEX "{name}"'))
        frontier = APP.merkle.Frontier()
        started = time.perf_counter()
        next_note = 250_000
        for rows, leaves in chunks(
            SOURCE[0], args.seed, n, args.load_chunk, args.load_jobs, "rows", base
        ):
            nodes = []
            for at in range(0, len(leaves), 32):
                for (level, idx), digest in frontier.append(leaves[at : at + 32]):
                    nodes.append({"level": level, "idx": idx, "hash": digest})
            with engine.begin() as conn:
                conn.execute(entries.insert(), rows)
                if nodes:
                    conn.execute(nodes_table.insert(), nodes)
            stats.nodes += len(nodes)
            if frontier.size >= next_note:
                _progress(frontier.size, n, started)
                next_note += 250_000
        with engine.begin() as conn:
            conn.execute(text("UPDATE audit_tree SET size = :n WHERE id = 1"), {"n": n})
        stats.seconds["entries_and_nodes"] = time.perf_counter() - started
        stats.entries = frontier.size
        t = time.perf_counter()
        with engine.begin() as conn:
            for _, definition in indexes:
                conn.execute(text(definition))
        stats.root = frontier.root()
    finally:
        engine.dispose()
    # The WAL folded into the database file, so serve does not start with it.
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stats.seconds["indexes"] = time.perf_counter() - t
    return stats


# --- small helpers ---------------------------------------------------------------------------


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    if not values_ms:
        return dict.fromkeys(("n", "mean", "p50", "p90", "p99", "p999", "max"))
    ordered = sorted(values_ms)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {
        "n": len(ordered),
        "mean": statistics.fmean(ordered),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p999": pct(99.9),
        "max": ordered[-1],
    }


def _f(value: float | None, spec: str = ".2f") -> str:
    return format(value, spec) if value is not None else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def disk_report(pg_url: str | None) -> dict[str, Any]:
    """Free space where the data dirs and (if reachable) PostgreSQL's data live; printed."""
    paths = {
        "/work": Path("/work") if Path("/work").exists() else REPO,
        "tmp": tempfile.gettempdir(),
    }
    if pg_url:
        try:
            import psycopg  # noqa: PLC0415

            with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
                paths["postgres"] = conn.execute("SHOW data_directory").fetchone()[0]
        except Exception as exc:
            print(f"  (PostgreSQL data directory unknown: {exc})")
    out = {}
    for name, path in paths.items():
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        out[name] = {"path": str(path), "free_gb": round(usage.free / 1e9, 1)}
    df = subprocess.run(
        ["df", "-h", *{str(p["path"]) for p in out.values()}],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    print(df.stdout.rstrip())
    return out


def pg_direct_url(admin_url: str, name: str) -> str:
    """A libpq URL of the scratch database `name` (for psycopg directly)."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


# --- one served instance ---------------------------------------------------------------------


@dataclass
class Variant:
    """A build of the service and the settings it is served with."""

    name: str
    label: str
    command: list[str]
    source: Path
    settings: dict[str, str]
    has_tree: bool = True


@dataclass
class Served:
    variant: Variant
    backend: str
    tmp: Path
    env: dict[str, str]
    base: str
    proc: subprocess.Popen[bytes]
    log: Path
    db_url: str  # the app's URL (SQLAlchemy)
    direct: str  # psycopg URL, or the SQLite file
    database_name: str | None = None
    report_url: str | None = None

    def cli(self, procs: Any, args: list[str], timeout: float = 180) -> str:
        return tearline_cmd(procs, args, self.env, self.tmp, timeout, self.variant.command)

    def token(self, procs: Any, code: str, *scopes: str) -> str:
        extra = [a for s in scopes for a in ("--scope", s)]
        return "Bearer " + self.cli(procs, ["dev", "token", code, *extra]).splitlines()[-1].strip()

    def tree_state(self) -> dict[str, int] | None:
        """Log size, size the stored tree covers, checkpoints (None before the Merkle log)."""
        if not self.variant.has_tree:
            return None
        sql = (
            "SELECT (SELECT coalesce(max(id), -1) + 1 FROM audit_entries), "
            "(SELECT size FROM audit_tree WHERE id = 1), (SELECT count(*) FROM audit_checkpoints)"
        )
        if self.backend == "postgres":
            import psycopg  # noqa: PLC0415

            with psycopg.connect(self.direct, autocommit=True, connect_timeout=10) as conn:
                row = conn.execute(sql).fetchone()
        else:
            with sqlite3.connect(f"file:{self.direct}?mode=ro", uri=True, timeout=30) as conn:
                row = conn.execute(sql).fetchone()
            conn.close()
        return {"log_size": int(row[0]), "tree_size": int(row[1]), "checkpoints": int(row[2])}


def prepare(
    cleanup: Cleanup, args: argparse.Namespace, variant: Variant, backend: str
) -> tuple[Path, str, str, str | None]:
    """A temporary dir, and on PostgreSQL a scratch database: (tmp, app URL, direct, name)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tearline-bench-audit-{backend}-{variant.name}-"))
    cleanup.tmp_dirs.append(tmp)
    (tmp / "data").mkdir()
    if backend == "postgres":
        name = create_scratch_database(args.pg_url)
        cleanup.databases.append((args.pg_url, name))
        print(f"  [{variant.name}] scratch database {name}")
        return tmp, app_database_url(args.pg_url, name), pg_direct_url(args.pg_url, name), name
    db_file = tmp / "data" / "tearline.db"
    return tmp, f"sqlite:///{db_file.as_posix()}", str(db_file), None


def serve(
    cleanup: Cleanup,
    variant: Variant,
    backend: str,
    prepared: tuple[Path, str, str, str | None],
) -> Served:
    """`tearline dev init` and `tearline serve` on a prepared data dir and database."""
    tmp, db_url, direct, name = prepared
    port = free_port()
    env = tearline_env(tmp / "data", port, db_url if backend == "postgres" else None)
    env["TEARLINE_POLICY_DIR"] = str(variant.source / "policies")
    env.update(variant.settings)
    log = tmp / "serve.log"
    tearline_cmd(cleanup.procs, ["dev", "init"], env, tmp, command=variant.command)
    proc = cleanup.procs.start(
        [*variant.command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log=log,
        cwd=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{base}/healthz", log, f"tearline serve ({variant.name})")
    print(f"  [{variant.name}] tearline serve on :{port} (pid {proc.pid})", flush=True)
    return Served(variant, backend, tmp, env, base, proc, log, db_url, direct, name)


# --- part 1: GET with and without the tree kept ------------------------------------------------


def create_report(s: Served, procs: Any, args: argparse.Namespace) -> None:
    """As bench/run.py: one report by --member, read back at `full` by --reader."""
    body = report_payload(args.body_bytes)
    created = httpx.post(
        f"{s.base}/v1/reports",
        content=body,
        headers={"Authorization": s.token(procs, args.member), "Content-Type": "application/json"},
        timeout=30,
    )
    if created.status_code != 201:
        raise BenchError(f"creating the report failed: {created.status_code} {created.text}")
    s.report_url = f"{s.base}/v1/reports/{created.json()['id']}"
    check = httpx.get(
        s.report_url, headers={"Authorization": s.token(procs, args.reader)}, timeout=30
    )
    if check.status_code != 200 or check.json().get("access") != "full":
        raise BenchError(f"reading the report failed: {check.status_code} {check.text}")


def get_part(
    args: argparse.Namespace,
    runner: Runner,
    cleanup: Cleanup,
    backend: str,
    variants: list[Variant],
) -> dict[str, Any]:
    procs = cleanup.procs
    bare_port = free_port()
    bare_log = Path(tempfile.mkdtemp(prefix="tearline-bench-audit-bare-")) / "bare.log"
    cleanup.tmp_dirs.append(bare_log.parent)
    bare = procs.start(
        [sys.executable, str(BENCH_DIR / "bare.py"), "--port", str(bare_port)],
        env={k: v for k, v in os.environ.items() if not k.startswith("TEARLINE_")},
        log=bare_log,
    )
    bare_url = f"http://127.0.0.1:{bare_port}/bare"
    served = []
    preloaded = {}
    for variant in variants:
        prepared = prepare(cleanup, args, variant, backend)
        if args.get_preload and variant.has_tree:
            # A log that already holds many entries (the baseline commit's schema differs, so it
            # starts empty): what the maintainer reads grows with the log on some backends.
            preloaded[variant.name] = load_log(args, backend, prepared, args.get_preload)
        s = serve(cleanup, variant, backend, prepared)
        create_report(s, procs, args)
        served.append(s)
    wait_ready(bare, bare_url, bare_log, "bare app")
    rounds: list[dict[str, Any]] = []
    for i in range(args.repeat):
        # Rotated, so that no variant always runs first (or right after the bare endpoint).
        order = served[i % len(served) :] + served[: i % len(served)]
        print(f"  round {i + 1}/{args.repeat}: {', '.join(s.variant.name for s in order)}")
        r: dict[str, Any] = {"order": [s.variant.name for s in order]}
        r["bare"] = runner.measure("bare", bare_url, "GET", server_pid=bare.pid)
        for s in order:
            if s.database_name is not None:
                # As bench/run.py: autovacuum is off on this machine; the log grows every run.
                analyze_scratch_database(args.pg_url, s.database_name)
            before = s.tree_state()
            assert s.report_url is not None
            r[s.variant.name] = runner.measure(
                f"GET {s.variant.name}",
                s.report_url,
                "GET",
                auth=s.token(procs, args.reader),
                server_pid=s.proc.pid,
            )
            after = s.tree_state()
            if before and after:
                r[f"{s.variant.name}_tree"] = tree_delta(before, after)
                print(
                    f"    tree: log +{after['log_size'] - before['log_size']:,}, covered "
                    f"{after['tree_size']:,} of {after['log_size']:,}, "
                    f"+{after['checkpoints'] - before['checkpoints']} checkpoint(s)"
                )
        rounds.append(r)
    for s in served:
        if s.proc.poll() is not None:
            raise BenchError(f"tearline serve ({s.variant.name}) died:\n{_tail(s.log)}")
    summary = summarise_get(backend, rounds, [s.variant.name for s in served], served)
    summary["preloaded"] = preloaded
    return summary


def tree_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        "entries_added": after["log_size"] - before["log_size"],
        "checkpoints_issued": after["checkpoints"] - before["checkpoints"],
        "log_size_after": after["log_size"],
        "tree_size_after": after["tree_size"],
        "lag_after": after["log_size"] - after["tree_size"],
    }


def summarise_get(
    backend: str, rounds: list[dict[str, Any]], names: list[str], served: list[Served]
) -> dict[str, Any]:
    def ratio(r: dict[str, Any], a: str, b: str) -> float | None:
        return r[a].rps / r[b].rps if a in r and b in r and r[b].rps else None

    per_round = []
    for r in rounds:
        row: dict[str, Any] = {"bare_rps": r["bare"].rps, "order": r["order"]}
        for n in names:
            row[f"{n}_rps"] = r[n].rps
            row[f"{n}_vs_bare"] = ratio(r, n, "bare")
        for a, b in (("on", "off"), ("off", "before"), ("on", "before")):
            if a in names and b in names:
                row[f"{a}/{b}"] = ratio(r, a, b)
        per_round.append(row)

    def median(key: str) -> float | None:
        values = [row[key] for row in per_round if row.get(key) is not None]
        return statistics.median(values) if values else None

    variants = {}
    for n in names:
        ms = [r[n] for r in rounds]
        variants[n] = {
            "rps_median": median(f"{n}_rps"),
            "vs_bare_median": median(f"{n}_vs_bare"),
            "p50_ms_median": statistics.median(m.latency_ms["p50"] or 0 for m in ms),
            "p99_ms_median": statistics.median(m.latency_ms["p99"] or 0 for m in ms),
            "server_cpu_pct_median": statistics.median(m.server_cpu_pct or 0 for m in ms),
            "errors": sum(m.errors for m in ms),
            "tree": [r.get(f"{n}_tree") for r in rounds],
        }
    on_off = median("on/off")
    return {
        "backend": backend,
        "variants": variants,
        "labels": {s.variant.name: s.variant.label for s in served},
        "bare_rps_median": median("bare_rps"),
        "on_vs_off": on_off,
        "on_vs_off_all_rounds": [row.get("on/off") for row in per_round],
        "off_vs_before": median("off/before"),
        "on_vs_before": median("on/before"),
        "target": GET_RATIO_TARGET,
        "meets_target": on_off >= GET_RATIO_TARGET if on_off is not None else None,
        "errors": sum(r["bare"].errors for r in rounds)
        + sum(v["errors"] for v in variants.values()),
        "rounds": [
            {
                **per_round[i],
                **{k: (v.to_json() if isinstance(v, Measurement) else v) for k, v in r.items()},
            }
            for i, r in enumerate(rounds)
        ],
        "server_log_tails": {s.variant.name: _tail(s.log, 2000) for s in served},
    }


def print_get(results: dict[str, dict[str, Any]]) -> None:
    print(
        "\nTarget 1: GET /v1/reports/{id} (run.py's GET, with its audit entry): tree kept and "
        "checkpoints issued (on) vs not (off)"
    )
    head = (
        f"{'backend':<9} {'variant':<7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'vs bare':>7} {'srv CPU':>7} {'checkpts':>8} {'tree lag':>8}  {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for backend, res in results.items():
        for name, v in res["variants"].items():
            trees = [t for t in v["tree"] if t]
            checkpoints = sum(t["checkpoints_issued"] for t in trees) if trees else None
            lag = max(t["lag_after"] for t in trees) if trees else None
            print(
                f"{backend:<9} {name:<7} {_f(v['rps_median'], '.1f'):>8} "
                f"{_f(v['p50_ms_median']):>7} {_f(v['p99_ms_median']):>7} "
                f"{_f(v['vs_bare_median'], '.3f'):>7} {_pct(v['server_cpu_pct_median']):>7} "
                f"{checkpoints if checkpoints is not None else '-':>8} "
                f"{lag if lag is not None else '-':>8}  {v['errors']:>6}"
            )
        rounds = ", ".join(_f(x, ".3f") for x in res["on_vs_off_all_rounds"])
        print(
            f"{backend:<9} on/off {_f(res['on_vs_off'], '.3f')} (rounds: {rounds}), target >= "
            f"{GET_RATIO_TARGET:.2f}: {_verdict(res['meets_target'])}; off/before "
            f"{_f(res['off_vs_before'], '.3f')}, on/before {_f(res['on_vs_before'], '.3f')}; "
            f"bare {_f(res['bare_rps_median'], '.0f')} req/s"
            + ("  <-- runs had errors" if res["errors"] else "")
        )
        for name, load in res.get("preloaded", {}).items():
            print(f"{backend:<9} ({name} started with {load['entries']:,} entries preloaded)")
    print(
        "(medians over rounds; checkpts: issued during the warm-ups and measured runs, all "
        "rounds; tree lag: entries not yet covered by the stored tree right after a run, the "
        "largest (off: nothing is covered); before: the baseline commit)"
    )


# --- parts 2 and 3: a large log, proofs and verification ----------------------------------------


def measure_wrk_proofs(
    args: argparse.Namespace, cleanup: Cleanup, wrk: str, s: Served, size: int, auth: str
) -> Measurement:
    settings = LoadSettings(
        threads=args.threads,
        connections=args.connections,
        duration=args.proof_duration,
        warmup=0,
        timeout=args.timeout,
    )
    env = {"BENCH_PROOF_SIZE": str(size), "BENCH_PROOF_EARLIER": str(args.proof_earlier)}

    def once(duration: float) -> Measurement:
        return run_wrk(
            cleanup.procs,
            wrk,
            name="proofs",
            url=f"{s.base}/",
            mode="GET",
            settings=settings,
            duration=duration,
            auth=auth,
            script=PROOFS_SCRIPT,
            env=env,
        )

    if args.warmup > 0:
        once(args.warmup)
    cpu0, machine0, t0 = process_cpu_seconds(s.proc.pid), machine_cpu(), time.monotonic()
    m = once(args.proof_duration)
    cpu1, machine1, t1 = process_cpu_seconds(s.proc.pid), machine_cpu(), time.monotonic()
    if cpu0 is not None and cpu1 is not None:
        m.server_cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    if machine0 and machine1 and machine1[1] > machine0[1]:
        m.machine_cpu_pct = 100.0 * (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])
    return m


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def sequential_proofs(
    args: argparse.Namespace, s: Served, size: int, requests: int, auth: str, check: Any
) -> dict[str, Any]:
    """`requests` sequential requests per case, one keep-alive connection; and as a reference,
    as many of an audited chair read without a proof (the latest checkpoint): what every
    proof request pays besides the proof (token, client check, its audit entry's commit)."""
    rng = random.Random(args.seed + 7)
    out: dict[str, Any] = {}
    with httpx.Client(base_url=s.base, headers={"Authorization": auth}, timeout=60) as client:

        def ask(index: int, tree_size: int) -> tuple[float, dict[str, Any]]:
            t = time.perf_counter()
            response = client.get(
                "/v1/audit/proofs/inclusion", params={"index": index, "tree_size": tree_size}
            )
            elapsed = (time.perf_counter() - t) * 1000
            if response.status_code != 200:
                status = f"{response.status_code} {response.text[:300]}"
                raise BenchError(f"proof of {index} at {tree_size}: {status}")
            return elapsed, response.json()

        warm = [ask(rng.randrange(size), size)[0] for _ in range(args.proof_warmup)]
        out["warmup"] = percentiles(warm)
        for case in ("tree_size=N", "earlier size"):
            latencies, verified, path_lengths = [], 0, []
            for k in range(requests):
                index = rng.randrange(size)
                tree_size = size if case == "tree_size=N" else rng.randint(index + 1, size)
                elapsed, proof = ask(index, tree_size)
                latencies.append(elapsed)
                path_lengths.append(len(proof["path"]))
                if k < 20:  # a sample, checked against the root computed from the database
                    check(
                        index, tree_size, _b64(proof["leaf_hash"]), [_b64(h) for h in proof["path"]]
                    )
                    verified += 1
            out[case] = {
                **percentiles(latencies),
                "verified_against_root": verified,
                "path_length_mean": statistics.fmean(path_lengths),
            }
            p = out[case]
            print(
                f"    sequential, {case}: p50 {_f(p['p50'])} p90 {_f(p['p90'])} p99 "
                f"{_f(p['p99'])} max {_f(p['max'])} ms ({p['n']} requests, {verified} verified)",
                flush=True,
            )
        reference = []
        for _ in range(requests):
            t = time.perf_counter()
            response = client.get("/v1/audit/checkpoints/latest")
            reference.append((time.perf_counter() - t) * 1000)
            if response.status_code not in (200, 404):  # 404: no checkpoint issued yet
                raise BenchError(f"latest checkpoint: {response.status_code} {response.text[:300]}")
        out["reference"] = p = percentiles(reference)
        print(
            f"    sequential, reference (GET /v1/audit/checkpoints/latest, no proof): p50 "
            f"{_f(p['p50'])} p99 {_f(p['p99'])} max {_f(p['max'])} ms",
            flush=True,
        )
    return out


class RootCheck:
    """Checks a served inclusion proof against the root computed from the database."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.roots: dict[int, bytes] = {}

    def __call__(self, index: int, tree_size: int, leaf: bytes, path: list[bytes]) -> None:
        if tree_size not in self.roots:
            with self.engine.connect() as conn:
                self.roots[tree_size] = APP.tree.root(conn, tree_size)
        got = APP.merkle.root_from_inclusion(index, tree_size, leaf, path)
        if got != self.roots[tree_size]:
            raise BenchError(f"the proof of {index} at {tree_size} does not lead to the root")


def explain_inclusion(engine: Any, conn: Any, index: int, size: int) -> list[dict[str, Any]]:
    """The statements tree.inclusion sends (caught as sent, with their parameters) and their
    plans: EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL, EXPLAIN QUERY PLAN on SQLite."""
    from sqlalchemy import event  # noqa: PLC0415

    sent: list[tuple[str, Any]] = []

    def catch(_c: Any, _cur: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", catch)
    try:
        APP.tree.inclusion(conn, index, size)
    finally:
        event.remove(engine, "before_cursor_execute", catch)
    postgres = engine.dialect.name == "postgresql"
    explain = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
    plans = []
    for statement, parameters in sent:
        rows = conn.exec_driver_sql(explain + statement, parameters).all()
        plan = [r[0] if postgres else " ".join(map(str, r)) for r in rows]
        plans.append({"sql": statement, "parameters": parameters, "plan": plan})
    return plans


def in_process_proofs(
    args: argparse.Namespace, engine: Any, size: int, requests: int
) -> dict[str, Any]:
    """tree.inclusion on one read connection of the app's read engine, no HTTP; and the plans
    of the two queries load_nodes sends for a proof."""
    tree = APP.tree
    rng = random.Random(args.seed + 11)
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for case in ("tree_size=N", "earlier size"):
            times = []
            for _ in range(requests):
                index = rng.randrange(size)
                tree_size = size if case == "tree_size=N" else rng.randint(index + 1, size)
                t = time.perf_counter()
                tree.inclusion(conn, index, tree_size)
                times.append((time.perf_counter() - t) * 1000)
            out[case] = percentiles(times)
            p = out[case]
            print(
                f"    in-process tree.inclusion, {case}: p50 {_f(p['p50'], '.3f')} p99 "
                f"{_f(p['p99'], '.3f')} max {_f(p['max'], '.3f')} ms",
                flush=True,
            )
        out["plans"] = plans = explain_inclusion(engine, conn, rng.randrange(size), size)
        nodes = plans[-1]
        first, last = nodes["plan"][0].strip(), nodes["plan"][-1].strip()
        print(f"    plan of load_nodes' node query: {first} ... {last}")
    return out


def run_verify(args: argparse.Namespace, cleanup: Cleanup, s: Served) -> dict[str, Any]:
    """`tearline audit verify --json`, with wall time and peak RSS (GNU time, else rusage)."""
    gnu_time = Path("/usr/bin/time")
    cmd = [*s.variant.command, "audit", "verify", "--json"]
    if gnu_time.exists():
        cmd = [str(gnu_time), "-v", *cmd]
        how = "/usr/bin/time -v"
    else:
        wrapper = (
            "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print('Maximum resident set size (kbytes):', "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)"
        )
        cmd = [sys.executable, "-c", wrapper, *cmd]
        how = "getrusage(RUSAGE_CHILDREN)"
    t = time.perf_counter()
    proc = cleanup.procs.start(cmd, env=s.env, cwd=s.tmp, capture=True)
    try:
        out, err = proc.communicate(timeout=args.verify_timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"audit verify did not finish in {args.verify_timeout:.0f} s") from exc
    finally:
        cleanup.procs.stop(proc)
    wall = time.perf_counter() - t
    text = err.decode(errors="replace")
    try:
        report = json.loads(out)
    except ValueError as exc:
        raise BenchError(
            f"audit verify printed no JSON ({proc.returncode}): {text[-1500:]}"
        ) from exc
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "exit_code": proc.returncode,
        "ok": report["ok"],
        "entries": report["entries"],
        "nodes_checked": report["nodes_checked"],
        "checkpoints": report["checkpoints"],
        "findings": len(report["findings"]) + sum(report["unlisted"].values()),
        "findings_listed": report["findings"][:5],
        "seconds": report["seconds"],
        "entries_per_second": report["entries_per_second"],
        "wall_seconds": round(wall, 2),
        "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
        "measured_with": how,
    }


def database_size(s: Served) -> dict[str, Any]:
    if s.backend == "postgres":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(s.direct, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT pg_database_size(current_database()), "
                "pg_total_relation_size('audit_entries'), pg_total_relation_size('audit_nodes')"
            ).fetchone()
        return {"database_mb": row[0] / 1e6, "entries_mb": row[1] / 1e6, "nodes_mb": row[2] / 1e6}
    size = sum(p.stat().st_size for p in Path(s.direct).parent.glob("tearline.db*"))
    return {"database_mb": size / 1e6}


def load_log(
    args: argparse.Namespace, backend: str, prepared: tuple[Path, str, str, str | None], n: int
) -> dict[str, Any]:
    """Migrate a prepared, empty database to head and load n entries with their tree into it
    (before `dev init`, whose entries and all later ones then follow them in index and time)."""
    _, db_url, direct, name = prepared
    t = time.perf_counter()
    APP.bootstrap.upgrade_database(db_url)
    migrate = time.perf_counter() - t
    base = datetime.now(UTC) - timedelta(microseconds=n * SPACING_US + 60_000_000)
    print(f"  loading {n:,} entries ({args.load_jobs} generator process(es)) ...", flush=True)
    loader = load_postgres if backend == "postgres" else load_sqlite
    stats = loader(direct if backend == "postgres" else db_url, args, n, base)
    stats.seconds["migrate"] = migrate
    if backend == "postgres":
        t = time.perf_counter()
        assert name is not None
        analyze_scratch_database(args.pg_url, name, settle=True)
        stats.seconds["vacuum_analyze_checkpoint"] = time.perf_counter() - t
    engine = APP.db.make_read_engine(db_url)
    try:
        with engine.connect() as conn:
            stored_root = APP.tree.root(conn, n)
    finally:
        engine.dispose()
    if stored_root != stats.root:
        raise BenchError("the stored tree's root differs from the loader's")
    load = stats.to_json()
    print(
        f"  loaded {stats.entries:,} entries and {stats.nodes:,} nodes in "
        f"{load['total_seconds']:.1f} s ({load['entries_per_second']:,}/s): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in stats.seconds.items()),
        flush=True,
    )
    return load


def log_part(
    args: argparse.Namespace,
    cleanup: Cleanup,
    backend: str,
    variant: Variant,
    wrk: str | None,
) -> dict[str, Any]:
    """Load a log, then (proofs) serve it and ask for proofs, then (verify) verify it."""
    n = args.entries if backend == "postgres" else args.sqlite_entries
    res: dict[str, Any] = {"backend": backend, "entries_loaded": n}
    prepared = prepare(cleanup, args, variant, backend)
    db_url = prepared[1]
    res["load"] = load_log(args, backend, prepared, n)
    s = serve(cleanup, variant, backend, prepared)
    res["database"] = database_size(s)
    print(f"  database: {', '.join(f'{k} {v:,.0f}' for k, v in res['database'].items())}")
    if "proofs" in args.part_list:
        requests = args.proof_requests if backend == "postgres" else args.sqlite_proof_requests
        auth = s.token(cleanup.procs, args.chair, "audit")
        engine = APP.db.make_read_engine(db_url)
        try:
            res["in_process"] = in_process_proofs(args, engine, n, requests)
            res["sequential"] = sequential_proofs(args, s, n, requests, auth, RootCheck(engine))
        finally:
            engine.dispose()
        if wrk is not None:
            m = measure_wrk_proofs(args, cleanup, wrk, s, n, auth)
            res["wrk"] = m.to_json()
            print(
                f"    wrk {args.connections} connections: {m.rps:.1f} req/s, p50 "
                f"{_f(m.latency_ms['p50'])} p99 {_f(m.latency_ms['p99'])} ms, non-2xx "
                f"{m.non2xx}, socket errors {m.socket_error_count}, server CPU "
                f"{_pct(m.server_cpu_pct)}",
                flush=True,
            )
        else:
            res["wrk"] = None
            print("    (no wrk: throughput not measured)")
        worst = max(res["sequential"][c]["p99"] for c in ("tree_size=N", "earlier size"))
        res["p99_ms_worst_case"] = worst
        res["meets_target"] = worst < PROOF_P99_TARGET_MS if backend == "postgres" else None
        res["tree_after"] = s.tree_state()
    cleanup.procs.stop(s.proc)
    if s.proc.returncode not in (0, -signal.SIGTERM):
        res["serve_exit"] = s.proc.returncode
    res["server_log_tail"] = _tail(s.log, 2000)
    if "verify" in args.part_list:
        print("  tearline audit verify --json ...", flush=True)
        res["verify"] = v = run_verify(args, cleanup, s)
        print(
            f"    {v['entries']:,} entries in {v['seconds']:.1f} s: {v['entries_per_second']:,} "
            f"entries/s (wall {v['wall_seconds']:.1f} s, peak RSS {_f(v['peak_rss_mb'], '.0f')} "
            f"MB), ok={v['ok']}, findings {v['findings']}",
            flush=True,
        )
    return res


def print_log(results: dict[str, dict[str, Any]]) -> None:
    if any("sequential" in r for r in results.values()):
        print(
            "\nTarget 2: GET /v1/audit/proofs/inclusion for random entries (sequential, one "
            "connection; in-process: tree.inclusion without HTTP)"
        )
        head = (
            f"{'backend':<9} {'entries':>11} {'case':<13} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'p99 ms':>7} {'max ms':>8} {'in-proc p50':>11} {'in-proc p99':>11} "
            f"{'target':>7} {'result':<6}"
        )
        print(head)
        print("-" * len(head))
        for backend, r in results.items():
            if "sequential" not in r:
                continue
            for case in ("tree_size=N", "earlier size"):
                p, q = r["sequential"][case], r["in_process"][case]
                target = f"<{PROOF_P99_TARGET_MS:.0f}" if backend == "postgres" else "-"
                verdict = _verdict(p["p99"] < PROOF_P99_TARGET_MS) if backend == "postgres" else "-"
                print(
                    f"{backend:<9} {r['entries_loaded']:>11,} {case:<13} {_f(p['p50']):>7} "
                    f"{_f(p['p90']):>7} {_f(p['p99']):>7} {_f(p['max']):>8} "
                    f"{_f(q['p50'], '.3f'):>11} {_f(q['p99'], '.3f'):>11} {target:>7} {verdict:<6}"
                )
            p = r["sequential"]["reference"]
            print(
                f"{backend:<9} {'':>11} {'reference':<13} {_f(p['p50']):>7} {_f(p['p90']):>7} "
                f"{_f(p['p99']):>7} {_f(p['max']):>8}  (GET /v1/audit/checkpoints/latest: "
                "audited, no proof)"
            )
            w = r.get("wrk")
            if w:
                print(
                    f"{backend:<9} {'':>11} wrk {w['name']}: {w['rps']:.1f} req/s at "
                    f"{w['latency_ms']['p50'] or 0:.2f} / {w['latency_ms']['p99'] or 0:.2f} ms "
                    f"p50/p99, errors {w['errors']}, server CPU {_pct(w['server_cpu_pct'])}"
                )
    print("\nLoading (bench only: COPY/executemany, not the app's write path)")
    for backend, r in results.items():
        load = r["load"]
        print(
            f"{backend:<9} {load['entries']:>11,} entries, {load['nodes']:,} nodes in "
            f"{load['total_seconds']:.1f} s ({load['entries_per_second']:,} entries/s); "
            + ", ".join(f"{k} {v:.1f} s" for k, v in load["seconds"].items())
            + "; "
            + ", ".join(f"{k} {v:,.0f}" for k, v in r["database"].items())
        )
    if any("verify" in r for r in results.values()):
        print("\nTarget 3: tearline audit verify --json (reported)")
        head = (
            f"{'backend':<9} {'entries':>11} {'entries/s':>10} {'verify s':>8} {'wall s':>7} "
            f"{'peak RSS MB':>11} {'ok':<5} {'findings':>8}"
        )
        print(head)
        print("-" * len(head))
        for backend, r in results.items():
            v = r.get("verify")
            if v:
                print(
                    f"{backend:<9} {v['entries']:>11,} {v['entries_per_second']:>10,} "
                    f"{v['seconds']:>8.1f} {v['wall_seconds']:>7.1f} "
                    f"{_f(v['peak_rss_mb'], '.0f'):>11} {v['ok']!s:<5} {v['findings']:>8}"
                )


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help="comma list: get,proofs,verify")
    p.add_argument("--backends", default="sqlite,postgres", help="comma list: sqlite,postgres")
    p.add_argument(
        "--entries", type=int, default=10_000_000, help="PostgreSQL log size (default 10M)"
    )
    p.add_argument(
        "--sqlite-entries", type=int, default=1_000_000, help="SQLite log size (default 1M)"
    )
    p.add_argument("--repeat", type=int, default=3, help="GET rounds (variants rotated)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per GET measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each wrk")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout")
    p.add_argument(
        "--checkpoint-seconds",
        type=int,
        default=1,
        help="TEARLINE_AUDIT_CHECKPOINT_SECONDS of the `on` variant (default 1, the minimum)",
    )
    p.add_argument(
        "--get-preload",
        type=int,
        default=0,
        help="GET part: load this many entries (with their tree) into the on and off\n"
        "variants' logs first (default 0: fresh logs, as run.py)",
    )
    p.add_argument(
        "--baseline-ref",
        default=BASELINE_REF,
        help=f"commit before the Merkle log, a third GET variant (default {BASELINE_REF});\n"
        "'none' to skip",
    )
    p.add_argument("--member", default="USA", help="member whose <CODE>.dev client submits")
    p.add_argument("--reader", default="ITA", help="member whose client reads (at full)")
    p.add_argument("--chair", default="USA", help="chair whose client asks for proofs")
    p.add_argument("--body-bytes", type=int, default=2048, help="report body size")
    p.add_argument(
        "--proof-requests", type=int, default=2000, help="sequential proofs per case (PostgreSQL)"
    )
    p.add_argument(
        "--sqlite-proof-requests",
        type=int,
        default=200,
        help="the same on SQLite (context only; each proof scans audit_nodes there)",
    )
    p.add_argument("--proof-warmup", type=int, default=50, help="untimed proofs first")
    p.add_argument(
        "--proof-earlier", type=float, default=0.5, help="wrk: share asking an earlier size"
    )
    p.add_argument("--proof-duration", type=float, default=10.0, help="wrk seconds on proofs")
    p.add_argument(
        "--load-jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes making entries and leaf hashes (0: in this one)",
    )
    p.add_argument("--load-chunk", type=int, default=20_000, help="entries per COPY/transaction")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated entries")
    p.add_argument("--verify-timeout", type=float, default=10800.0, help="seconds, audit verify")
    p.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL, help="admin URL for scratch DBs")
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    p.add_argument(
        "--ref", help="measure this commit (a clean `git archive` export), not the working tree"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    args.part_list = [x.strip() for x in args.parts.split(",") if x.strip()]
    if set(args.part_list) - set(PARTS) or not args.part_list:
        p.error(f"--parts: some of {', '.join(PARTS)}")
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(args.backend_list) - {"sqlite", "postgres"} or not args.backend_list:
        p.error("--backends: sqlite and/or postgres")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be 1..20")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("--duration must be 1..600 s and --warmup 0..60 s")
    if args.entries < 2 or args.sqlite_entries < 2 or args.get_preload < 0:
        p.error("--entries and --sqlite-entries must be >= 2, --get-preload >= 0")
    if args.proof_requests < 1 or args.sqlite_proof_requests < 1:
        p.error("--proof-requests and --sqlite-proof-requests must be >= 1")
    if args.load_chunk < 100 or args.load_jobs < 0:
        p.error("--load-chunk >= 100, --load-jobs >= 0")
    if args.threads < 1 or args.connections < args.threads:
        p.error("need threads >= 1 and connections >= threads")
    args.started = datetime.now(UTC)
    args.stamp = args.started.strftime("%Y%m%dT%H%M%SZ")
    args.py_spy = None  # Runner.measure's profiler, never used here
    return args


def variants_for(args: argparse.Namespace, cleanup: Cleanup) -> list[Variant]:
    """on and off (the tree measured), and the baseline commit from a clean export."""
    command, source = list(TEARLINE), SOURCE[0]
    seconds = str(args.checkpoint_seconds)
    found = [
        Variant(
            "on",
            f"tree kept in serve, checkpoints every {seconds} s",
            command,
            source,
            {"TEARLINE_AUDIT_TREE_IN_SERVE": "true", "TEARLINE_AUDIT_CHECKPOINT_SECONDS": seconds},
        ),
        Variant(
            "off", "no maintenance, no checkpoints", command, source,
            {"TEARLINE_AUDIT_TREE_IN_SERVE": "false"},
        ),
    ]  # fmt: skip
    if args.baseline_ref.lower() != "none":
        exported = export_ref(args.baseline_ref, cleanup)
        # export_ref points the harness's globals at the export; this run keeps its own build.
        found.append(
            Variant(
                "before",
                f"{exported['commit'][:12]} (before the Merkle log)",
                list(TEARLINE),
                SOURCE[0],
                {},
                has_tree=False,
            )
        )
        TEARLINE[:], SOURCE[0] = command, source
        args.baseline = exported
    return found


def run_all(
    args: argparse.Namespace,
    cleanup: Cleanup,
    results: dict[str, Any],
    failures: dict[str, str],
) -> str:
    generator, wrk, generator_note = pick_generator(args)
    settings = LoadSettings(
        threads=args.threads,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        timeout=args.timeout,
    )
    runner = Runner(args, settings, generator, wrk, cleanup)
    args.tree = export_ref(args.ref, cleanup) if args.ref else git_info()
    changes = args.tree["changed_files"] if args.tree["dirty"] else []
    print(
        f"load generator: {generator_note}; {os.cpu_count()} cores; tree "
        f"{args.tree['commit'][:12]}" + (f" + changes in {', '.join(changes)}" if changes else "")
    )
    import_app(SOURCE[0])
    this = Variant("log", "as shipped", list(TEARLINE), SOURCE[0], {})
    if "get" in args.part_list:
        variants = variants_for(args, cleanup)
        for backend in args.backend_list:
            key = f"get/{backend}"
            print(f"\n== GET, {backend}: {', '.join(v.name for v in variants)}", flush=True)
            got = guarded(args, failures, key, get_part, args, runner, cleanup, backend, variants)
            if got is not None:
                results["get"][backend] = got
    if {"proofs", "verify"} & set(args.part_list):
        for backend in args.backend_list:
            n = args.entries if backend == "postgres" else args.sqlite_entries
            need = n * BYTES_PER_ENTRY[backend] / 1e9
            print(
                f"\n== log of {n:,} entries, {backend} (needs ~{need:.1f} GB of disk)", flush=True
            )
            where = args.disk.get("postgres" if backend == "postgres" else "tmp")
            if where and where["free_gb"] < 1.5 * need:
                print(f"  WARNING: only {where['free_gb']} GB free at {where['path']}")
            key = f"log/{backend}"
            proofs_wrk = wrk if generator == "wrk" else None
            got = guarded(args, failures, key, log_part, args, cleanup, backend, this, proofs_wrk)
            if got is not None:
                results["log"][backend] = got
    return generator_note


def guarded(
    args: argparse.Namespace, failures: dict[str, str], key: str, work: Any, *params: Any
) -> Any:
    """`work(*params)` for one backend's part, cleaned up after; a failure is recorded (None)
    and the run goes on."""
    cleanup: Cleanup = args.cleanup
    try:
        if "postgres" in key:
            for stale in drop_stale_scratch_databases(args.pg_url):
                print(f"  dropped stale scratch database {stale}")
        return work(*params)
    except (BenchError, LoadError, OSError, httpx.HTTPError) as exc:
        failures[key] = str(exc)
        print(f"  FAILED: {exc}", flush=True)
    except Exception as exc:
        if not type(exc).__module__.startswith(("psycopg", "sqlalchemy")):
            raise
        failures[key] = f"database: {exc}"
        print(f"  FAILED: database: {exc}", flush=True)
    finally:
        cleanup.run()
    return None


def write_results(
    args: argparse.Namespace,
    results: dict[str, Any],
    failures: dict[str, str],
    extra: dict[str, Any],
) -> Path:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path: Path = args.results_dir / f"audit-{args.stamp}.json"
    doc = {
        "started_at": args.started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "git": getattr(args, "tree", None),
        "baseline": getattr(args, "baseline", None),
        "settings": {k: getattr(args, k) for k in SETTINGS_KEPT},
        "targets": {"get_on_vs_off": GET_RATIO_TARGET, "proof_p99_ms": PROOF_P99_TARGET_MS},
        **extra,
        "failures": failures,
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cleanup = Cleanup(keep=args.keep)
    args.cleanup = cleanup
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5:
        print(f"NOTE: load average {load_at_start[0]:.2f} before the run: the machine is shared")
    disk = args.disk = disk_report(args.pg_url if "postgres" in args.backend_list else None)
    results: dict[str, Any] = {"get": {}, "log": {}}
    failures: dict[str, str] = {}
    status = 0
    generator_note = "?"
    try:
        generator_note = run_all(args, cleanup, results, failures)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped processes, dropped scratch databases", flush=True)
        status = 130
    except BenchError as exc:
        print(f"FAILED: {exc}")
        status = 1
    finally:
        cleanup.run(final=True)
    if results["get"]:
        print_get(results["get"])
    if results["log"]:
        print_log(results["log"])
    for key, why in failures.items():
        print(f"{key}: FAILED: {why[:2000]}")
    extra = {"generator": generator_note, "loadavg_at_start": load_at_start, "disk": disk}
    print(f"\nresults: {write_results(args, results, failures, extra)}")
    return status or verdicts(args, results, failures)


def verdicts(args: argparse.Namespace, results: dict[str, Any], failures: dict[str, str]) -> int:
    """Print what was missed or flagged; the exit status."""
    missed = [f"GET on/off {b}" for b, r in results["get"].items() if r["meets_target"] is False]
    missed += [
        f"proof p99 {b}" for b, r in results["log"].items() if r.get("meets_target") is False
    ]
    errored = [f"GET {b}" for b, r in results["get"].items() if r["errors"]]
    errored += [
        f"proofs wrk {b}" for b, r in results["log"].items() if r.get("wrk") and r["wrk"]["errors"]
    ]
    unverified = [
        f"verify {b}" for b, r in results["log"].items() if "verify" in r and not r["verify"]["ok"]
    ]
    if errored:
        print(f"FLAGGED: runs with non-2xx or socket errors: {', '.join(errored)}")
    if unverified:
        print(f"FLAGGED: audit verify found problems: {', '.join(unverified)}")
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    elif not failures:
        print("targets met (of those measured)")
    if failures or errored or unverified:
        return 1
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
