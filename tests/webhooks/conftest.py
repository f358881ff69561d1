"""Real HTTP receivers on loopback, and helpers to subscribe and dispatch."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.webhooks.dispatcher import Dispatcher
from tests.conftest import World, drop_database, make_world


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


# What a receiver answers: (status, headers, body), or a number of seconds to stall first.
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 recording every request; answers are scripted per path."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    # Answers taken in turn per path; when none is left, `default` answers.
    script: dict[str, list[Answer | float]] = field(default_factory=dict)
    default: Answer = (200, {}, b"ok")
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *answers: Answer | float) -> None:
        with self.lock:
            self.script.setdefault(path, []).extend(answers)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                queue = receiver.script.get(self.path, [])
                answer = queue.pop(0) if queue else receiver.default
            if isinstance(answer, float | int) and not isinstance(answer, tuple):
                time.sleep(float(answer))
                answer = receiver.default
            status, headers, payload = answer
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Receiver.__new__(Receiver)))
    rec = Receiver(server=server)
    server.RequestHandlerClass = _handler(rec)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def subscribe(
    world: World,
    code: str,
    url: str,
    events: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    body = {"url": url, "events": events or ["report.created"], **fields}
    response = world.http.post("/v1/webhooks", json=body, headers=world.headers(code))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def dispatch(world: World, dispatcher: Dispatcher | None = None) -> Dispatcher:
    """Run a dispatcher until nothing is due (retries scheduled later are left)."""
    d = dispatcher or Dispatcher(world.state)
    asyncio.run(d.run_until_idle())
    return d


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def dispatch_until(
    world: World,
    check: Callable[[], bool],
    dispatcher: Dispatcher | None = None,
    timeout: float = 15.0,
) -> Dispatcher:
    """Run a dispatcher round after round (retries included) until `check()` holds."""
    d = dispatcher or Dispatcher(world.state)

    async def rounds() -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await d.run_until_idle()
            await asyncio.sleep(0.02)

    asyncio.run(rounds())
    return d


@pytest.fixture
def quick_world(tmp_path: Any) -> Iterator[World]:
    """A world whose retries come after milliseconds and whose receivers time out fast."""
    w = make_world(
        tmp_path,
        webhook_retry_schedule=(0.2, 0.2, 0.2),
        webhook_timeout_seconds=1.0,
    )
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)
