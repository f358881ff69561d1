"""Tearline throughput benchmark: GET and POST of reports, as ratios to a bare FastAPI endpoint.

For each backend (SQLite in a temporary data dir, PostgreSQL in a fresh scratch database) this
starts `tearline serve` (one uvicorn process, as shipped) and `bench/bare.py` (a bare FastAPI app
served by uvicorn the same way), then measures with wrk, under the same settings and in the same
run: the bare endpoint, `GET /v1/reports/{id}` and `POST /v1/reports`. It prints a table and
writes JSON to bench/results/. Every subprocess and scratch database is removed at the end, also
on Ctrl-C. See bench/README.md.

    .venv/bin/python bench/run.py [--backends sqlite,postgres] [--duration 10] ...
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its helpers sit beside this file.
from loadgen import (
    LoadError,
    LoadSettings,
    Measurement,
    ensure_wrk,
    run_python,
    run_wrk,
    wrk_version,
)
from procs import Processes

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent
TARGETS = {"GET": 0.25, "POST": 0.08}
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCRATCH_PREFIX = "tearline_bench_"
READY_TIMEOUT = 90.0


class BenchError(Exception):
    """The bench could not set up or measure; the message says what went wrong."""


def _on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- the request bodies --------------------------------------------------------------------


def report_payload(size: int) -> bytes:
    """A valid report of exactly `size` bytes of compact JSON (~2 KiB by default), 5 entities."""
    payload: dict[str, Any] = {
        "title": "Bench: hawala network moving oil proceeds through gold",
        "body": "",
        "summary": "A hawala network settles oil proceeds through gold shipments.",
        "topics": ["MOV.HAW", "REV.OIL"],
        "classification": "CONFIDENTIAL",
        "releasable_to": ["ALL"],
        "tlp": "AMBER",
        "grading": {"reliability": "B", "credibility": 2},
        "entities": [
            {"type": "person", "value": "Abu Bakr al-Example"},
            {"type": "organization", "value": "Example Gold Trading LLC"},
            {"type": "iban", "value": "IQ98NBIQ850123456789012", "label": "settlement"},
            {"type": "phone", "value": "+964 770 123 4567"},
            {"type": "wallet", "value": "bc1qexampleexampleexampleexampleexample0"},
        ],
    }
    sentence = (
        "Broker in Gaziantep settles with a Mosul counterpart via gold shipments; "
        "ledgers are reconciled weekly through a courier. "
    )
    empty = len(json.dumps(payload, separators=(",", ":")).encode())
    need = max(1, size - empty)
    payload["body"] = (sentence * (need // len(sentence) + 1))[:need]
    return json.dumps(payload, separators=(",", ":")).encode()


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tearline_env(
    data_dir: Path,
    port: int,
    database_url: str | None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every `tearline` command of one backend: nothing inherited, except
    the `extra` settings asked for (`--env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEARLINE_")}
    env["TEARLINE_ENV"] = "development"
    env["TEARLINE_DATA_DIR"] = str(data_dir)
    env["TEARLINE_ISSUER"] = f"http://127.0.0.1:{port}"
    env["TEARLINE_POLICY_DIR"] = str(SOURCE[0] / "policies")
    if database_url:
        env["TEARLINE_DATABASE_URL"] = database_url
    # One client drives each load far past any per-client rate limit: measure the work, not the
    # limiter's 429s (older commits ignore settings they do not know).
    for family in ("READ", "WRITE", "EXPORT", "SEARCH"):
        env[f"TEARLINE_{family}_RATE_PER_MINUTE"] = "100000000"
    env.update(extra or {})
    return env


# Set by the harness for each backend; `--env` may not change them.
HARNESS_SETTINGS = frozenset(
    {"TEARLINE_ENV", "TEARLINE_DATA_DIR", "TEARLINE_ISSUER", "TEARLINE_DATABASE_URL"}
)


def parse_env_settings(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` items as a mapping; ValueError for anything but a TEARLINE_* setting that the
    harness does not set itself."""
    settings: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("TEARLINE_") or not key[9:]:
            raise ValueError(f"{item!r} is not TEARLINE_<NAME>=<value>")
        if key in HARNESS_SETTINGS:
            raise ValueError(f"{key} is set by the harness")
        settings[key] = value
    return settings


TEARLINE = [str(BIN / "tearline")]
# The source tree measured: the working tree, or a clean export of --ref.
SOURCE = [REPO]


def export_ref(ref: str, cleanup: Cleanup) -> dict[str, Any]:
    """Export commit `ref` (git archive) to a temporary dir and run `tearline` from there."""
    done = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"--ref {ref!r} is not a commit: {done.stderr.strip()}")
    commit = done.stdout.strip()
    target = Path(tempfile.mkdtemp(prefix="tearline-bench-src-"))
    cleanup.final_dirs.append(target)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit} failed: {archive.stderr.decode()[-500:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    # The venv's `app` is an editable install of the working tree; a path first on sys.path
    # takes precedence over its finder, so this runs the exported code.
    launcher = (
        f"import sys; sys.path.insert(0, {str(target)!r}); "
        "from app.cli.main import app; app(prog_name='tearline')"
    )
    TEARLINE[:] = [sys.executable, "-c", launcher]
    SOURCE[0] = target
    print(f"measuring commit {commit[:12]} ({ref}) from a clean export in {target}")
    return {"ref": ref, "commit": commit, "dirty": False, "exported_to": str(target)}


def tearline_cmd(
    procs: Processes,
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float = 180,
    command: list[str] | None = None,
) -> str:
    """Run a `tearline` command to completion (bounded in time); its stdout. `command` runs
    another CLI build than TEARLINE (e.g. an export of another commit)."""
    proc = procs.start([*(command or TEARLINE), *args], env=env, cwd=cwd, capture=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`tearline {' '.join(args)}` did not finish in {timeout:.0f} s") from exc
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise BenchError(
            f"`tearline {' '.join(args)}` failed ({proc.returncode}): "
            f"{(out + err).decode(errors='replace')[-1500:]}"
        )
    return out.decode().strip()


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    """Poll `url` until it answers 200, at most READY_TIMEOUT seconds."""
    deadline = time.monotonic() + READY_TIMEOUT
    for _ in range(int(READY_TIMEOUT / 0.2) + 1):
        if proc.poll() is not None:
            raise BenchError(f"{what} exited ({proc.returncode}):\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise BenchError(f"{what} not ready at {url} after {READY_TIMEOUT:.0f} s:\n{_tail(log)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# --- PostgreSQL scratch databases --------------------------------------------------------


def _psycopg_connect(admin_url: str) -> Any:
    import psycopg  # noqa: PLC0415 - only the PostgreSQL backend needs it

    return psycopg.connect(admin_url, autocommit=True, connect_timeout=10)


def create_scratch_database(admin_url: str) -> str:
    from psycopg import sql  # noqa: PLC0415

    name = f"{SCRATCH_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _psycopg_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def analyze_scratch_database(admin_url: str, name: str, *, settle: bool = False) -> None:
    """Refresh the planner statistics of a scratch database (ANALYZE, as autovacuum would).

    With `settle`, VACUUM it too (the visibility map that index-only scans rely on, as
    autovacuum would keep it) and CHECKPOINT, so that flushing what a bulk load dirtied does
    not land in the middle of the next measurement.
    """
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with _psycopg_connect(url) as conn:
        conn.execute("VACUUM (ANALYZE)" if settle else "ANALYZE")
        if settle:
            conn.execute("CHECKPOINT")


def drop_scratch_database(admin_url: str, name: str) -> None:
    from psycopg import sql  # noqa: PLC0415

    with _psycopg_connect(admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def drop_stale_scratch_databases(admin_url: str) -> list[str]:
    """Scratch databases left by a bench whose process is gone (e.g. killed with SIGKILL)."""
    pattern = re.compile(rf"^{SCRATCH_PREFIX}(\d+)_[0-9a-f]{{8}}$")
    with _psycopg_connect(admin_url) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    dropped = []
    for name in names:
        m = pattern.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        drop_scratch_database(admin_url, name)
        dropped.append(name)
    return dropped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def app_database_url(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


# --- one backend ---------------------------------------------------------------------------


@dataclass
class Cleanup:
    """What must be undone, whatever happens."""

    procs: Processes = field(default_factory=Processes)
    tmp_dirs: list[Path] = field(default_factory=list)
    databases: list[tuple[str, str]] = field(default_factory=list)
    final_dirs: list[Path] = field(default_factory=list)
    keep: bool = False

    def run(self, *, final: bool = False) -> None:
        """Undo everything; Ctrl-C or SIGTERM during this is held until it is done (every step
        is bounded in time), then raised, unless this is the final cleanup."""
        held: list[int] = []

        def hold(signum: int, _frame: object) -> None:
            held.append(signum)

        previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.procs.stop_all()
            for admin_url, name in self.databases:
                try:
                    drop_scratch_database(admin_url, name)
                    print(f"dropped scratch database {name}")
                except Exception as exc:
                    print(f"WARNING: could not drop scratch database {name}: {exc}")
            self.databases.clear()
            for path in self.tmp_dirs:
                if self.keep:
                    print(f"kept {path}")
                else:
                    shutil.rmtree(path, ignore_errors=True)
            self.tmp_dirs.clear()
            if final:
                for path in self.final_dirs:
                    shutil.rmtree(path, ignore_errors=True)
                self.final_dirs.clear()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if held and not final:
            raise KeyboardInterrupt(f"signal {held[0]} during cleanup")


@dataclass
class Runner:
    args: argparse.Namespace
    settings: LoadSettings
    generator: str
    wrk: str | None
    cleanup: Cleanup
    profiles: list[str] = field(default_factory=list)

    def measure(
        self,
        name: str,
        url: str,
        mode: str,
        auth: str | None = None,
        body_file: Path | None = None,
        profile: tuple[int, Path] | None = None,
        server_pid: int | None = None,
    ) -> Measurement:
        def once(duration: float) -> Measurement:
            if self.generator == "wrk":
                assert self.wrk is not None
                return run_wrk(
                    self.cleanup.procs,
                    self.wrk,
                    name=name,
                    url=url,
                    mode=mode,
                    settings=self.settings,
                    duration=duration,
                    auth=auth,
                    body_file=body_file,
                )
            return run_python(
                self.cleanup.procs,
                name=name,
                url=url,
                mode=mode,
                settings=self.settings,
                duration=duration,
                auth=auth,
                body_file=body_file,
            )

        if self.settings.warmup > 0:
            once(self.settings.warmup)
        spies = []
        if profile:
            pid, out = profile
            spies.append(self.start_profiler(pid, out, gil=False))
            spies.append(self.start_profiler(pid, out.with_suffix(".gil.txt"), gil=True))
        cpu_before = process_cpu_seconds(server_pid), machine_cpu(), time.monotonic()
        try:
            result = once(self.settings.duration)
        finally:
            for spy in spies:
                self.finish_profiler(spy)
        cpu_after = process_cpu_seconds(server_pid), machine_cpu(), time.monotonic()
        wall = cpu_after[2] - cpu_before[2]
        if cpu_before[0] is not None and cpu_after[0] is not None and wall > 0:
            result.server_cpu_pct = 100.0 * (cpu_after[0] - cpu_before[0]) / wall
        if cpu_before[1] is not None and cpu_after[1] is not None:
            busy = cpu_after[1][0] - cpu_before[1][0]
            total = cpu_after[1][1] - cpu_before[1][1]
            result.machine_cpu_pct = 100.0 * busy / total if total else None
        flag = "  <-- ERRORS" if result.errors else ""
        print(
            f"  {name:<10} {result.rps:9.1f} req/s  p50 {_ms(result.latency_ms['p50'])}  "
            f"p99 {_ms(result.latency_ms['p99'])}  non-2xx {result.non2xx}  "
            f"socket errors {result.socket_error_count}  "
            f"server CPU {_pct(result.server_cpu_pct)}  machine CPU "
            f"{_pct(result.machine_cpu_pct)}{flag}",
            flush=True,
        )
        return result

    def start_profiler(self, pid: int, out: Path, *, gil: bool) -> subprocess.Popen[bytes]:
        """py-spy on `pid` for the measured seconds, as collapsed stacks: every non-idle
        thread (where requests spend their time, waits included), or with `gil` only the
        thread holding the GIL (where the one process's CPU goes)."""
        cmd = [
            self.args.py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(self.settings.duration))),
            "--rate",
            "200",
            "--nonblocking",
            "--function",
            "--format",
            "raw",
            "--output",
            str(out),
            *(["--gil"] if gil else []),
        ]
        return self.cleanup.procs.start(cmd, env=dict(os.environ), capture=True)

    def finish_profiler(self, spy: subprocess.Popen[bytes]) -> None:
        try:
            _, err = spy.communicate(timeout=self.settings.duration + 60)
        except subprocess.TimeoutExpired:
            print("  WARNING: py-spy did not finish in time; stopped")
            err = b""
        finally:
            self.cleanup.procs.stop(spy)
        if spy.returncode not in (0, None):
            print(f"  WARNING: py-spy failed: {err.decode(errors='replace')[-400:]}")

    def backend(self, backend: str) -> dict[str, Any]:
        args = self.args
        tmp = Path(tempfile.mkdtemp(prefix=f"tearline-bench-{backend}-"))
        self.cleanup.tmp_dirs.append(tmp)
        data_dir = tmp / "data"
        app_port, bare_port = free_port(), free_port()
        database_url = None
        database_name = None
        if backend == "postgres":
            database_name = create_scratch_database(args.pg_url)
            self.cleanup.databases.append((args.pg_url, database_name))
            database_url = app_database_url(args.pg_url, database_name)
            print(f"  scratch database {database_name}")
        env = tearline_env(data_dir, app_port, database_url, getattr(args, "env_settings", None))
        print("  tearline dev init ...", flush=True)
        tearline_cmd(self.cleanup.procs, ["dev", "init"], env, tmp)

        app_log, bare_log = tmp / "serve.log", tmp / "bare.log"
        serve = self.cleanup.procs.start(
            [*TEARLINE, "serve", "--host", "127.0.0.1", "--port", str(app_port)],
            env=env,
            log=app_log,
            cwd=tmp,
        )
        bare = self.cleanup.procs.start(
            [sys.executable, str(BENCH_DIR / "bare.py"), "--port", str(bare_port)],
            env={k: v for k, v in os.environ.items() if not k.startswith("TEARLINE_")},
            log=bare_log,
            cwd=tmp,
        )
        app_base, bare_base = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{bare_port}"
        wait_ready(serve, f"{app_base}/healthz", app_log, "tearline serve")
        wait_ready(bare, f"{bare_base}/bare", bare_log, "bare app")
        print(f"  tearline serve on :{app_port} (pid {serve.pid}), bare on :{bare_port}")

        member = args.member
        body = report_payload(args.body_bytes)
        body_file = tmp / "report.json"
        body_file.write_bytes(body)

        def token(code: str = member) -> str:
            out = tearline_cmd(self.cleanup.procs, ["dev", "token", code], env, tmp)
            return "Bearer " + out.splitlines()[-1].strip()

        auth = token()
        created = httpx.post(
            f"{app_base}/v1/reports",
            content=body,
            headers={"Authorization": auth, "Content-Type": "application/json"},
            timeout=30,
        )
        if created.status_code != 201:
            raise BenchError(f"creating the report failed: {created.status_code} {created.text}")
        report_id = created.json()["id"]
        report_url = f"{app_base}/v1/reports/{report_id}"
        # Read by another member at full: the common case (the originator's own reads also
        # fetch the audience, a second query).
        check = httpx.get(report_url, headers={"Authorization": token(args.reader)}, timeout=30)
        if check.status_code != 200 or check.json().get("access") != "full":
            raise BenchError(f"reading the report failed: {check.status_code} {check.text}")
        print(
            f"  report {report_id} ({len(body)} B body, 5 entities) read back at "
            f"{check.json()['access']}, {len(check.content)} B"
        )

        def profile(endpoint: str, i: int) -> tuple[int, Path] | None:
            if not args.profile:
                return None
            out = args.results_dir / f"profile-{args.stamp}-{backend}-{endpoint}-{i + 1}.txt"
            self.profiles += [str(out), str(out.with_suffix(".gil.txt"))]
            return serve.pid, out

        rounds: list[dict[str, Measurement]] = []
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f"  round {i + 1}/{args.repeat}")
            r: dict[str, Measurement] = {}
            r["bare"] = self.measure("bare", f"{bare_base}/bare", "GET", server_pid=bare.pid)
            if not args.no_bare_sync:
                r["bare-sync"] = self.measure(
                    "bare-sync", f"{bare_base}/bare-sync", "GET", server_pid=bare.pid
                )
            if database_name is not None:
                # This machine's PostgreSQL runs with autovacuum off, so nothing would ever
                # refresh the statistics of tables that the POST runs have grown by thousands
                # of rows; stale ones leave cached plans scanning. Do what autovacuum does.
                analyze_scratch_database(args.pg_url, database_name)
            # A fresh token per measurement, so no run outlives its 15 minutes.
            r["GET"] = self.measure(
                "GET",
                report_url,
                "GET",
                auth=token(args.reader),
                profile=profile("GET", i),
                server_pid=serve.pid,
            )
            r["POST"] = self.measure(
                "POST",
                f"{app_base}/v1/reports",
                "POST",
                auth=token(),
                body_file=body_file,
                profile=profile("POST", i),
                server_pid=serve.pid,
            )
            rounds.append(r)
        if serve.poll() is not None:
            raise BenchError(f"tearline serve died during the run:\n{_tail(app_log)}")
        server_log = _tail(app_log, 4000)
        return summarise(backend, rounds, len(body), database_name, server_log)


def _pct(value: float | None) -> str:
    return f"{value:3.0f}%" if value is not None else "  -%"


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of `pid` and its threads, from /proc (Linux only)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _ms(value: float | None) -> str:
    return f"{value:8.2f} ms" if value is not None else "      - ms"


def summarise(
    backend: str,
    rounds: list[dict[str, Measurement]],
    body_bytes: int,
    database_name: str | None,
    server_log: str,
) -> dict[str, Any]:
    """Per endpoint: the round with the median ratio, plus every round's figures."""
    rows = {}
    for endpoint in ("GET", "POST"):
        ratios = [r[endpoint].rps / r["bare"].rps if r["bare"].rps else 0.0 for r in rounds]
        ordered = sorted(range(len(rounds)), key=lambda i: ratios[i])
        pick = ordered[len(ordered) // 2]
        m, bare = rounds[pick][endpoint], rounds[pick]["bare"]
        errors = sum(r[endpoint].errors + r["bare"].errors for r in rounds)
        rows[endpoint] = {
            "rps": m.rps,
            "p50_ms": m.latency_ms["p50"],
            "p99_ms": m.latency_ms["p99"],
            "server_cpu_pct": m.server_cpu_pct,
            "bare_server_cpu_pct": bare.server_cpu_pct,
            "machine_cpu_pct": m.machine_cpu_pct,
            "bare_rps": bare.rps,
            "bare_sync_rps": rounds[pick]["bare-sync"].rps if "bare-sync" in rounds[pick] else None,
            "ratio": ratios[pick],
            "ratio_all_rounds": ratios,
            "ratio_median": statistics.median(ratios),
            "target": TARGETS[endpoint],
            "meets_target": ratios[pick] >= TARGETS[endpoint],
            "non2xx": sum(r[endpoint].non2xx for r in rounds),
            "socket_errors": sum(r[endpoint].socket_error_count for r in rounds),
            "errors": errors,
        }
    return {
        "backend": backend,
        "database": database_name,
        "post_body_bytes": body_bytes,
        "summary": rows,
        "rounds": [{k: v.to_json() for k, v in r.items()} for r in rounds],
        "server_log_tail": server_log,
    }


def print_table(results: dict[str, dict[str, Any]], generator: str) -> None:
    header = (
        f"{'backend':<9} {'endpoint':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'bare req/s':>10} {'ratio':>6} {'target':>6}  {'result':<6} {'non-2xx':>7} "
        f"{'sock err':>8} {'srv CPU':>7}"
    )
    print()
    print(f"load generator: {generator}")
    print(header)
    print("-" * len(header))
    for backend, res in results.items():
        for endpoint, row in res["summary"].items():
            verdict = "ok" if row["meets_target"] else "MISSED"
            flag = "  <-- run had errors" if row["errors"] else ""
            print(
                f"{backend:<9} {endpoint:<8} {row['rps']:9.1f} {row['p50_ms']:8.2f} "
                f"{row['p99_ms']:8.2f} {row['bare_rps']:10.1f} {row['ratio']:6.3f} "
                f"{row['target']:6.2f}  {verdict:<6} {row['non2xx']:7d} "
                f"{row['socket_errors']:8d} {_pct(row['server_cpu_pct']):>7}{flag}"
            )
    print("(srv CPU: the measured server process's CPU during the run, 100% = one core)")
    if "Python" in generator:
        print(
            "CAUTION: the Python generator saturates long before the bare endpoint does, so "
            "bare req/s is understated and the ratios are overstated; install wrk for real figures"
        )
    sync = {
        b: r["summary"]["GET"]["bare_sync_rps"]
        for b, r in results.items()
        if r["summary"]["GET"]["bare_sync_rps"]
    }
    if sync:
        extra = ", ".join(f"{b} {v:.1f} req/s" for b, v in sync.items())
        print(f"(bare endpoint as a sync `def`, thread pool: {extra}; ratios use the async one)")


def git_info() -> dict[str, Any]:
    """The commit measured, and the uncommitted changes (files and a digest of the diff)."""

    def git(*a: str) -> str:
        done = subprocess.run(
            ["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    diff = git("diff", "HEAD")
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty": bool(changed),
        "changed_files": changed,
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres", help="comma list: sqlite,postgres")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the median-ratio one is shown")
    p.add_argument("--member", default="USA", help="member whose <CODE>.dev client submits")
    p.add_argument("--reader", default="ITA", help="member whose client reads (at full)")
    p.add_argument("--body-bytes", type=int, default=2048, help="POST body size (default 2048)")
    p.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL, help="admin URL for scratch DBs")
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument("--no-bare-sync", action="store_true", help="skip the sync bare endpoint")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    p.add_argument(
        "--ref",
        help="measure this commit (a clean `git archive` export) instead of the working tree",
    )
    p.add_argument(
        "--tearline",
        default=" ".join(TEARLINE),
        help="command that runs the CLI (default: the venv's `tearline`); e.g. to measure\n"
        "a variant: --tearline '.venv/bin/python my_launcher.py'",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TEARLINE_* setting for every `tearline` command and serve (repeatable),\n"
        "e.g. --env TEARLINE_AUDIT_TREE_IN_SERVE=false",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample `tearline serve` with py-spy during the GET and POST runs\n"
        "(pip install py-spy into the venv); collapsed stacks go to the results dir",
    )
    args = p.parse_args(argv)
    if args.threads < 1 or args.connections < args.threads:
        p.error("need threads >= 1 and connections >= threads")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be 1..20")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("--duration must be 1..600 s and --warmup 0..60 s")
    TEARLINE[:] = shlex.split(args.tearline)
    try:
        args.env_settings = parse_env_settings(args.env)
    except ValueError as exc:
        p.error(f"--env: {exc}")
    args.started = datetime.now(UTC)
    args.stamp = args.started.strftime("%Y%m%dT%H%M%SZ")
    args.py_spy = None
    args.profiles = []
    if args.profile:
        found = BIN / "py-spy"
        args.py_spy = str(found) if found.exists() else shutil.which("py-spy")
        if args.py_spy is None:
            p.error("--profile needs py-spy: .venv/bin/pip install py-spy")
        args.results_dir.mkdir(parents=True, exist_ok=True)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backend_list) - {"sqlite", "postgres"}
    if unknown or not args.backend_list:
        p.error(f"unknown backends: {sorted(unknown)}")
    return args


def pick_generator(args: argparse.Namespace) -> tuple[str, str | None, str]:
    if args.generator == "python":
        return "python", None, "Python asyncio+httpx generator (asked for with --generator)"
    wrk, how = ensure_wrk(install=not args.no_install)
    if wrk is not None:
        return "wrk", wrk, f"{wrk_version(wrk)} ({how})"
    if args.generator == "wrk":
        raise BenchError(f"wrk is required (--generator wrk) but unavailable: {how}")
    note = (
        f"FALLBACK: wrk unavailable ({how}); using the Python asyncio+httpx generator, "
        "which is slower than wrk and competes with the servers for CPU"
    )
    print(note)
    return "python", None, note


def run_backends(
    args: argparse.Namespace, cleanup: Cleanup
) -> tuple[dict[str, dict[str, Any]], dict[str, str], str, str]:
    """Measure every backend; results, failures per backend, generator and its description."""
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    generator, wrk, generator_note = pick_generator(args)
    settings = LoadSettings(
        threads=args.threads,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        timeout=args.timeout,
    )
    print(
        f"load generator: {generator_note}\nsettings: {args.threads} threads, "
        f"{args.connections} connections, {args.duration:g} s after {args.warmup:g} s "
        f"warm-up, {args.repeat} round(s); machine: {os.cpu_count()} cores",
        flush=True,
    )
    if args.env_settings:
        print(f"settings for tearline: {args.env_settings}")
    tree = export_ref(args.ref, cleanup) if args.ref else git_info()
    args.tree = tree
    print(
        f"tree: {tree['commit'][:12]}"
        + (f" + uncommitted changes in {', '.join(tree['changed_files'])}" if tree["dirty"] else "")
    )
    runner = Runner(args, settings, generator, wrk, cleanup, profiles=args.profiles)
    for backend in args.backend_list:
        print(f"\n== {backend}", flush=True)
        try:
            if backend == "postgres":
                for name in drop_stale_scratch_databases(args.pg_url):
                    print(f"  dropped stale scratch database {name}")
            results[backend] = runner.backend(backend)
        except (BenchError, LoadError, OSError, httpx.HTTPError) as exc:
            failures[backend] = str(exc)
            print(f"  FAILED: {exc}", flush=True)
        except Exception as exc:
            if not type(exc).__module__.startswith("psycopg"):
                raise
            failures[backend] = f"PostgreSQL: {exc}"
            print(f"  FAILED: PostgreSQL: {exc}", flush=True)
        finally:
            cleanup.run()
    return results, failures, generator, generator_note


def write_results(
    args: argparse.Namespace,
    started: datetime,
    results: dict[str, dict[str, Any]],
    extra: dict[str, Any],
) -> Path:
    out_dir: Path = args.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{args.stamp}.json"
    doc = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "git": getattr(args, "tree", None) or git_info(),
        "settings": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "timeout_s": args.timeout,
            "repeat": args.repeat,
            "member": args.member,
            "reader": args.reader,
            "post_body_bytes": args.body_bytes,
            "env": args.env_settings,
        },
        "targets": TARGETS,
        **extra,
        "backends": results,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cleanup = Cleanup(keep=args.keep)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    status = 0
    generator, generator_note = "?", ""
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5:
        print(
            f"NOTE: load average {load_at_start[0]:.2f} before the run: other processes share "
            "this machine's CPUs; absolute figures suffer, ratios (same run) less so"
        )
    try:
        results, failures, generator, generator_note = run_backends(args, cleanup)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped servers, dropped scratch databases", flush=True)
        status = 130
    except BenchError as exc:
        print(f"FAILED: {exc}")
        status = 1
    finally:
        cleanup.run(final=True)
    extra = {
        "generator": generator,
        "generator_note": generator_note,
        "failures": failures,
        "interrupted": status == 130,
        "profiles": args.profiles,
        "loadavg_at_start": load_at_start,
    }
    rc = report(args, results, extra)
    return status or rc


def report(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], extra: dict[str, Any]
) -> int:
    """Print the table and verdicts, write the JSON; the exit status."""
    failures: dict[str, str] = extra["failures"]
    if results:
        print_table(results, extra["generator_note"])
    for backend, why in failures.items():
        print(f"{backend}: FAILED: {why[:2000]}")
    rows = [(b, e, row) for b, r in results.items() for e, row in r["summary"].items()]
    missed = [f"{b} {e}" for b, e, row in rows if not row["meets_target"]]
    errored = [f"{b} {e}" for b, e, row in rows if row["errors"]]
    if results:
        extra = {**extra, "missed_targets": missed, "runs_with_errors": errored}
        print(f"\nresults: {write_results(args, args.started, results, extra)}")
    for path in args.profiles:
        print(f"profile: {path}  (summarise: python bench/profile_summary.py {path})")
    if errored:
        print(f"FLAGGED: runs with non-2xx or socket errors: {', '.join(errored)}")
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    elif results:
        print("targets met")
    if failures or errored:
        return 1
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
