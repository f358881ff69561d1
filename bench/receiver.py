"""A webhook receiver for the benchmarks: answers every POST with 200 at once, and counts.

Raw asyncio (uvloop when installed) HTTP/1.1, keep-alive and `Connection: close` both handled, so
it costs the machine as little as possible per request. Per path it counts requests and distinct
`webhook-id`s (a repeated id is a duplicate delivery), keeps the first and the last few requests
(headers and raw body) for signature checks, and the time of each acknowledgement (first, last,
and a histogram per 100 ms).

Control endpoints (not counted):
- `GET /_counts`: `{requests, distinct, duplicates, first_at, last_at, paths: {path: [requests,
  distinct]}, histogram: {decisecond: n}}` (times are `time.time()` seconds); `?brief=1`:
  without `paths` and `histogram` (cheap enough to poll);
- `GET /_samples`: `{path: [{received_at, headers: {...}, body_b64}]}`;
- `POST /_reset`: forget everything.

Run: `python bench/receiver.py --port 9100` (prints `ready` once listening).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import time
from collections import Counter, deque
from typing import Any, cast

SAMPLE_FIRST = 2
SAMPLE_LAST = 2
MAX_HEADER_BYTES = 64 * 1024
_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_SIGNED = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")


class Tally:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.ids: dict[str, set[str]] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.histogram: Counter[int] = Counter()
        self.first: dict[str, list[dict[str, Any]]] = {}
        self.last: dict[str, deque[dict[str, Any]]] = {}

    def hit(self, path: str, headers: dict[str, str], body: bytes) -> None:
        now = time.time()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.histogram[int(now * 10)] += 1
        self.requests[path] += 1
        self.ids.setdefault(path, set()).add(headers.get("webhook-id", ""))
        sample = {
            "received_at": now,
            "headers": {k: headers[k] for k in _SIGNED if k in headers},
            "body_b64": base64.b64encode(body).decode(),
        }
        first = self.first.setdefault(path, [])
        if len(first) < SAMPLE_FIRST:
            first.append(sample)
        else:
            self.last.setdefault(path, deque(maxlen=SAMPLE_LAST)).append(sample)

    def counts(self) -> dict[str, Any]:
        requests = sum(self.requests.values())
        distinct = sum(len(s) for s in self.ids.values())
        return {
            "requests": requests,
            "distinct": distinct,
            "duplicates": requests - distinct,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "paths": {p: [n, len(self.ids.get(p, ()))] for p, n in sorted(self.requests.items())},
            "histogram": {str(k): v for k, v in sorted(self.histogram.items())},
        }

    def samples(self) -> dict[str, list[dict[str, Any]]]:
        return {p: [*self.first.get(p, []), *self.last.get(p, [])] for p in sorted(self.requests)}


class Http(asyncio.Protocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            self.respond(method, target, headers, body, close)
            if close:
                self.transport.close()
                self.transport = None

    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes, close: bool
    ) -> None:
        assert self.transport is not None
        path = target.split("?", 1)[0]
        if path.startswith("/_"):
            if method == "GET" and path == "/_counts":
                counts = self.tally.counts()
                if "brief" in target:
                    del counts["histogram"], counts["paths"]
                self.json(counts, close)
            elif method == "GET" and path == "/_samples":
                self.json(self.tally.samples(), close)
            elif method == "POST" and path == "/_reset":
                self.tally.reset()
                self.json({"reset": True}, close)
            else:
                self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        if method == "POST":
            self.tally.hit(path, headers, body)
        self.transport.write(_OK_CLOSE if close else _OK)

    def json(self, doc: dict[str, Any], close: bool) -> None:
        assert self.transport is not None
        data = json.dumps(doc).encode()
        extra = b"connection: close\r\n" if close else b""
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(data)).encode()
            + b"\r\n"
            + extra
            + b"\r\n"
            + data
        )


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    server = await loop.create_server(lambda: Http(tally), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # noqa: PLC0415 - optional, faster

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
