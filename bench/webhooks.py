"""Webhook deliveries: end to end, drain, and what delivering costs the POST throughput.

For each backend (SQLite in a temporary data dir, PostgreSQL in a scratch database) and each
setup (`workers-N`: `tearline serve` with dispatch off and N `tearline worker` processes;
`embedded`: `tearline serve` dispatching itself), from a fresh database: `tearline dev init`,
`tearline serve`, the bare endpoint (bench/bare.py), a receiver on loopback (bench/receiver.py,
200 at once, counting per path and per `webhook-id`), and 32 subscriptions (one per member, every
report event and `match.found`). Then:

A. end to end: with dispatch running, post `--reports` reports (releasable to ALL, 16 in
   flight) and wait until every delivery of their events is acknowledged: seconds from the first
   POST to the last acknowledgement, deliveries/s from the first to the last acknowledgement,
   duplicates seen by the receiver, failures; a sample of signatures is verified with the
   `standardwebhooks` library and the secrets returned at subscription time;
B. drain: post `--reports` reports with dispatch stopped, then start it and time the drain;
C. POST impact: wrk on `POST /v1/reports` as bench/run.py does it, with dispatch stopped
   (idle), then with dispatch working through the backlog that run left (during); the ratio
   during / idle (target >= 0.80), both against the bare endpoint of the same run.

Target (PostgreSQL, two workers): >= 500 deliveries/s. See bench/README.md, "Webhook deliveries".

    .venv/bin/python bench/webhooks.py [--backends sqlite,postgres] [--workers 1 2] ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its helpers sit beside this file.
import entities
from loadgen import LoadError, LoadSettings
from run import (
    BENCH_DIR,
    BIN,
    DEFAULT_PG_ADMIN_URL,
    TEARLINE,
    BenchError,
    Cleanup,
    Runner,
    _on_sigterm,
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

from app.auth.client import make_assertion
from app.kit.jwt import SigningKey

DELIVERY_TARGET = 500.0  # deliveries/s, PostgreSQL with two workers
DELIVERY_TARGET_SETUP = ("postgres", "workers-2")
POST_RATIO_TARGET = 0.80  # POST req/s while delivering / idle
EVENTS = [
    "report.created",
    "report.updated",
    "report.revoked",
    "report.purged",
    "report.access_changed",
    "match.found",
]
POLL_SECONDS = 0.5
# What the dispatcher queries and what grows while it runs (see AutoAnalyze).
ANALYZED_TABLES = ("webhook_deliveries", "webhook_attempts", "events", "reports", "report_access")
SETTINGS_KEPT = (
    "backends", "workers", "embedded", "reports", "drain_reports", "phases", "concurrency",
    "post_concurrency", "duration", "warmup", "threads", "connections", "timeout", "member",
    "body_bytes", "ref", "tearline", "analyze_every",
)  # fmt: skip
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# --- small helpers ---------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return format(value, spec) if value is not None else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


class Tokens:
    """Access tokens of the `<CODE>.dev` clients, from the token endpoint (no CLI start-up)."""

    def __init__(self, base: str, data_dir: Path, issuer: str) -> None:
        self.base = base
        self.issuer = issuer
        self.clients_dir = data_dir / "dev" / "clients"
        self._keys: dict[str, SigningKey] = {}
        self._cache: dict[str, tuple[str, float]] = {}

    def codes(self) -> list[str]:
        return sorted(p.name.removesuffix(".dev.pem") for p in self.clients_dir.glob("*.dev.pem"))

    def fresh(self, code: str) -> str:
        key = self._keys.get(code)
        if key is None:
            kid = (self.clients_dir / f"{code}.dev.kid").read_text().strip()
            pem = (self.clients_dir / f"{code}.dev.pem").read_text()
            key = self._keys[code] = SigningKey.from_pem(kid, pem)
        answer = httpx.post(
            f"{self.base}/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": make_assertion(f"{code}.dev", key, self.issuer),
            },
            timeout=30,
        )
        if answer.status_code != 200:
            raise BenchError(f"token for {code}: {answer.status_code} {answer.text[:300]}")
        doc = answer.json()
        auth = "Bearer " + doc["access_token"]
        self._cache[code] = (auth, time.monotonic() + float(doc["expires_in"]))
        return auth

    def get(self, code: str) -> str:
        cached = self._cache.get(code)
        if cached and cached[1] - time.monotonic() > 120:
            return cached[0]
        return self.fresh(code)


class Database:
    """Read-only look at the app's database (autocommit), to follow fan-out and deliveries."""

    def __init__(self, backend: str, data_dir: Path, pg_url: str | None) -> None:
        self.backend = backend
        self.name: str | None = None
        if backend == "sqlite":
            path = data_dir / "tearline.db"
            self.conn: Any = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None
            )
        else:
            import psycopg  # noqa: PLC0415 - only the PostgreSQL backend needs it

            assert pg_url is not None
            self.conn = psycopg.connect(pg_url, autocommit=True, connect_timeout=10)
            self.name = self.conn.info.dbname

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """`sql` with `?` placeholders (psycopg's `%s` on PostgreSQL)."""
        if self.backend == "postgres":
            sql = sql.replace("?", "%s")
        return list(self.conn.execute(sql, params).fetchall())

    def scalar(self, sql: str, *params: Any) -> Any:
        rows = self.rows(sql, *params)
        return rows[0][0] if rows else None

    def max_event_id(self) -> int:
        return int(self.scalar("SELECT coalesce(max(id), 0) FROM events") or 0)

    def progress(self, base: int) -> dict[str, Any]:
        """Fan-out and delivery state of the events after id `base` (cheap: partial indexes;
        the full count by status only once nothing is pending or sending any more)."""
        unsequenced = self.scalar(
            "SELECT count(*) FROM events WHERE position IS NULL AND id > ?", base
        )
        last = self.scalar("SELECT coalesce(max(position), 0) FROM events")
        cursor = self.scalar("SELECT position FROM webhook_cursors WHERE name = 'fanout'")
        busy = {
            status: int(
                self.scalar(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = ? AND event_id > ?",
                    status,
                    base,
                )
                or 0
            )
            for status in ("pending", "sending")
        }
        statuses = busy
        if not any(busy.values()):
            statuses = dict(
                self.rows(
                    "SELECT status, count(*) FROM webhook_deliveries "
                    "WHERE event_id > ? GROUP BY status",
                    base,
                )
            )
        return {
            "unsequenced": int(unsequenced or 0),
            "last_position": int(last or 0),
            "fanout_cursor": int(cursor or 0),
            "statuses": {k: int(v) for k, v in statuses.items() if v},
        }

    def phase_figures(self, base: int) -> dict[str, Any]:
        events = dict(
            self.rows("SELECT type, count(*) FROM events WHERE id > ? GROUP BY type", base)
        )
        attempts = self.rows(
            "SELECT count(*), coalesce(sum(CASE WHEN a.status_code BETWEEN 200 AND 299 "
            "THEN 1 ELSE 0 END), 0) FROM webhook_attempts a JOIN webhook_deliveries d "
            "ON d.id = a.delivery_id WHERE d.event_id > ?",
            base,
        )[0]
        per_event = self.rows(
            "SELECT min(n), max(n) FROM (SELECT event_id, count(*) AS n FROM webhook_deliveries "
            "WHERE event_id > ? GROUP BY event_id) AS x",
            base,
        )
        return {
            "events": {k: int(v) for k, v in events.items()},
            "attempts": int(attempts[0] or 0),
            "attempts_2xx": int(attempts[1] or 0),
            "deliveries_per_event_min_max": list(per_event[0]) if per_event else None,
        }

    def activity_counters(self) -> dict[str, int]:
        """PostgreSQL's counters of this database (transactions, rows), for deltas."""
        if self.backend != "postgres":
            return {}
        row = self.rows(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
            "tup_returned, tup_fetched FROM pg_stat_database WHERE datname = current_database()"
        )[0]
        names = ("commits", "rollbacks", "inserted", "updated", "deleted", "returned", "fetched")
        return {k: int(v) for k, v in zip(names, row, strict=True)}

    def table_counters(self) -> dict[str, dict[str, int]]:
        """Per table: sequential scans and rows they read, index scans and rows fetched."""
        if self.backend != "postgres":
            return {}
        rows = self.rows(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0), "
            "coalesce(idx_tup_fetch, 0), n_tup_ins, n_tup_upd FROM pg_stat_user_tables"
        )
        names = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "ins", "upd")
        return {r[0]: dict(zip(names, map(int, r[1:]), strict=True)) for r in rows}

    def backend_pids(self) -> list[int]:
        if self.backend != "postgres":
            return []
        return [
            int(r[0])
            for r in self.rows(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]

    def close(self) -> None:
        self.conn.close()


class ActivitySampler(threading.Thread):
    """PostgreSQL's side of a drain: what the app's sessions are doing, 10 times a second."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import psycopg  # noqa: PLC0415

        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        self.stop_event = threading.Event()
        self.samples = 0
        self.seen: Counter[str] = Counter()

    def run(self) -> None:
        sql = (
            "SELECT state, coalesce(wait_event_type, '-'), coalesce(wait_event, '-'), "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        while not self.stop_event.wait(0.1):
            self.samples += 1
            for state, wtype, wevent, query in self.conn.execute(sql).fetchall():
                if state == "active":
                    self.seen[f"active {wtype}:{wevent} | {query}"] += 1
                elif state == "idle in transaction":
                    self.seen[f"idle in transaction | {query}"] += 1

    def finish(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(timeout=5)
        self.conn.close()
        top = self.seen.most_common(25)
        return {"samples": self.samples, "top": [[k, v] for k, v in top]}


class AutoAnalyze(threading.Thread):
    """ANALYZE every `every` seconds while a phase runs, as autovacuum would (it is off on this
    machine's PostgreSQL): without it the planner keeps the statistics of the empty tables and
    every `UPDATE webhook_deliveries ... WHERE id = ...` scans the whole table."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stop_event = threading.Event()
        self.runs = 0
        self.seconds = 0.0

    def run(self) -> None:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            while not self.stop_event.wait(self.every):
                t0 = time.monotonic()
                conn.execute(f"ANALYZE {', '.join(ANALYZED_TABLES)}")
                self.seconds += time.monotonic() - t0
                self.runs += 1

    def finish(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(timeout=60)
        return {"every_s": self.every, "runs": self.runs, "seconds": round(self.seconds, 2)}


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "at": time.monotonic(),
        "machine": machine_cpu(),
        "pids": {g: {p: process_cpu_seconds(p) for p in pids} for g, pids in groups.items()},
    }


def cpu_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """CPU per group of processes between two snapshots, in % of one core; machine in % of all."""
    wall = after["at"] - before["at"]
    out: dict[str, float | None] = {}
    if wall <= 0:
        return out
    for group, pids in after["pids"].items():
        total = 0.0
        for pid, seconds in pids.items():
            if seconds is None:
                continue
            start = before["pids"].get(group, {}).get(pid)
            total += seconds - (start or 0.0)
        out[group] = round(100.0 * total / wall, 1)
    if before["machine"] and after["machine"]:
        busy = after["machine"][0] - before["machine"][0]
        all_ = after["machine"][1] - before["machine"][1]
        out["machine"] = round(100.0 * busy / all_, 1) if all_ else None
    return out


# --- one backend x setup -----------------------------------------------------------------------


@dataclass
class Setup:
    args: argparse.Namespace
    runner: Runner
    cleanup: Cleanup
    backend: str
    name: str
    workers: int  # 0: embedded
    tmp: Path = field(init=False)
    serve: subprocess.Popen[bytes] | None = None
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    serve_logs: int = 0
    worker_logs: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        return self.workers == 0

    # -- processes ------------------------------------------------------------------------------

    def start_serve(self, *, dispatch: bool) -> None:
        self.serve_logs += 1
        log = self.tmp / f"serve-{self.serve_logs}.log"
        env = {**self.env, "TEARLINE_WEBHOOK_DISPATCH_IN_SERVE": "true" if dispatch else "false"}
        self.serve = self.cleanup.procs.start(
            [*TEARLINE, "serve", "--host", "127.0.0.1", "--port", str(self.app_port)],
            env=env,
            log=log,
            cwd=self.tmp,
        )
        self.serve_log = log
        wait_ready(self.serve, f"{self.base}/healthz", log, "tearline serve")

    def stop_serve(self) -> None:
        if self.serve is not None:
            self.cleanup.procs.stop(self.serve, timeout=30)
            self.serve = None

    def dispatch_on(self) -> float:
        """Start dispatching (workers, or serve with its dispatcher); the time it was asked."""
        started = time.time()
        if self.embedded:
            self.stop_serve()
            started = time.time()
            self.start_serve(dispatch=True)
            return started
        extra = ["--concurrency", str(self.args.concurrency)] if self.args.concurrency else []
        for _ in range(self.workers):
            self.worker_logs += 1
            log = self.tmp / f"worker-{self.worker_logs}.log"
            self.worker_procs.append(
                self.cleanup.procs.start(
                    [*TEARLINE, "worker", *extra], env=self.env, log=log, cwd=self.tmp
                )
            )
        return started

    def dispatch_off(self) -> None:
        if self.embedded:
            self.stop_serve()
            self.start_serve(dispatch=False)
            return
        for proc in self.worker_procs:
            # SIGTERM: stop claiming, finish and record what is in flight, exit.
            self.cleanup.procs.stop(proc, timeout=60)
            if proc.returncode not in (0, -signal.SIGTERM):
                print(f"    WARNING: worker {proc.pid} exited {proc.returncode}")
        self.worker_procs.clear()

    def dispatch_pids(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        if self.serve is not None:
            groups["serve"] = [self.serve.pid]
        if self.worker_procs:
            groups["workers"] = [p.pid for p in self.worker_procs]
        groups["receiver"] = [self.receiver.pid]
        if self.backend == "postgres":
            groups["postgres"] = self.db.backend_pids()
        return groups

    def check_alive(self) -> None:
        for proc, what in [(self.serve, "tearline serve"), (self.receiver, "receiver")] + [
            (w, "tearline worker") for w in self.worker_procs
        ]:
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"{what} exited ({proc.returncode}):\n{_tail(self.serve_log)}")

    # -- receiver -------------------------------------------------------------------------------

    def counts(self, *, brief: bool = False) -> dict[str, Any]:
        query = "?brief=1" if brief else ""
        return dict(httpx.get(f"{self.receiver_base}/_counts{query}", timeout=30).json())

    def reset_receiver(self) -> None:
        httpx.post(f"{self.receiver_base}/_reset", timeout=30).raise_for_status()

    def verify_signatures(self) -> dict[str, Any]:
        """The receiver's sample of each path, verified with the standardwebhooks library as
        the receiver would have verified it on arrival (its 5-minute tolerance is judged at the
        time the request came, not minutes later when the phase is over)."""
        from standardwebhooks import webhooks as swh  # noqa: PLC0415

        class Arrival(datetime):
            at = 0.0

            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.fromtimestamp(cls.at, tz)

        samples = httpx.get(f"{self.receiver_base}/_samples", timeout=30).json()
        ok, bad, types = 0, [], Counter[str]()
        for path, items in samples.items():
            secret = self.secrets.get(path)
            for item in items:
                body = base64.b64decode(item["body_b64"])
                Arrival.at = item["received_at"]
                try:
                    if secret is None:
                        raise ValueError("no subscription for this path")
                    with mock.patch.object(swh, "datetime", Arrival):
                        doc = swh.Webhook(secret).verify(body, item["headers"])
                    if doc.get("id") != item["headers"].get("webhook-id"):
                        raise ValueError("payload id differs from webhook-id")
                    types[doc.get("type", "?")] += 1
                    ok += 1
                except Exception as exc:
                    bad.append(f"{path}: {type(exc).__name__}: {exc}")
        return {"verified": ok, "failed": len(bad), "failures": bad[:10], "types": dict(types)}

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        args = self.args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tearline-webhooks-{self.backend}-"))
        self.cleanup.tmp_dirs.append(self.tmp)
        data_dir = self.tmp / "data"
        self.app_port, bare_port, receiver_port = free_port(), free_port(), free_port()
        self.database_name: str | None = None
        database_url = None
        pg_url = None
        if self.backend == "postgres":
            self.database_name = create_scratch_database(args.pg_url)
            self.cleanup.databases.append((args.pg_url, self.database_name))
            database_url = app_database_url(args.pg_url, self.database_name)
            pg_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            print(f"  scratch database {self.database_name}")
        self.pg_url = pg_url
        self.env = tearline_env(data_dir, self.app_port, database_url)
        self.base = f"http://127.0.0.1:{self.app_port}"
        tearline_cmd(self.cleanup.procs, ["dev", "init"], self.env, self.tmp)
        plain_env = {k: v for k, v in os.environ.items() if not k.startswith("TEARLINE_")}
        bare_log, receiver_log = self.tmp / "bare.log", self.tmp / "receiver.log"
        self.bare = self.cleanup.procs.start(
            [sys.executable, str(BENCH_DIR / "bare.py"), "--port", str(bare_port)],
            env=plain_env,
            log=bare_log,
            cwd=self.tmp,
        )
        self.bare_base = f"http://127.0.0.1:{bare_port}"
        self.receiver = self.cleanup.procs.start(
            [sys.executable, str(BENCH_DIR / "receiver.py"), "--port", str(receiver_port)],
            env=plain_env,
            log=receiver_log,
            cwd=self.tmp,
        )
        self.receiver_base = f"http://127.0.0.1:{receiver_port}"
        # Dispatch stays off while subscribing; phase A turns it on.
        self.start_serve(dispatch=False)
        wait_ready(self.bare, f"{self.bare_base}/bare", bare_log, "bare app")
        wait_ready(self.receiver, f"{self.receiver_base}/_counts", receiver_log, "receiver")
        self.db = Database(self.backend, data_dir, pg_url)
        self.tokens = Tokens(self.base, data_dir, self.env["TEARLINE_ISSUER"])
        codes = self.tokens.codes()
        members = httpx.get(
            f"{self.base}/v1/members",
            headers={"Authorization": self.tokens.get(args.member)},
            timeout=30,
        ).json()
        kinds = {m["code"]: m["kind"] for m in members}
        self.states = [c for c in codes if kinds.get(c) == "state"]
        self.subscription_ids: dict[str, str] = {}
        for code in codes:
            path = f"/hook/{code}"
            answer = httpx.post(
                f"{self.base}/v1/webhooks",
                json={"url": f"{self.receiver_base}{path}", "events": EVENTS, "format": "thin"},
                headers={"Authorization": self.tokens.get(code)},
                timeout=30,
            )
            if answer.status_code != 201:
                raise BenchError(f"subscribing {code}: {answer.status_code} {answer.text[:300]}")
            self.secrets[path] = answer.json()["secret"]
            self.subscription_ids[code] = answer.json()["id"]
        print(
            f"  serve :{self.app_port} (pid {self.serve.pid if self.serve else '-'}), bare "
            f":{bare_port}, receiver :{receiver_port}; {len(codes)} members "
            f"({len(self.states)} states) subscribed",
            flush=True,
        )
        self.analyze()

    def analyze(self) -> None:
        # This machine's PostgreSQL runs with autovacuum off: refresh statistics as it would.
        if self.database_name is not None:
            analyze_scratch_database(self.args.pg_url, self.database_name)

    # -- load -----------------------------------------------------------------------------------

    def bodies(self, n: int, seed: int) -> list[tuple[str, bytes]]:
        """`n` report bodies (originator, JSON): run.py's 2 KiB report, releasable to ALL,
        with five entities of their own (bench/entities.py), from the states in turn."""
        template = json.loads(report_payload(self.args.body_bytes))
        rng = random.Random(seed)
        out = []
        for i in range(n):
            doc = dict(template)
            doc["entities"] = entities.draw(rng)
            out.append((self.states[i % len(self.states)], json.dumps(doc).encode()))
        return out

    def post_reports(self, n: int, seed: int) -> dict[str, Any]:
        bodies = self.bodies(n, seed)
        auths = {code: self.tokens.get(code) for code in {c for c, _ in bodies}}
        statuses: Counter[int] = Counter()

        async def go() -> tuple[float, float]:
            queue = iter(bodies)
            limits = httpx.Limits(max_connections=self.args.post_concurrency)
            async with httpx.AsyncClient(base_url=self.base, timeout=60, limits=limits) as http:

                async def one() -> None:
                    for code, body in queue:
                        answer = await http.post(
                            "/v1/reports",
                            content=body,
                            headers={
                                "Authorization": auths[code],
                                "Content-Type": "application/json",
                                "Idempotency-Key": f"wh-{uuid.uuid4().hex}",
                            },
                        )
                        statuses[answer.status_code] += 1

                t0 = time.time()
                await asyncio.gather(*(one() for _ in range(self.args.post_concurrency)))
                return t0, time.time()

        t0, t1 = asyncio.run(go())
        created = statuses.get(201, 0)
        if created != n:
            raise BenchError(f"posting reports: {dict(statuses)} (expected {n} x 201)")
        return {"first_post_at": t0, "last_post_at": t1, "posts_per_s": n / (t1 - t0)}

    def wait_complete(self, base: int, started: float, timeout: float) -> dict[str, Any]:
        """Poll until the events after id `base` are fanned out and every delivery of theirs
        is done and acknowledged; the receiver's and the database's figures."""
        deadline = time.monotonic() + timeout
        cpu_from: dict[str, Any] | None = None
        pg_from: dict[str, int] = {}
        tables_from: dict[str, dict[str, int]] = {}
        acks_from = 0
        progress: dict[str, Any] = {}
        counts: dict[str, Any] = {}
        done = False
        last_db = 0.0
        while time.monotonic() < deadline:
            self.check_alive()
            counts = self.counts(brief=True)
            if cpu_from is None and counts["requests"]:
                cpu_from = cpu_snapshot(self.dispatch_pids())
                pg_from = self.db.activity_counters()
                tables_from = self.db.table_counters()
                acks_from = counts["requests"]
            if time.monotonic() - last_db >= 1.0:
                last_db = time.monotonic()
                progress = self.db.progress(base)
                st = progress["statuses"]
                fanned = (
                    progress["unsequenced"] == 0
                    and progress["fanout_cursor"] >= progress["last_position"]
                )
                busy = st.get("pending", 0) + st.get("sending", 0)
                if fanned and busy == 0 and counts["requests"] >= st.get("succeeded", 0):
                    done = True
                    break
            time.sleep(POLL_SECONDS)
        cpu = cpu_between(cpu_from, cpu_snapshot(self.dispatch_pids())) if cpu_from else {}
        counts = self.counts()
        pg: dict[str, Any] = {}
        if cpu_from is not None and pg_from:
            # Per acknowledged delivery, while delivering (the stats collector lags ~0.5 s).
            acked = max(1, counts["requests"] - acks_from)
            pg_to = self.db.activity_counters()
            pg = {k: round((pg_to[k] - v) / acked, 2) for k, v in pg_from.items()}
            tables = {
                name: {k: round((v - tables_from.get(name, {}).get(k, 0)) / acked, 2)
                       for k, v in now.items()}
                for name, now in self.db.table_counters().items()
            }  # fmt: skip
            pg["tables"] = {n: t for n, t in sorted(tables.items()) if any(t.values())}
        st = progress.get("statuses", {})
        deliveries = sum(st.values())
        first, last = counts["first_at"], counts["last_at"]
        span = (last - first) if first and last else None
        return {
            "complete": done,
            "deliveries": deliveries,
            "statuses": st,
            "received": counts["requests"],
            "distinct_received": counts["distinct"],
            "duplicates": counts["duplicates"],
            "missing": max(0, st.get("succeeded", 0) - counts["distinct"]),
            "first_ack_after_s": (first - started) if first else None,
            "all_acked_after_s": (last - started) if last else None,
            "ack_span_s": span,
            "deliveries_per_s": counts["requests"] / span if span else None,
            "peak_per_s_1s": _peak(counts["histogram"]),
            "cpu_pct_while_delivering": cpu,
            "postgres_per_delivery": pg,
            "histogram_per_100ms": counts["histogram"],
        }

    @contextlib.contextmanager
    def autoanalyze(self, res: dict[str, Any]) -> Iterator[None]:
        """PostgreSQL: ANALYZE now and then while the block runs (see AutoAnalyze)."""
        if not self.pg_url or self.args.analyze_every <= 0:
            yield
            return
        analyzer = AutoAnalyze(self.pg_url, self.args.analyze_every)
        analyzer.start()
        try:
            yield
        finally:
            res["auto_analyze"] = analyzer.finish()

    def profile_dispatch(self, seconds: float) -> list[subprocess.Popen[bytes]]:
        """py-spy on the dispatching processes for `seconds` (all threads, and GIL only)."""
        if not self.args.py_spy:
            return []
        pids = [p.pid for p in self.worker_procs] or ([self.serve.pid] if self.serve else [])
        spies = []
        for i, pid in enumerate(pids[:2]):
            for gil in (False, True):
                out = self.args.results_dir / (
                    f"webhooks-{self.args.stamp}-{self.backend}-{self.name}-p{i + 1}"
                    + (".gil.txt" if gil else ".txt")
                )
                self.profiles.append(str(out))
                cmd = [
                    self.args.py_spy, "record", "--pid", str(pid), "--duration",
                    str(max(1, round(seconds))), "--rate", "100", "--nonblocking",
                    "--function", "--format", "raw", "--output", str(out),
                    *(["--gil"] if gil else []),
                ]  # fmt: skip
                spies.append(self.cleanup.procs.start(cmd, env=dict(os.environ), capture=True))
        return spies

    def serve_profile(self, what: str) -> tuple[int, Path] | None:
        """py-spy on `tearline serve` during a wrk POST run (with --profile)."""
        if not self.args.py_spy or self.serve is None:
            return None
        out = self.args.results_dir / (
            f"webhooks-{self.args.stamp}-{self.backend}-{self.name}-serve-POST-{what}.txt"
        )
        self.profiles += [str(out), str(out.with_suffix(".gil.txt"))]
        return self.serve.pid, out

    def finish_profiles(self, spies: list[subprocess.Popen[bytes]]) -> None:
        for spy in spies:
            try:
                spy.communicate(timeout=self.args.profile_seconds + 60)
            except subprocess.TimeoutExpired:
                print("    WARNING: py-spy did not finish in time")
            finally:
                self.cleanup.procs.stop(spy)

    # -- phases ---------------------------------------------------------------------------------

    def wait_first_delivery(self, timeout: float = 120.0) -> float:
        """Until the receiver has had a request; the time it came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            counts = self.counts(brief=True)
            if counts["requests"]:
                return float(counts["first_at"])
            time.sleep(0.1)
        raise BenchError(f"no delivery arrived within {timeout:.0f} s")

    def phase_a(self) -> dict[str, Any]:
        print(f"  A: end to end, {self.args.reports} reports posted while dispatch runs")
        self.reset_receiver()
        self.dispatch_on()
        # A ping proves dispatch is up (processes started, database reached) before timing.
        sub = self.subscription_ids[self.args.member]
        ping = httpx.post(
            f"{self.base}/v1/webhooks/{sub}/ping",
            headers={"Authorization": self.tokens.get(self.args.member)},
            timeout=30,
        )
        if ping.status_code >= 300:
            raise BenchError(f"ping: {ping.status_code} {ping.text[:300]}")
        self.wait_first_delivery()
        time.sleep(1.0)
        self.reset_receiver()
        base = self.db.max_event_id()
        analyzed: dict[str, Any] = {}
        with self.autoanalyze(analyzed):
            posted = self.post_reports(self.args.reports, seed=1)
            res = self.wait_complete(base, posted["first_post_at"], self.args.phase_timeout)
        res |= {"posting": posted, **analyzed, **self.db.phase_figures(base)}
        res["signatures"] = self.verify_signatures()
        self._print_phase("A", res)
        return res

    def phase_b(self) -> dict[str, Any]:
        n = self.args.drain_reports or self.args.reports
        print(f"  B: drain, {n} reports posted with dispatch stopped")
        self.dispatch_off()
        base = self.db.max_event_id()
        posted = self.post_reports(n, seed=2)
        self.analyze()
        self.reset_receiver()
        sampler = ActivitySampler(self.pg_url) if self.args.py_spy and self.pg_url else None
        analyzed: dict[str, Any] = {}
        with self.autoanalyze(analyzed):
            started = self.dispatch_on()
            spies: list[subprocess.Popen[bytes]] = []
            if self.args.py_spy:
                # Once the processes run (py-spy needs the interpreter up), sample the drain.
                self.wait_first_delivery()
                if sampler is not None:
                    sampler.start()
                spies = self.profile_dispatch(self.args.profile_seconds)
            res = self.wait_complete(base, started, self.args.phase_timeout)
            self.finish_profiles(spies)
        if sampler is not None:
            res["pg_activity"] = sampler.finish()
        res |= analyzed
        res |= {"posting": posted, **self.db.phase_figures(base)}
        res["signatures"] = self.verify_signatures()
        self._print_phase("B", res)
        return res

    def phase_c(self) -> dict[str, Any]:
        print("  C: POST /v1/reports with wrk, idle then while delivering")
        self.dispatch_off()
        self.analyze()
        body_file = self.tmp / "report.json"
        body_file.write_bytes(report_payload(self.args.body_bytes))
        assert self.serve is not None
        bare = self.runner.measure(
            "bare", f"{self.bare_base}/bare", "GET", server_pid=self.bare.pid
        )
        idle = self.runner.measure(
            "POST idle",
            f"{self.base}/v1/reports",
            "POST",
            auth=self.tokens.fresh(self.args.member),
            body_file=body_file,
            server_pid=self.serve.pid,
            profile=self.serve_profile("idle"),
        )
        # Deliveries exist from fan-out on: with dispatch off the backlog is events not fanned out.
        start = self.db.progress(0)
        backlog = start["last_position"] - start["fanout_cursor"] + start["unsequenced"]
        self.reset_receiver()
        self.dispatch_on()
        self.wait_first_delivery()
        time.sleep(2.0)  # past fan-out of the backlog and the first claims
        assert self.serve is not None
        before, cpu0 = self.counts(), cpu_snapshot(self.dispatch_pids())
        analyzed: dict[str, Any] = {}
        with self.autoanalyze(analyzed):
            during = self.runner.measure(
                "POST during",
                f"{self.base}/v1/reports",
                "POST",
                auth=self.tokens.fresh(self.args.member),
                body_file=body_file,
                server_pid=self.serve.pid,
                profile=self.serve_profile("during"),
            )
        after, cpu1 = self.counts(), cpu_snapshot(self.dispatch_pids())
        window = cpu1["at"] - cpu0["at"]
        delivered = after["requests"] - before["requests"]
        left = self.db.progress(0)["statuses"]
        # Still delivering at the end of the window (acknowledged in the last 2 s, work left).
        busy_whole_window = left.get("pending", 0) > 0 and (after["last_at"] or 0) >= (
            time.time() - 2
        )
        self.dispatch_off()
        # Idle again: every POST of this body matches the entities of all earlier ones (same
        # originator, so no alert, but the lookup grows with them), so a POST costs more the
        # later it comes. The baseline is the mean of the idle runs before and after.
        assert self.serve is not None
        idle_after = self.runner.measure(
            "POST idle",
            f"{self.base}/v1/reports",
            "POST",
            auth=self.tokens.fresh(self.args.member),
            body_file=body_file,
            server_pid=self.serve.pid,
        )
        idle_rps = (idle.rps + idle_after.rps) / 2
        idle_ratio = idle_rps / bare.rps if bare.rps else 0.0
        during_ratio = during.rps / bare.rps if bare.rps else 0.0
        impact = during.rps / idle_rps if idle_rps else 0.0
        res = {
            "bare": bare.to_json(),
            "idle": idle.to_json(),
            "during": during.to_json(),
            "bare_rps": bare.rps,
            "idle_after": idle_after.to_json(),
            "idle_rps": idle_rps,
            "idle_before_rps": idle.rps,
            "idle_after_rps": idle_after.rps,
            "during_rps": during.rps,
            "idle_vs_bare": idle_ratio,
            "during_vs_bare": during_ratio,
            "during_vs_idle": impact,
            "meets_target": impact >= POST_RATIO_TARGET,
            "backlog_events_at_start": backlog,
            "pending_at_end": left.get("pending", 0),
            "delivered_in_window": delivered,
            "deliveries_per_s_in_window": delivered / window if window else None,
            "delivery_busy_whole_window": busy_whole_window,
            "cpu_pct_in_window": cpu_between(cpu0, cpu1),
            "errors": idle.errors + during.errors + bare.errors + idle_after.errors,
            **analyzed,
        }
        flag = "" if busy_whole_window else "  (WARNING: the backlog ran out during the window)"
        print(
            f"    POST idle {idle.rps:.1f} before, {idle_after.rps:.1f} after; "
            f"during/idle {impact:.3f} (target {POST_RATIO_TARGET}: "
            f"{_verdict(res['meets_target'])}); idle/bare {idle_ratio:.4f}, during/bare "
            f"{during_ratio:.4f}; {delivered} deliveries in the window "
            f"({_fmt(res['deliveries_per_s_in_window'])}/s){flag}",
            flush=True,
        )
        return res

    def _print_phase(self, phase: str, res: dict[str, Any]) -> None:
        sig = res["signatures"]
        st = ", ".join(f"{k} {v}" for k, v in sorted(res["statuses"].items()))
        print(
            f"    {res['deliveries']} deliveries ({st}); all acknowledged after "
            f"{_fmt(res['all_acked_after_s'])} s; {_fmt(res['deliveries_per_s'])} deliveries/s "
            f"(first to last ack, {_fmt(res['ack_span_s'])} s; peak 1 s "
            f"{_fmt(res['peak_per_s_1s'], '.0f')}); duplicates {res['duplicates']}, missing "
            f"{res['missing']}; attempts {res['attempts']} ({res['attempts_2xx']} 2xx); "
            f"signatures {sig['verified']} ok, {sig['failed']} failed; CPU "
            f"{res['cpu_pct_while_delivering']}"
            + (
                f"; PostgreSQL per delivery {res['postgres_per_delivery']}"
                if res.get("postgres_per_delivery")
                else ""
            )
            + ("" if res["complete"] else "  <-- INCOMPLETE (timed out)"),
            flush=True,
        )

    def run(self) -> dict[str, Any]:
        self.prepare()
        out: dict[str, Any] = {
            "backend": self.backend,
            "setup": self.name,
            "workers": self.workers,
            "database": self.database_name,
        }
        try:
            if "A" in self.args.phases:
                out["A"] = self.phase_a()
            if "B" in self.args.phases:
                out["B"] = self.phase_b()
            if "C" in self.args.phases:
                out["C"] = self.phase_c()
        finally:
            self.dispatch_logs = {
                p.name: _tail(p, 1500)
                for p in sorted(self.tmp.glob("*.log"))
                if p.name.startswith(("worker", "serve"))
            }
            self.db.close()
        out["logs_tail"] = self.dispatch_logs
        out["profiles"] = self.profiles
        return out


def _brief(pg: dict[str, Any]) -> str:
    """PostgreSQL's counters per delivery, and the tables read by sequential scans."""
    head = {k: v for k, v in pg.items() if k != "tables"}
    scans = {
        n: f"{t['seq_scan']} seq scans, {t['seq_tup_read']} rows"
        for n, t in pg.get("tables", {}).items()
        if t.get("seq_tup_read", 0) >= 1
    }
    return f"{head}; seq scans per delivery: {scans or 'none'}"


def _peak(histogram: dict[str, int]) -> float | None:
    """The most acknowledgements within any 1 s window (10 consecutive 100 ms buckets)."""
    if not histogram:
        return None
    buckets = {int(k): v for k, v in histogram.items()}
    lo, hi = min(buckets), max(buckets)
    values = [buckets.get(i, 0) for i in range(lo, hi + 1)]
    return float(max(sum(values[i : i + 10]) for i in range(max(1, len(values) - 9))))


# --- the run -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres", help="comma list: sqlite,postgres")
    p.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="worker setups (default 1 2)"
    )
    p.add_argument(
        "--embedded",
        default="sqlite",
        help="backends also measured with serve dispatching itself (comma list, or 'none')",
    )
    p.add_argument("--reports", type=int, default=1000, help="reports per phase A and B")
    p.add_argument("--drain-reports", type=int, help="reports for phase B (default --reports)")
    p.add_argument("--phases", default="ABC", help="which phases (default ABC)")
    p.add_argument(
        "--concurrency", type=int, help="`tearline worker --concurrency` (default: app's)"
    )
    p.add_argument("--post-concurrency", type=int, default=16, help="POSTs in flight, A and B")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout")
    p.add_argument("--phase-timeout", type=float, default=600.0, help="max seconds per wait")
    p.add_argument("--member", default="USA", help="member that posts in phase C and pings")
    p.add_argument("--body-bytes", type=int, default=2048, help="report body size")
    p.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL, help="admin URL for scratch DBs")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    p.add_argument(
        "--tearline",
        help="command that runs the CLI (default: the venv's `tearline`), for what-if runs,\n"
        "e.g. --tearline '.venv/bin/python my_launcher.py'",
    )
    p.add_argument(
        "--ref",
        help="run this commit (a clean `git archive` export) instead of the working tree",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on the dispatching processes during the drain (B), and PostgreSQL's\n"
        "pg_stat_activity sampled; figures of a profiled run are not to be quoted",
    )
    p.add_argument(
        "--analyze-every",
        type=float,
        default=5.0,
        help="PostgreSQL: ANALYZE every N seconds during phases A and B, as autovacuum would\n"
        "(off on this machine); 0: never (the planner keeps the empty tables' statistics)",
    )
    p.add_argument("--profile-seconds", type=float, default=15.0, help="py-spy duration")
    args = p.parse_args(argv)
    args.generator = "wrk"
    if args.tearline:
        TEARLINE[:] = shlex.split(args.tearline)
    args.started = datetime.now(UTC)
    args.stamp = args.started.strftime("%Y%m%dT%H%M%SZ")
    args.py_spy = None
    if args.profile:
        found = BIN / "py-spy"
        args.py_spy = str(found) if found.exists() else None
        if args.py_spy is None:
            p.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(args.backend_list) - {"sqlite", "postgres"} or not args.backend_list:
        p.error("--backends: sqlite and/or postgres")
    args.embedded_list = [b.strip() for b in args.embedded.split(",") if b.strip() != "none"]
    if any(w < 1 or w > 8 for w in args.workers):
        p.error("--workers: 1..8 each")
    args.phases = args.phases.upper()
    if not args.reports >= 1:
        p.error("--reports must be >= 1")
    return args


def print_tables(results: list[dict[str, Any]]) -> None:
    print("\nDeliveries (A: reports posted while dispatch runs; B: drain of a backlog)")
    head = (
        f"{'backend':<9} {'setup':<10} {'deliv.':>7} {'A all acked s':>13} {'A deliv/s':>9} "
        f"{'B drain s':>9} {'B deliv/s':>9} {'dup':>4} {'fail':>4} {'sig ok':>6} "
        f"{'target':>7} {'result':<6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        a, b = r.get("A"), r.get("B")
        applies = (r["backend"], r["setup"]) == DELIVERY_TARGET_SETUP
        rate = a["deliveries_per_s"] if a else None
        verdict = _verdict(rate >= DELIVERY_TARGET if (applies and rate) else None)
        dup = sum(x["duplicates"] for x in (a, b) if x)
        fail = sum(x["statuses"].get("failed", 0) + x["attempts"] - x["attempts_2xx"]
                   for x in (a, b) if x)  # fmt: skip
        sig = sum(x["signatures"]["verified"] for x in (a, b) if x)
        sig_bad = sum(x["signatures"]["failed"] for x in (a, b) if x)
        incomplete = any(x and not x["complete"] for x in (a, b))
        print(
            f"{r['backend']:<9} {r['setup']:<10} {a['deliveries'] if a else '-':>7} "
            f"{_fmt(a and a['all_acked_after_s']):>13} {_fmt(rate):>9} "
            f"{_fmt(b and b['all_acked_after_s']):>9} {_fmt(b and b['deliveries_per_s']):>9} "
            f"{dup:>4} {fail:>4} {f'{sig}/{sig + sig_bad}':>6} "
            f"{('>=500' if applies else '-'):>7} {verdict:<6}"
            + ("  <-- INCOMPLETE" if incomplete else "")
        )
    print(
        "(deliv/s: acknowledgements from the first to the last one at the receiver; A all acked:"
        " from the first POST; B drain: from starting dispatch, start-up included)"
    )
    print(
        "\nPOST /v1/reports while delivering (C; wrk as bench/run.py; idle: the mean of the runs"
        " before and after)"
    )
    head = (
        f"{'backend':<9} {'setup':<10} {'bare r/s':>9} {'idle r/s':>8} {'during r/s':>10} "
        f"{'idle/bare':>9} {'during/bare':>11} {'during/idle':>11} {'target':>6} {'result':<6} "
        f"{'deliv/s meanwhile':>17}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        c = r.get("C")
        if not c:
            continue
        warn = "" if c["delivery_busy_whole_window"] else "  (backlog ran out)"
        warn += "  <-- ERRORS" if c["errors"] else ""
        print(
            f"{r['backend']:<9} {r['setup']:<10} {c['bare_rps']:9.0f} {c['idle_rps']:8.1f} "
            f"{c['during_rps']:10.1f} {c['idle_vs_bare']:9.4f} {c['during_vs_bare']:11.4f} "
            f"{c['during_vs_idle']:11.3f} {POST_RATIO_TARGET:6.2f} "
            f"{_verdict(c['meets_target']):<6} {_fmt(c['deliveries_per_s_in_window']):>17}{warn}"
        )


def run_all(
    args: argparse.Namespace,
    cleanup: Cleanup,
    results: list[dict[str, Any]],
    failures: dict[str, str],
) -> str:
    """Every backend x setup, each cleaned up after it; the load generator's description."""
    generator, wrk, generator_note = pick_generator(args)
    if generator != "wrk":
        raise BenchError("wrk is required for phase C figures")
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
    for backend in args.backend_list:
        setups = [(f"workers-{n}", n) for n in args.workers]
        if backend in args.embedded_list:
            setups.insert(0, ("embedded", 0))
        for name, workers in setups:
            key = f"{backend}/{name}"
            print(f"\n== {key}", flush=True)
            try:
                if backend == "postgres":
                    for stale in drop_stale_scratch_databases(args.pg_url):
                        print(f"  dropped stale scratch database {stale}")
                results.append(Setup(args, runner, cleanup, backend, name, workers).run())
            except (BenchError, LoadError, OSError, httpx.HTTPError) as exc:
                failures[key] = str(exc)
                print(f"  FAILED: {exc}", flush=True)
            except Exception as exc:
                if not type(exc).__module__.startswith("psycopg"):
                    raise
                failures[key] = f"PostgreSQL: {exc}"
                print(f"  FAILED: PostgreSQL: {exc}", flush=True)
            finally:
                cleanup.run()
    return generator_note


def write_results(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    failures: dict[str, str],
    extra: dict[str, Any],
) -> Path:
    path: Path = args.results_dir / f"webhooks-{args.stamp}.json"
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
        "settings": {k: getattr(args, k) for k in SETTINGS_KEPT},
        "targets": {
            "deliveries_per_s": DELIVERY_TARGET,
            "deliveries_target_setup": DELIVERY_TARGET_SETUP,
            "post_during_vs_idle": POST_RATIO_TARGET,
        },
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
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5:
        print(f"NOTE: load average {load_at_start[0]:.2f} before the run: the machine is shared")
    results: list[dict[str, Any]] = []
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
    if results:
        print_tables(results)
    for key, why in failures.items():
        print(f"{key}: FAILED: {why[:2000]}")
    extra = {"generator": generator_note, "loadavg_at_start": load_at_start}
    print(f"\nresults: {write_results(args, results, failures, extra)}")
    for r in results:
        for prof in r.get("profiles", []):
            print(f"profile: {prof}  (python bench/profile_summary.py {prof})")
    if status:
        return status
    errored = [f"{r['backend']}/{r['setup']}" for r in results if r.get("C", {}).get("errors")]
    incomplete = [
        f"{r['backend']}/{r['setup']} {ph}"
        for r in results
        for ph in ("A", "B")
        if ph in r and not r[ph]["complete"]
    ]
    if errored:
        print(f"FLAGGED: wrk runs with errors: {', '.join(errored)}")
    if incomplete:
        print(f"FLAGGED: incomplete phases: {', '.join(incomplete)}")
    return 1 if failures or errored or incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
