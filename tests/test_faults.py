"""Faults lose nothing: the served process killed mid-load, the database gone for seconds.

Both run `tearline serve` as a process of its own, on SQLite and on PostgreSQL (the database
outage needs PostgreSQL: it is cut off through a TCP proxy, so the shared server stays up).
Clients submit with an `Idempotency-Key` and retry, as a partner system would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from app.audit.models import AuditEntry
from app.config import PROJECT_ROOT
from app.reports.models import IdempotencyKey, Report, ReportAccess
from app.webhooks.models import Event
from tests.conftest import BACKEND, drop_database, new_database_url, report_body
from tests.test_main import free_port

TEARLINE = str(Path(sys.executable).parent / "tearline")


class Served:
    """`tearline serve` on a data dir and database of its own, that can be killed and restarted."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TEARLINE_")},
            "TEARLINE_ENV": "development",
            "TEARLINE_DATA_DIR": str(tmp / "data"),
            "TEARLINE_DATABASE_URL": database_url,
            "TEARLINE_POLICY_DIR": str(PROJECT_ROOT / "policies"),
            "TEARLINE_ISSUER": self.base,
            "TEARLINE_LOG_LEVEL": "warning",
            "TEARLINE_WRITE_RATE_PER_MINUTE": "1000000",
            "TEARLINE_READ_RATE_PER_MINUTE": "1000000",
            # A checkpoint every second, so kills land in the tree's maintenance too.
            "TEARLINE_AUDIT_CHECKPOINT_SECONDS": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own entry point, fixed arguments
            [TEARLINE, *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def start(self) -> None:
        self.starts += 1
        log = (self.tmp / f"serve-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own entry point, fixed arguments
            [TEARLINE, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, "tearline serve did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("serve-*.log"))
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    url = new_database_url(tmp_path)
    server = Served(tmp_path, url)
    done = server.cli("dev", "init")
    assert done.returncode == 0, done.stderr
    try:
        yield server
    finally:
        server.stop()
        drop_database(url)


@dataclass
class Submitter:
    """Clients that submit reports, each with its own Idempotency-Key, retrying until answered."""

    base: str
    token: str
    acknowledged: dict[str, str] = field(default_factory=dict)  # key -> report id
    answers: list[int] = field(default_factory=list)
    # Submissions answered as replays: committed by an earlier attempt whose answer was lost.
    replays: int = 0
    transport_errors: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, key: str, stop: threading.Event) -> None:
        body = json.dumps(report_body(title=f"crash {key}")).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        while not stop.is_set():
            try:
                response = httpx.post(
                    f"{self.base}/v1/reports", content=body, headers=headers, timeout=10
                )
            except httpx.TransportError:
                with self.lock:
                    self.transport_errors += 1
                time.sleep(0.05)  # the server is gone: retry the same key
                continue
            with self.lock:
                self.answers.append(response.status_code)
            if response.status_code in (200, 201):
                with self.lock:
                    self.acknowledged[key] = response.json()["id"]
                    self.replays += response.headers.get("idempotent-replayed") == "true"
                return
            if response.status_code == 503:
                assert response.headers["content-type"].startswith("application/problem+json")
                time.sleep(0.1)
                continue
            with self.lock:
                self.problems.append(f"{response.status_code}: {response.text[:200]}")
            return

    def run(self, keys: list[str], threads: int, stop: threading.Event) -> list[threading.Thread]:
        queue = list(keys)
        queue_lock = threading.Lock()

        def worker() -> None:
            while not stop.is_set():
                with queue_lock:
                    if not queue:
                        return
                    key = queue.pop()
                self.submit(key, stop)

        started = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in started:
            t.start()
        return started


def _token(server: Served, code: str) -> str:
    made = server.cli("dev", "token", code)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _check_every_acknowledged_report(server: Served, submitter: Submitter, member: str) -> None:
    """Each exactly once, with its audit entry, event and stored decisions; audit verify clean."""
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    select(IdempotencyKey.key, IdempotencyKey.report_id).where(
                        IdempotencyKey.key.in_(list(submitter.acknowledged))
                    )
                ).all()
            )
            assert stored == submitter.acknowledged
            titles = conn.scalar(
                select(func.count()).select_from(Report).where(Report.originator == member)
            )
            # None twice: one report per key that was ever sent, acknowledged or not.
            keys_sent = conn.scalar(select(func.count()).select_from(IdempotencyKey))
            assert titles == keys_sent
            ids = list(submitter.acknowledged.values())
            audited = set(
                conn.scalars(
                    select(AuditEntry.target).where(
                        AuditEntry.action == "report.create",
                        AuditEntry.target.in_([f"report:{i}" for i in ids]),
                    )
                )
            )
            assert audited == {f"report:{i}" for i in ids}
            evented = set(
                conn.scalars(
                    select(Event.report_id).where(
                        Event.type == "report.created", Event.report_id.in_(ids)
                    )
                )
            )
            assert evented == set(ids)
            decided = set(
                conn.scalars(
                    select(ReportAccess.report_id)
                    .where(ReportAccess.report_id.in_(ids))
                    .group_by(ReportAccess.report_id)
                )
            )
            assert decided == set(ids)
    finally:
        engine.dispose()
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


class TestCrash:
    def test_kills_during_a_load_of_submissions_lose_nothing_and_duplicate_nothing(
        self, served: Served
    ) -> None:
        served.start()
        submitter = Submitter(served.base, _token(served, "USA"))
        keys = [f"crash-{uuid.uuid4()}" for _ in range(240)]
        stop = threading.Event()
        threads = submitter.run(keys, threads=6, stop=stop)
        try:
            for _ in range(3):
                time.sleep(0.8)
                served.kill()
                served.start()
            deadline = time.monotonic() + 120
            for t in threads:
                t.join(timeout=max(0.1, deadline - time.monotonic()))
        finally:
            stop.set()
        assert not submitter.problems, submitter.problems
        assert len(submitter.acknowledged) == len(keys)
        assert served.starts == 4
        # The kills landed in the load: requests were in flight or sent while it was down.
        assert submitter.transport_errors > 0
        # Every acknowledged report reads back at full, after all the kills.
        for report_id in list(submitter.acknowledged.values())[:10]:
            response = httpx.get(
                f"{served.base}/v1/reports/{report_id}",
                headers={"Authorization": f"Bearer {submitter.token}"},
            )
            assert response.status_code == 200
            assert response.json()["access"] == "full"
        served.stop()
        _check_every_acknowledged_report(served, submitter, "USA")


class Proxy:
    """A TCP relay to PostgreSQL that can cut every connection and refuse new ones for a while."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()  # the database is "stopped": nothing answers
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        """Stop: every open connection is dropped and new ones are refused."""
        self.down.set()
        with self.lock:
            live = list(self.sockets)
        for s in live:
            self._close(s)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.closing.set()
        self.cut()
        self.listener.close()


@pytest.mark.skipif(BACKEND != "postgres", reason="the database outage is one of PostgreSQL")
class TestDatabaseOutage:
    def test_the_service_answers_503_while_the_database_is_gone_and_recovers_by_itself(
        self, tmp_path: Path
    ) -> None:
        direct = new_database_url(tmp_path)
        parsed = make_url(direct)
        proxy = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        through = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        server = Served(tmp_path, through)
        try:
            assert server.cli("dev", "init").returncode == 0
            server.start()
            token = _token(server, "USA")
            auth = {"Authorization": f"Bearer {token}"}
            known = httpx.post(
                f"{server.base}/v1/reports",
                json=report_body(),
                headers={**auth, "Idempotency-Key": "outage-known"},
                timeout=10,
            ).json()["id"]
            submitter = Submitter(server.base, token)
            keys = [f"outage-{uuid.uuid4()}" for _ in range(60)]
            stop = threading.Event()
            threads = submitter.run(keys, threads=4, stop=stop)
            time.sleep(0.5)

            proxy.cut()
            during = []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                ready = httpx.get(f"{server.base}/readyz", timeout=10)
                read = httpx.get(f"{server.base}/v1/reports/{known}", headers=auth, timeout=10)
                during.append((ready.status_code, read.status_code, read.headers["content-type"]))
                time.sleep(0.2)
            proxy.restore()

            for t in threads:
                t.join(timeout=90)
            stop.set()
            assert all(ready == 503 for ready, _, _ in during), during
            assert all(read == 503 for _, read, _ in during), during
            assert all(kind.startswith("application/problem+json") for _, _, kind in during)
            assert 503 in submitter.answers
            assert set(submitter.answers) <= {200, 201, 503}, submitter.answers
            assert not submitter.problems, submitter.problems
            assert len(submitter.acknowledged) == len(keys)
            # Back by itself: no restart of the service.
            assert httpx.get(f"{server.base}/readyz", timeout=10).status_code == 200
            again = httpx.get(f"{server.base}/v1/reports/{known}", headers=auth, timeout=10)
            assert again.status_code == 200
            assert server.starts == 1
            server.stop()
            checked = Served(tmp_path / "check", direct)
            checked.env = {**server.env, "TEARLINE_DATABASE_URL": direct}
            _check_every_acknowledged_report(checked, submitter, "USA")
        finally:
            server.stop()
            proxy.close()
            drop_database(direct)
