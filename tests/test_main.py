"""The served process: `kill -HUP` puts a changed policy bundle in force without a restart; on
SQLite a thread of its own copies the write-ahead log back while it serves."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from app.audit.models import AuditEntry
from app.config import PROJECT_ROOT
from tests.conftest import BACKEND, drop_database, make_world, new_database_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    """`tearline serve` in a process of its own, on a copy of the shipped policies."""
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    url = new_database_url(tmp_path)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TEARLINE_")},
        "TEARLINE_ENV": "development",
        "TEARLINE_DATA_DIR": str(tmp_path / "data"),
        "TEARLINE_DATABASE_URL": url,
        "TEARLINE_POLICY_DIR": str(policies),
        "TEARLINE_LOG_LEVEL": "warning",
    }
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own entry point, fixed arguments
        [
            str(Path(sys.executable).parent / "tearline"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "tearline serve did not start"
            time.sleep(0.1)
        yield process, policies, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        drop_database(url)


def reloads(url: str) -> list[tuple[str, str | None, str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditEntry.decision, AuditEntry.client, AuditEntry.policy_hash).where(
                AuditEntry.action == "policy.reload"
            )
        ).all()
    engine.dispose()
    return [(d, c, h or "") for d, c, h in rows]


def wait_for_reloads(url: str, count: int) -> list[tuple[str, str | None, str]]:
    deadline = time.monotonic() + 30
    while len(found := reloads(url)) < count:
        assert time.monotonic() < deadline, "no policy.reload entry appeared"
        time.sleep(0.1)
    return found


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX only")
class TestReloadOnHangup:
    def test_sighup_puts_a_changed_bundle_in_force_and_refuses_a_broken_one(
        self, served: tuple[subprocess.Popen[bytes], Path, str]
    ) -> None:
        process, policies, url = served
        roster = policies / "roster.yaml"
        text = roster.read_text()
        start = text.index("- code: NLD")
        at = text.index("clearance: ", start)
        roster.write_text(text[:at] + "clearance: RESTRICTED" + text[text.index("\n", at) :])

        process.send_signal(signal.SIGHUP)

        [(decision, client, new_hash)] = wait_for_reloads(url, 1)
        assert (decision, client) == ("allow", "operator")

        (policies / "base.cedar").write_text("permit (principal, action, resource) when {")
        process.send_signal(signal.SIGHUP)

        refused = wait_for_reloads(url, 2)[1]
        # Refused, and the bundle in force is still the one accepted before.
        assert refused == ("deny", "operator", new_hash)
        assert process.poll() is None


def _checkpoint_threads() -> int:
    return sum(t.name == "tearline-checkpoint" for t in threading.enumerate())


def test_serve_copies_the_sqlite_log_back_on_a_thread_of_its_own_until_shutdown(
    tmp_path: Path,
) -> None:
    before = _checkpoint_threads()
    world = make_world(tmp_path)  # the app's lifespan runs: as in `tearline serve`
    try:
        running = _checkpoint_threads() - before
    finally:
        world.close()
        drop_database(world.settings.resolved_database_url)
    # PostgreSQL checkpoints on its own.
    assert running == (1 if BACKEND == "sqlite" else 0)
    assert _checkpoint_threads() == before


def test_the_checkpointer_stops_even_when_stopping_the_rest_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _checkpoint_threads()
    world = make_world(tmp_path)

    async def broken() -> None:
        raise RuntimeError("redecider failed to stop")

    monkeypatch.setattr(world.state.redecider, "stop", broken)
    try:
        with pytest.raises(RuntimeError, match="redecider"):
            world.close()
    finally:
        drop_database(world.settings.resolved_database_url)
    assert _checkpoint_threads() == before
