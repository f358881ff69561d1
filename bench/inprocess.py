"""Per-request cost, in-process: time and SQL statements of one GET and one POST of a report.

No sockets and no concurrency: requests go one after the other through httpx's ASGI transport
into the real app (sync endpoints still run in the thread pool), so the figures are free of the
load generator and of CPU contention. The bare endpoints are measured the same way. Use it to see
where a request's time goes, e.g. under py-spy:

    .venv/bin/python bench/inprocess.py --backend sqlite --requests 300
    .venv/bin/py-spy record -f raw -o /tmp/get.txt -- \\
        .venv/bin/python bench/inprocess.py --only GET --requests 3000
    .venv/bin/python bench/profile_summary.py /tmp/get.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bare
from run import (
    DEFAULT_PG_ADMIN_URL,
    REPO,
    app_database_url,
    create_scratch_database,
    drop_scratch_database,
    report_payload,
)

from app import bootstrap
from app.auth.client import make_assertion
from app.auth.scopes import scopes_for_member
from app.config import Settings
from app.db import transaction
from app.kit.jwt import SigningKey
from app.main import create_app
from app.members.service import add_client

ISSUER = "http://tearline.bench"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_WORD = re.compile(r"^\s*(\w+)(?:.*?\b(?:FROM|INTO|UPDATE)\s+(\w+))?", re.IGNORECASE | re.DOTALL)


def _kind(statement: str) -> str:
    m = _WORD.match(statement)
    if m is None:
        return statement[:30]
    verb = m.group(1).upper()
    return f"{verb} {m.group(2)}" if m.group(2) else verb


async def measure(
    http: httpx.AsyncClient,
    name: str,
    make: Any,
    n: int,
    warmup: int,
    statements: list[str],
) -> dict[str, Any]:
    """`n` sequential requests after `warmup`; per-request time and SQL statements."""
    for i in range(warmup):
        response = await make(http, -1 - i)
        response.raise_for_status()
    statements.clear()
    times = []
    statuses: Counter[int] = Counter()
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        response = await make(http, i)
        times.append((time.perf_counter() - t0) * 1000.0)
        statuses[response.status_code] += 1
    cpu_ms = (time.process_time() - cpu0) * 1000.0 / n
    kinds = Counter(_kind(s) for s in statements)
    return {
        "name": name,
        "mean_ms": statistics.fmean(times),
        "p50_ms": statistics.median(times),
        "cpu_ms": cpu_ms,
        "statements_per_request": len(statements) / n,
        "statement_kinds": {k: v / n for k, v in kinds.most_common()},
        "statuses": dict(statuses),
    }


async def run(args: argparse.Namespace, tmp: Path, url: str) -> list[dict[str, Any]]:
    settings = Settings(
        env="development",
        data_dir=tmp / "data",
        database_url=url,
        policy_dir=REPO / "policies",
        issuer=ISSUER,
    )
    bootstrap.upgrade_database(url)
    state = bootstrap.build_state(settings)
    bootstrap.prepare_database(state)
    app = create_app(settings, state=state)
    member = state.policy.bundle.members[args.member]
    key = SigningKey.generate("bench-1")
    client_id = f"{args.member}.bench"
    with transaction(state.sessionmaker) as session:
        add_client(
            session,
            state.policy.bundle,
            client_id=client_id,
            public_pem=key.public_pem(),
            kid=key.kid,
            scopes=list(scopes_for_member(member.is_chair)),
        )
    statements: list[str] = []

    @event.listens_for(state.engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    body = report_payload(args.body_bytes)
    results = []
    try:
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=ISSUER, timeout=60
            ) as http,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=bare.app), base_url="http://bare", timeout=60
            ) as bare_http,
        ):
            form = {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": make_assertion(client_id, key, ISSUER),
            }
            token = (await http.post("/v1/auth/token", data=form)).raise_for_status().json()
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            post_headers = {**auth, "Content-Type": "application/json"}
            created = await http.post("/v1/reports", content=body, headers=post_headers)
            report_id = created.raise_for_status().json()["id"]

            async def get(c: httpx.AsyncClient, _i: int) -> httpx.Response:
                return await c.get(f"/v1/reports/{report_id}", headers=auth)

            async def post(c: httpx.AsyncClient, i: int) -> httpx.Response:
                headers = {**post_headers, "Idempotency-Key": f"inproc-{time.time_ns()}-{i}"}
                return await c.post("/v1/reports", content=body, headers=headers)

            async def bare_get(c: httpx.AsyncClient, _i: int) -> httpx.Response:
                return await c.get("/bare")

            async def bare_sync_get(c: httpx.AsyncClient, _i: int) -> httpx.Response:
                return await c.get("/bare-sync")

            plan = [
                ("bare", bare_http, bare_get),
                ("bare-sync", bare_http, bare_sync_get),
                ("GET", http, get),
                ("POST", http, post),
            ]
            for name, client, make in plan:
                if args.only and name != args.only:
                    continue
                results.append(
                    await measure(client, name, make, args.requests, args.warmup, statements)
                )
    finally:
        state.engine.dispose()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--requests", type=int, default=300, help="per endpoint (max 100000)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--only", choices=["bare", "bare-sync", "GET", "POST"])
    p.add_argument("--member", default="USA")
    p.add_argument("--body-bytes", type=int, default=2048)
    p.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    args = p.parse_args()
    if not 1 <= args.requests <= 100_000:
        p.error("--requests must be 1..100000")
    tmp = Path(tempfile.mkdtemp(prefix="tearline-inproc-"))
    database = None
    try:
        if args.backend == "postgres":
            database = create_scratch_database(args.pg_url)
            url = app_database_url(args.pg_url, database)
        else:
            url = f"sqlite:///{(tmp / 'tearline.db').as_posix()}"
        results = asyncio.run(run(args, tmp, url))
    finally:
        if database is not None:
            with contextlib.suppress(Exception):
                drop_scratch_database(args.pg_url, database)
        shutil.rmtree(tmp, ignore_errors=True)
    bare_ms = next((r["mean_ms"] for r in results if r["name"] == "bare"), None)
    print(f"backend {args.backend}: {args.requests} sequential requests each, in-process")
    print("(mean/p50: wall time per request; cpu: this process's CPU per request, all threads)")
    print(
        f"{'endpoint':<10} {'mean ms':>8} {'p50 ms':>8} {'cpu ms':>8} {'x bare':>7} "
        f"{'SQL/req':>7}  statements"
    )
    for r in results:
        ratio = f"{r['mean_ms'] / bare_ms:7.1f}" if bare_ms else "      -"
        kinds = ", ".join(f"{k} {v:g}" for k, v in r["statement_kinds"].items())
        print(
            f"{r['name']:<10} {r['mean_ms']:8.3f} {r['p50_ms']:8.3f} {r['cpu_ms']:8.3f} {ratio} "
            f"{r['statements_per_request']:7.2f}  {kinds}"
        )
        bad = {s: n for s, n in r["statuses"].items() if not 200 <= s <= 299}
        if bad:
            print(f"  non-2xx: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
