"""Load generators: wrk (preferred), or a Python asyncio + httpx fallback.

Both return a `Measurement`. The fallback runs `threads` worker processes (this file, run as a
script), each holding `connections / threads` keep-alive connections, like wrk's threads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk.lua"


@dataclass(frozen=True)
class LoadSettings:
    threads: int = 2
    connections: int = 16
    duration: float = 10.0
    warmup: float = 2.0
    timeout: float = 10.0


@dataclass
class Measurement:
    name: str
    url: str
    generator: str
    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float | None]
    responses: int
    non2xx: int
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    raw: str = field(default="", repr=False)
    # Filled in by the harness: the server's CPU use (100 = one core) and the whole machine's
    # (100 = every core busy) during the measured seconds.
    server_cpu_pct: float | None = None
    machine_cpu_pct: float | None = None

    @property
    def socket_error_count(self) -> int:
        """Connect, read, write and timeout errors (wrk's `status` count is non-2xx again)."""
        return sum(v for k, v in self.socket_errors.items() if k != "status")

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_error_count

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = self.errors
        out["socket_error_count"] = self.socket_error_count
        return out


class LoadError(Exception):
    """The load generator failed; the message says how."""


def ensure_wrk(*, install: bool) -> tuple[str | None, str]:
    """The path of wrk, installing the Debian package when allowed; else None and why."""
    found = shutil.which("wrk")
    if found:
        return found, "found on PATH"
    if not install:
        return None, "wrk is not installed and --no-install was given"
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return None, "wrk is not installed and apt-get is unavailable or not root"
    for cmd in ([apt, "update"], [apt, "install", "-y", "wrk"]):
        failed = _apt(cmd)
        if failed:
            return None, failed
    found = shutil.which("wrk")
    if found:
        print(f"installed wrk: {found}", flush=True)
        return found, "installed with apt-get"
    return None, "apt-get install -y wrk did not provide wrk"


def _apt(cmd: list[str]) -> str | None:
    """Run one apt-get command, saying so; None on success, else why it failed."""
    print(f"wrk not found: running `{' '.join(cmd)}`", flush=True)
    try:
        done = subprocess.run(
            cmd,
            check=False,
            timeout=600,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` timed out"
    if done.returncode != 0:
        tail = done.stdout.decode(errors="replace")[-500:]
        return f"`{' '.join(cmd)}` failed ({done.returncode}): {tail}"
    return None


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], check=False, capture_output=True, timeout=10)
    text = (done.stdout + done.stderr).decode(errors="replace")
    return text.splitlines()[0].strip() if text else "unknown"


def _bench_env(mode: str, auth: str | None, body_file: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_MODE"] = mode
    env["BENCH_AUTH"] = auth or ""
    env["BENCH_BODY_FILE"] = str(body_file) if body_file else ""
    env["BENCH_RUN"] = uuid.uuid4().hex[:12]
    return env


def run_wrk(
    procs: Any,
    wrk: str,
    *,
    name: str,
    url: str,
    mode: str,
    settings: LoadSettings,
    duration: float,
    auth: str | None = None,
    body_file: Path | None = None,
    script: Path = WRK_SCRIPT,
    env: dict[str, str] | None = None,
) -> Measurement:
    """One wrk run of `duration` seconds with the bench's Lua script (or another `script` that
    prints the same BENCH_JSON line, with `env` added to its environment)."""
    cmd = [
        wrk,
        "-t",
        str(settings.threads),
        "-c",
        str(settings.connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        f"{max(1, round(settings.timeout))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = procs.start(cmd, env={**_bench_env(mode, auth, body_file), **(env or {})}, capture=True)
    try:
        out, err = proc.communicate(timeout=duration + settings.timeout + 30)
    except subprocess.TimeoutExpired as exc:
        limit = duration + settings.timeout + 30
        raise LoadError(f"wrk did not finish within {limit:.0f}s") from exc
    finally:
        procs.stop(proc)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise LoadError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise LoadError(f"wrk printed no BENCH_JSON line:\n{text}\n{err.decode(errors='replace')}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return Measurement(
        name=name,
        url=url,
        generator="wrk",
        requests=data["requests"],
        duration_s=seconds,
        rps=data["requests"] / seconds if seconds else 0.0,
        latency_ms={k: (v / 1000.0 if v is not None else None) for k, v in lat.items()},
        responses=data["responses"],
        non2xx=data["non2xx"],
        statuses=data["statuses"],
        socket_errors=data["errors"],
        raw="\n".join(ln for ln in text.splitlines() if not ln.startswith("BENCH_JSON ")),
    )


# --- Python fallback ------------------------------------------------------------------------

# A ceiling on requests per connection, so the worker loop is bounded in count as well as time.
MAX_REQUESTS_PER_CONNECTION = 1_000_000


def run_python(
    procs: Any,
    *,
    name: str,
    url: str,
    mode: str,
    settings: LoadSettings,
    duration: float,
    auth: str | None = None,
    body_file: Path | None = None,
) -> Measurement:
    """The fallback: `threads` worker processes, each with its share of the connections."""
    per_worker = max(1, settings.connections // settings.threads)
    workers = []
    for i in range(settings.threads):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--url",
            url,
            "--mode",
            mode,
            "--connections",
            str(per_worker),
            "--duration",
            str(duration),
            "--timeout",
            str(settings.timeout),
            "--worker-id",
            str(i),
        ]
        if body_file is not None:
            cmd += ["--body-file", str(body_file)]
        env = dict(os.environ)
        if auth:
            env["BENCH_AUTH"] = auth
        workers.append(procs.start(cmd, env=env, capture=True))
    results: list[dict[str, Any]] = []
    try:
        for proc in workers:
            try:
                out, err = proc.communicate(timeout=duration + settings.timeout + 60)
            except subprocess.TimeoutExpired as exc:
                raise LoadError("a Python load worker did not finish in time") from exc
            if proc.returncode != 0:
                raise LoadError(f"Python load worker failed: {err.decode(errors='replace')[-800:]}")
            results.append(json.loads(out))
    finally:
        for proc in workers:
            procs.stop(proc)
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
    requests = len(latencies)
    seconds = max(r["elapsed_s"] for r in results) if results else duration
    non2xx = sum(n for code, n in statuses.items() if not 200 <= int(code) <= 299)

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    return Measurement(
        name=name,
        url=url,
        generator="python-httpx",
        requests=requests,
        duration_s=seconds,
        rps=requests / seconds if seconds else 0.0,
        latency_ms={
            "min": latencies[0] if latencies else None,
            "mean": statistics.fmean(latencies) if latencies else None,
            "stdev": statistics.pstdev(latencies) if latencies else None,
            "max": latencies[-1] if latencies else None,
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "p999": pct(99.9),
        },
        responses=requests,
        non2xx=non2xx,
        statuses={k: v for k, v in statuses.items() if not 200 <= int(k) <= 299},
        socket_errors={
            "connect": 0,
            "read": sum(r["errors"] for r in results),
            "write": 0,
            "status": 0,
            "timeout": sum(r["timeouts"] for r in results),
        },
    )


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import httpx  # noqa: PLC0415 - only the fallback needs it

    body = Path(args.body_file).read_bytes() if args.body_file else None
    base_headers = {}
    if os.environ.get("BENCH_AUTH"):
        base_headers["Authorization"] = os.environ["BENCH_AUTH"]
    if body is not None:
        base_headers["Content-Type"] = "application/json"
    run_token = uuid.uuid4().hex[:12]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0
    timeouts = 0
    limits = httpx.Limits(
        max_connections=args.connections, max_keepalive_connections=args.connections
    )
    start = time.monotonic()
    deadline = start + args.duration
    async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as client:

        async def connection(index: int) -> None:
            nonlocal errors, timeouts
            for n in range(MAX_REQUESTS_PER_CONNECTION):
                if time.monotonic() >= deadline:
                    return
                headers = dict(base_headers)
                if args.mode == "POST":
                    headers["Idempotency-Key"] = (
                        f"bench-{run_token}-{args.worker_id}-{index}-{n}-{uuid.uuid4().hex[:8]}"
                    )
                t0 = time.perf_counter()
                try:
                    response = await client.request(
                        args.mode, args.url, headers=headers, content=body
                    )
                except httpx.TimeoutException:
                    timeouts += 1
                    continue
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000.0)
                statuses[str(response.status_code)] += 1

        await asyncio.gather(*(connection(i) for i in range(args.connections)))
    return {
        "latencies_ms": latencies,
        "statuses": dict(statuses),
        "errors": errors,
        "timeouts": timeouts,
        "elapsed_s": time.monotonic() - start,
    }


def _worker_main() -> None:
    parser = argparse.ArgumentParser(description="Python load worker (bench fallback)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["GET", "POST"], default="GET")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--body-file")
    args = parser.parse_args()
    json.dump(asyncio.run(_worker(args)), sys.stdout)


if __name__ == "__main__":
    _worker_main()
