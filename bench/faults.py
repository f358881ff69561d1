"""Heavier fault runs than the suite's: many SIGKILLs under load, and longer database outages.

    .venv/bin/python bench/faults.py                          # both backends, defaults
    .venv/bin/python bench/faults.py --backends sqlite --kills 10 --reports 2000
    .venv/bin/python bench/faults.py --backends postgres --outages 5 --outage-seconds 8

Crash: `tearline serve` (its own data dir; on PostgreSQL a scratch database) takes submissions
from `--clients` threads, each report with its own Idempotency-Key, retried on a dropped
connection or a 503 until answered; meanwhile the server is killed with SIGKILL every
`--kill-every` seconds and started again, `--kills` times. Outage (PostgreSQL only): the same
load through a TCP relay to PostgreSQL that drops every connection and refuses new ones for
`--outage-seconds`, `--outages` times; the service is never restarted. After each run the
database is checked directly: every acknowledged report exists exactly once with its audit
entry, `report.created` event and stored decisions, no report exists without its key, and
`tearline audit verify` passes. Exit 1 on any failure.

The machinery (serve process, clients, relay, checks) is the suite's: tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy.engine import make_url  # noqa: E402

from tests import conftest  # noqa: E402
from tests.test_faults import (  # noqa: E402
    Proxy,
    Served,
    Submitter,
    _check_every_acknowledged_report,
    _token,
)


def _database(backend: str, tmp: Path, pg_url: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'data' / 'tearline.db'}"
    conftest.BACKEND = "postgres"
    os.environ["TEARLINE_TEST_DATABASE_URL"] = pg_url
    return conftest.new_database_url(tmp)


def crash(backend: str, args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="tearline-faults-") as name:
        tmp = Path(name)
        url = _database(backend, tmp, args.pg_url)
        server = Served(tmp, url)
        try:
            assert server.cli("dev", "init").returncode == 0
            server.start()
            submitter = Submitter(server.base, _token(server, "USA"))
            keys = [f"bench-{uuid.uuid4()}" for _ in range(args.reports)]
            stop = threading.Event()
            began = time.monotonic()
            threads = submitter.run(keys, threads=args.clients, stop=stop)
            restarts = []
            for _ in range(args.kills):
                time.sleep(args.kill_every)
                server.kill()
                down = time.monotonic()
                server.start()
                restarts.append(time.monotonic() - down)
            for t in threads:
                t.join(timeout=600)
            stop.set()
            took = time.monotonic() - began
            server.stop()
            statuses = Counter(submitter.answers)
            print(
                f"  {backend} crash: {len(submitter.acknowledged)}/{len(keys)} acknowledged in "
                f"{took:.1f} s, {args.kills} kills (restart {min(restarts, default=0):.1f}-"
                f"{max(restarts, default=0):.1f} s), answers {dict(statuses)}, "
                f"{submitter.transport_errors} dropped connections, {submitter.replays} replays "
                "(committed before the kill, answered on retry)"
            )
            ok = len(submitter.acknowledged) == len(keys) and not submitter.problems
            _check_every_acknowledged_report(server, submitter, "USA")
            print(f"  {backend} crash: checks passed (exactly once, audited, evented, decided)")
            return ok
        except AssertionError as exc:
            print(f"  {backend} crash: FAILED {exc}")
            return False
        finally:
            server.stop()
            if backend == "postgres":
                conftest.drop_database(url)


def outage(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="tearline-faults-") as name:
        tmp = Path(name)
        direct = _database("postgres", tmp, args.pg_url)
        parsed = make_url(direct)
        proxy = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        through = parsed.set(host="127.0.0.1", port=proxy.port)
        server = Served(tmp, through.render_as_string(hide_password=False))
        try:
            assert server.cli("dev", "init").returncode == 0
            server.start()
            submitter = Submitter(server.base, _token(server, "USA"))
            keys = [f"bench-{uuid.uuid4()}" for _ in range(args.reports)]
            stop = threading.Event()
            threads = submitter.run(keys, threads=args.clients, stop=stop)
            recoveries = []
            for _ in range(args.outages):
                time.sleep(1.0)
                proxy.cut()
                time.sleep(args.outage_seconds)
                proxy.restore()
                back = time.monotonic()
                seen = len(submitter.answers)
                while len(submitter.answers) == seen or submitter.answers[-1] == 503:
                    time.sleep(0.05)
                    if time.monotonic() - back > 60:
                        break
                recoveries.append(time.monotonic() - back)
            for t in threads:
                t.join(timeout=600)
            stop.set()
            server.stop()
            statuses = Counter(submitter.answers)
            print(
                f"  postgres outage: {len(submitter.acknowledged)}/{len(keys)} acknowledged, "
                f"{args.outages} outages of {args.outage_seconds:g} s, first success after "
                f"{min(recoveries):.2f}-{max(recoveries):.2f} s, answers {dict(statuses)}, "
                f"restarts {server.starts - 1}"
            )
            ok = (
                len(submitter.acknowledged) == len(keys)
                and not submitter.problems
                and set(statuses) <= {200, 201, 503}
            )
            checker = Served(tmp / "check", direct)
            checker.env = {**server.env, "TEARLINE_DATABASE_URL": direct}
            _check_every_acknowledged_report(checker, submitter, "USA")
            print("  postgres outage: checks passed")
            return ok
        except AssertionError as exc:
            print(f"  postgres outage: FAILED {exc}")
            return False
        finally:
            server.stop()
            proxy.close()
            conftest.drop_database(direct)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=1.5)
    parser.add_argument("--outages", type=int, default=3)
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results = []
    for backend in backends:
        print(f"== {backend}")
        results.append(crash(backend, args))
        if backend == "postgres":
            results.append(outage(args))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
