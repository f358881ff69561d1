"""The baseline: a bare FastAPI app served by uvicorn exactly as `tearline serve` serves Tearline.

Two endpoints, both returning the same small JSON:
- `GET /bare` is `async def` (runs on the event loop: the framework's floor);
- `GET /bare-sync` is a plain `def` (runs in the thread pool, like every Tearline endpoint).

Run: `python bench/bare.py --host 127.0.0.1 --port 9000`.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI(title="bare")

PAYLOAD = {"status": "ok", "service": "bare", "items": [1, 2, 3]}


@app.get("/bare")
async def bare() -> dict[str, object]:
    return PAYLOAD


@app.get("/bare-sync")
def bare_sync() -> dict[str, object]:
    return PAYLOAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn options as `tearline serve` (app/cli/main.py): one process, default loop.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
