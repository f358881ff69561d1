"""Search at scale: `POST /v1/search` for 10 entities as the number of stored reports grows.

Seeds reports as bench/listing.py does (five entities each, from bench/entities.py), growing the
database size by size (default 10,000 then 100,000 on SQLite, 10,000 then 1,000,000 on
PostgreSQL). After each size it starts `tearline serve` and times sequential searches over HTTP
for a state and a body, each for the same 10 entities (two per type, drawn as the seeding draws
them, so at 1,000,000 reports about one report holds each). Target: p99 at the largest size at
most 2x the p99 at the first. At the largest size it then runs wrk against the search and a bare
FastAPI endpoint in the same run: searches per second / bare requests per second >= 0.15.

An existing seeded database can be measured instead of seeding (`--database`, `--data-dir`,
`--reports`): e.g. the one `bench/listing.py --keep` left. Its schema is upgraded and its blind
index rebuilt first (`tearline db upgrade`, `tearline search reindex`), and the reindex is timed.

    .venv/bin/python bench/search.py --backend sqlite --sizes 2000,6000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its helpers sit beside this file.
import entities
from listing import Markings, Seeder, Server, _parse_size, percentile
from loadgen import LoadSettings, ensure_wrk, run_wrk
from run import (
    BENCH_DIR,
    DEFAULT_PG_ADMIN_URL,
    REPO,
    BenchError,
    Cleanup,
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

from app import bootstrap
from app.config import Settings

TARGET_P99_RATIO = 2.0
TARGET_THROUGHPUT = 0.15
QUERY_ENTITIES = 10
# Searches must not be refused by the per-client rate limit while they are timed.
UNLIMITED = str(10**9)


def query_body(seed: int) -> dict[str, Any]:
    """Ten entities, two per type, drawn from the seeding's pools."""
    rng = random.Random(seed)
    items = [
        {"type": t, "value": entities.value(t, rng.randrange(entities.POOL))}
        for t in entities.TYPES
        for _ in range(QUERY_ENTITIES // len(entities.TYPES))
    ]
    return {"entities": items, "purpose": "search bench"}


def measure(
    server: Server, member: str, body: dict[str, Any], requests: int, warmup: int
) -> dict[str, Any]:
    """`requests` sequential searches after `warmup`; latency percentiles and result counts."""
    times: list[float] = []
    results: list[int] = []
    with httpx.Client(base_url=server.base, timeout=60) as http:
        for i in range(warmup + requests):
            headers = {"Authorization": server.auth(member)}
            t0 = time.perf_counter()
            response = http.post("/v1/search", json=body, headers=headers)
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code != 200:
                raise BenchError(
                    f"search as {member}: {response.status_code} {response.text[:300]}"
                )
            if i >= warmup:
                times.append(elapsed)
                results.append(len(response.json()["results"]))
    times.sort()
    return {
        "requests": requests,
        "p50_ms": percentile(times, 50),
        "p90_ms": percentile(times, 90),
        "p99_ms": percentile(times, 99),
        "mean_ms": statistics.fmean(times),
        "results_per_search": sorted(set(results)),
    }


@dataclass
class SearchBench:
    args: argparse.Namespace
    cleanup: Cleanup
    tmp: Path = field(init=False)
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def run(self) -> dict[str, Any]:
        args = self.args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tearline-search-{args.backend}-"))
        self.cleanup.tmp_dirs.append(self.tmp)
        port = free_port()
        data_dir = Path(args.data_dir) if args.data_dir else self.tmp / "data"
        if args.backend == "postgres":
            if args.database:
                name = args.database
            else:
                for stale in drop_stale_scratch_databases(args.pg_url):
                    print(f"dropped stale scratch database {stale}")
                name = create_scratch_database(args.pg_url)
                if not args.keep:
                    self.cleanup.databases.append((args.pg_url, name))
            self.database_url = app_database_url(args.pg_url, name)
            print(f"database {name}")
        self.env = tearline_env(data_dir, port, self.database_url)
        self.env["TEARLINE_SEARCH_RATE_PER_MINUTE"] = UNLIMITED
        server = Server(self.cleanup, self.env, self.tmp, port)
        sizes: list[dict[str, Any]] = []
        reindex = None
        if args.skip_reindex:
            self.settle()
            sizes.append(self.measure_size(args.reports, server))
        elif args.database or args.data_dir:
            print("tearline db upgrade, then search reindex ...", flush=True)
            tearline_cmd(self.cleanup.procs, ["db", "upgrade"], self.env, self.tmp)
            t0 = time.perf_counter()
            out = tearline_cmd(
                self.cleanup.procs, ["search", "reindex"], self.env, self.tmp, timeout=4 * 3600
            )
            seconds = time.perf_counter() - t0
            reindex = {"seconds": seconds, "reports": args.reports, "output": out.splitlines()[-1]}
            print(
                f"  {out.splitlines()[-1]} in {seconds:.0f} s "
                f"= {args.reports / seconds:,.0f} reports/s"
            )
            self.settle()
            sizes.append(self.measure_size(args.reports, server))
        else:
            print("tearline dev init ...", flush=True)
            tearline_cmd(self.cleanup.procs, ["dev", "init"], self.env, self.tmp)
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                env="development",
                data_dir=data_dir,
                policy_dir=REPO / "policies",
                issuer=f"http://127.0.0.1:{port}",
                **({"database_url": self.database_url} if self.database_url else {}),
            )
            state = bootstrap.build_state(settings)
            try:
                for code in (args.state, args.body):
                    if code not in state.policy.bundle.members:
                        raise BenchError(f"{code} is not in the roster")
                markings = Markings(state.policy.bundle, args.rng_seed, args.marking_pool)
                seeder = Seeder(state, markings, "batched", args.seed_batch)
                for size in args.size_list:
                    print(f"\n== {size:,} reports", flush=True)
                    seeding = seeder.seed_to(size)
                    print(f"  seeding: {seeding['reports_per_s']:,.0f} reports/s", flush=True)
                    self.settle()
                    sizes.append({**self.measure_size(size, server), "seeding": seeding})
            finally:
                state.db.dispose()
        throughput = None if args.no_throughput else self.throughput(server, port)
        return {
            "backend": args.backend,
            "sizes": sizes,
            "reindex": reindex,
            "throughput": throughput,
        }

    def settle(self) -> None:
        if self.database_url is not None:
            t0 = time.perf_counter()
            name = self.database_url.rsplit("/", 1)[-1]
            analyze_scratch_database(self.args.pg_url, name, settle=True)
            print(f"  VACUUM (ANALYZE) and CHECKPOINT ({time.perf_counter() - t0:.0f} s)")

    def measure_size(self, size: int, server: Server) -> dict[str, Any]:
        args = self.args
        body = query_body(args.query_seed)
        server.start()
        try:
            members = {}
            for member in (args.state, args.body):
                result = measure(server, member, body, args.requests, args.warmup)
                members[member] = result
                print(
                    f"  {member:<8} p50 {result['p50_ms']:6.1f} ms  "
                    f"p90 {result['p90_ms']:6.1f} ms  "
                    f"p99 {result['p99_ms']:6.1f} ms  results {result['results_per_search']}",
                    flush=True,
                )
        finally:
            server.stop()
        return {"size": size, "members": members}

    def throughput(self, server: Server, port: int) -> dict[str, Any]:
        """wrk against the search and the bare endpoint, in this order, in one run."""
        args = self.args
        wrk, how = ensure_wrk(install=True)
        if wrk is None:
            raise BenchError(f"wrk is needed for the throughput part: {how}")
        body_file = self.tmp / "search.json"
        body_file.write_text(json.dumps(query_body(args.query_seed)))
        settings = LoadSettings(duration=args.duration, warmup=args.warmup_seconds)
        bare_port = free_port()
        bare = self.cleanup.procs.start(
            [sys.executable, str(BENCH_DIR / "bare.py"), "--port", str(bare_port)],
            env=dict(os.environ),
            log=self.tmp / "bare.log",
        )
        wait_ready(bare, f"http://127.0.0.1:{bare_port}/bare", self.tmp / "bare.log", "bare app")
        server.start()
        try:
            auth = server.auth(args.state)
            url = f"{server.base}/v1/search"
            rounds = []
            search_load = functools.partial(
                run_wrk,
                self.cleanup.procs,
                wrk,
                url=url,
                mode="POST",
                settings=settings,
                auth=auth,
                body_file=body_file,
            )
            for _ in range(args.repeat):
                search_load(name="warmup", duration=settings.warmup)
                found = search_load(name="search", duration=settings.duration)
                baseline = run_wrk(
                    self.cleanup.procs,
                    wrk,
                    name="bare",
                    url=f"http://127.0.0.1:{bare_port}/bare",
                    mode="GET",
                    settings=settings,
                    duration=settings.duration,
                )
                if found.errors or baseline.errors:
                    raise BenchError(
                        f"errors under load: search {found.statuses}, bare {baseline.statuses}"
                    )
                ratio = found.rps / baseline.rps
                rounds.append(
                    {
                        "search_rps": found.rps,
                        "bare_rps": baseline.rps,
                        "ratio": ratio,
                        "search_p99_ms": found.latency_ms.get("p99"),
                    }
                )
                print(
                    f"  wrk: search {found.rps:,.0f}/s, bare {baseline.rps:,.0f}/s, "
                    f"ratio {ratio:.3f}",
                    flush=True,
                )
        finally:
            server.stop()
            self.cleanup.procs.stop(bare)
        median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        return {"rounds": rounds, "median": median, "target": TARGET_THROUGHPUT}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--sizes",
        help="increasing report counts (default 10k,100k on SQLite, 10k,1M on PostgreSQL)",
    )
    parser.add_argument(
        "--requests", type=int, default=300, help="timed searches per member and size"
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed searches first")
    parser.add_argument("--seed-batch", type=int, default=500)
    parser.add_argument("--rng-seed", type=int, default=1)
    parser.add_argument("--marking-pool", type=int, default=1000)
    parser.add_argument("--query-seed", type=int, default=7)
    parser.add_argument("--state", default="DEU")
    parser.add_argument("--body", default="EGMONT")
    parser.add_argument("--database", help="measure this existing PostgreSQL database (no seeding)")
    parser.add_argument(
        "--data-dir", help="the data dir (keyring) of that database, or of an existing SQLite one"
    )
    parser.add_argument(
        "--reports", type=int, default=0, help="how many reports the existing database holds"
    )
    parser.add_argument(
        "--skip-reindex",
        action="store_true",
        help="with --database: its index is built already (`tearline search reindex` ran)",
    )
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per measurement")
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument(
        "--repeat", type=int, default=3, help="wrk rounds (the median ratio is shown)"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch database and data dir"
    )
    parser.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    args = parser.parse_args(argv)
    default = "10k,100k" if args.backend == "sqlite" else "10k,1M"
    args.size_list = [_parse_size(v) for v in (args.sizes or default).split(",")]
    args.started = datetime.now(UTC)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(
        f"search at scale on {args.backend}; load average {os.getloadavg()[0]:.2f} at the start",
        flush=True,
    )
    cleanup = Cleanup(keep=args.keep)
    bench = SearchBench(args, cleanup)
    try:
        result = bench.run()
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    except BenchError as exc:
        print(f"FAILED: {exc}")
        return 1
    finally:
        cleanup.run(final=True)
    sizes = result["sizes"]
    print("\nsize        member    p50 ms   p99 ms   p99 / first")
    first = {m: r["p99_ms"] for m, r in sizes[0]["members"].items()}
    for s in sizes:
        for member, r in s["members"].items():
            print(
                f"{s['size']:>10,}  {member:<8} {r['p50_ms']:7.1f} {r['p99_ms']:8.1f}   "
                f"{r['p99_ms'] / first[member]:6.2f}"
            )
    if result["throughput"]:
        m = result["throughput"]["median"]
        print(
            f"throughput: {m['search_rps']:,.0f} searches/s, bare {m['bare_rps']:,.0f}/s: "
            f"ratio {m['ratio']:.3f} (target >= {TARGET_THROUGHPUT})"
        )
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"search-{args.backend}-{args.started:%Y%m%dT%H%M%SZ}.json"
    settings = {k: v for k, v in vars(args).items() if k not in ("started",)}
    doc = {
        "started_at": args.started.isoformat(),
        "git": git_info(),
        "settings": settings,
        **result,
    }
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
