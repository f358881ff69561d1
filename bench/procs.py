"""Every subprocess the bench starts, so that all of them are stopped whatever happens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


class Processes:
    """Starts children in their own process group and stops exactly those, by id."""

    def __init__(self) -> None:
        self._running: list[tuple[subprocess.Popen[bytes], IO[bytes] | None]] = []

    def start(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path | None = None,
        cwd: Path | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` in a new session (Ctrl-C reaches only the harness, which stops it)."""
        out: IO[bytes] | None = log.open("wb") if log is not None else None
        stdout: int | IO[bytes] | None = subprocess.PIPE if capture else out
        stderr: int | IO[bytes] | None = subprocess.PIPE if capture else subprocess.STDOUT
        if out is None and not capture:
            stdout = subprocess.DEVNULL
            stderr = subprocess.DEVNULL
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._running.append((proc, out))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM to the child's own process group, then SIGKILL after `timeout` seconds."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for i, (p, out) in enumerate(self._running):
            if p is proc:
                if out is not None:
                    out.close()
                del self._running[i]
                break

    def stop_all(self) -> None:
        """Stop every child still known, newest first."""
        for proc, _ in reversed(list(self._running)):
            self.stop(proc)
