"""Outbound webhook requests: URL checks, address checks after resolution, and the send itself.

Every receiver listens on loopback; tests that judge public addresses replace the resolver and
never connect anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.kit import outbound
from app.kit.outbound import (
    Outcome,
    Target,
    UnsafeTarget,
    check_url,
    is_public_address,
    parse_retry_after,
    resolve,
    send,
)

# --------------------------------------------------------------------------- loopback receivers


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    header_names: list[str]  # in order, with repeats


def reply(status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Respond = Callable[["Receiver", Received, asyncio.StreamWriter], Awaitable[None]]


def answering(
    status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None
) -> Respond:
    async def respond(
        _receiver: Receiver, _request: Received, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(reply(status, body, headers))

    return respond


async def stall(receiver: Receiver, _request: Received, _writer: asyncio.StreamWriter) -> None:
    await receiver.release.wait()


async def trickle(receiver: Receiver, _request: Received, writer: asyncio.StreamWriter) -> None:
    # each byte comes quickly after the last, so only a bound on the whole exchange stops it
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        writer.write(b"x")
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await receiver.release.wait()
        if receiver.release.is_set():
            return


class Receiver:
    """A minimal HTTP/1.1 server on loopback, in the test's own event loop."""

    def __init__(
        self,
        respond: Respond = answering(),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.respond = respond
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.requests: list[Received] = []
        self.connections = 0
        self.release = asyncio.Event()

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(
            self._handle, self.host, self.port, ssl=self.ssl_context
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release.set()
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str = "/hook", host: str | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers, names = {}, []
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    names.append(name.strip().lower())
                    headers[names[-1]] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(method, target, headers, body, names)
            self.requests.append(received)
            await self.respond(self, received, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --------------------------------------------------------------------------- a resolver stand-in

_real_getaddrinfo = socket.getaddrinfo


class FakeResolver:
    """Answers for chosen names; numeric hosts and every other name go to the real resolver."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        # each name maps to successive answers; the last one repeats
        self.answers = answers
        self.lookups: dict[str, int] = {}

    def __call__(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        if host not in self.answers or flags & socket.AI_NUMERICHOST:
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        count = self.lookups.get(host, 0)
        self.lookups[host] = count + 1
        sequence = self.answers[host]
        addresses = sequence[min(count, len(sequence) - 1)]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        results: list[Any] = []
        for address in addresses:
            if ipaddress.ip_address(address).version == 6:
                results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return results


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeResolver]:
    def install(**answers: list[list[str]]) -> FakeResolver:
        resolver = FakeResolver({name.replace("_", "."): seq for name, seq in answers.items()})
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        return resolver

    return install


# --------------------------------------------------------------------------- check_url


class TestCheckUrl:
    def test_a_https_url_is_split_into_its_parts(self) -> None:
        url = "https://Hooks.Example.com/in/bound?x=1&y=%2F"
        assert check_url(url, require_https=True) == Target(
            scheme="https",
            host="hooks.example.com",
            port=443,
            path_with_query="/in/bound?x=1&y=%2F",
            url=url,
        )

    def test_an_http_url_without_path_gets_root_and_keeps_its_port(self) -> None:
        target = check_url("http://hooks.example:8080", require_https=False)
        assert (target.port, target.path_with_query, target.host_header) == (
            8080,
            "/",
            "hooks.example:8080",
        )

    def test_host_header_omits_the_default_port_and_brackets_ipv6(self) -> None:
        assert check_url("https://hooks.example:443/", require_https=True).host_header == (
            "hooks.example"
        )
        target = check_url("https://[2606:4700::1111]:8443/x", require_https=True)
        assert (target.host, target.host_header) == ("2606:4700::1111", "[2606:4700::1111]:8443")

    def test_a_public_ip_literal_is_accepted(self) -> None:
        assert check_url("https://8.8.8.8/", require_https=True).host == "8.8.8.8"

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("ftp://hooks.example/", "scheme must be http or https"),
            ("file:///etc/passwd", "scheme must be http or https"),
            ("javascript:alert(1)", "scheme must be http or https"),
            ("//hooks.example/x", "scheme must be http or https"),
            ("hooks.example/x", "scheme must be http or https"),
            ("http://user:pass@hooks.example/", "user name or password"),
            ("http://user@hooks.example/", "user name or password"),
            ("http://@hooks.example/", "user name or password"),
            ("http://hooks.example/#frag", "fragment"),
            ("http://hooks.example/#", "fragment"),
            ("http:///path", "no host"),
            ("http://", "no host"),
            ("http://:8080/", "no host"),
            ("http://hooks.example:0/", "between 1 and 65535"),
            ("http://hooks.example:65536/", "between 1 and 65535"),
            ("http://hooks.example:99999999/", "between 1 and 65535"),
            ("http://hooks.example:80a/", "port is malformed"),
            ("http://hooks.example:+80/", "port is malformed"),
            ("http://hooks.example:-1/", "port is malformed"),
            ("http://hooks.example:80:81/", "port is malformed"),
            ("http://[::1]x/", "port is malformed"),
            ("http://hooks example/", "printable ASCII"),
            ("http://hooks.example/\tx", "printable ASCII"),
            ("http://hooks.example/\r\nX-Injected: 1", "printable ASCII"),
            ("http://hooks.example\\@evil.example/", "backslash"),
            ("http://hööks.example/", "printable ASCII"),
            ("http://exa%6dple.com/", "not a valid host name"),
            ("http://hooks..example/", "not a valid host name"),
            ("http://hooks.example!/", "not a valid host name"),
            ("http://" + "a" * 254 + "/", "not a valid host name"),
            ("http://[::1/", "malformed"),
            ("http://[not:an:address]/", "malformed|not a valid IPv6 address"),
            ("http://[fe80::1%25eth0]/", "zone ids"),
            ("http://hooks.example/" + "a" * 2048, "longer than 2048"),
            ("", "printable ASCII"),
        ],
    )
    def test_malformed_or_unsafe_urls_are_refused_with_a_reason(
        self, url: str, reason: str
    ) -> None:
        with pytest.raises(UnsafeTarget, match=reason):
            check_url(url, require_https=False, allow_private=True)

    def test_http_is_refused_when_https_is_required(self) -> None:
        with pytest.raises(UnsafeTarget, match="must be https"):
            check_url("http://hooks.example/", require_https=True)

    def test_a_url_of_exactly_the_limit_is_accepted(self) -> None:
        url = "https://hooks.example/"
        url += "a" * (2048 - len(url))
        assert check_url(url, require_https=True).url == url

    def test_unsafe_target_is_a_value_error(self) -> None:
        assert issubclass(UnsafeTarget, ValueError)


# --------------------------------------------------------------------------- addresses

# Every one of these reaches loopback, private, link-local, metadata or otherwise non-public
# space once resolved, whatever notation it is written in.
REFUSED_LITERALS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://0x7f000001/",
    "http://0x7f.0.0.1/",
    "http://0x7F.0x0.0x0.0x1/",
    "http://2130706433/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://0177.0000.0000.0001/",
    "http://127.000.000.001/",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:0:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[0:0:0:0:0:ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://169.254.169.254/",
    "http://0xa9fea9fe/",
    "http://2852039166/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://10.0.0.1/",
    "http://012.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://192.0.0.8/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b:1::808:808]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[2001:0:808:808:0:0:80ff:fffe]/",  # Teredo, client 127.0.0.1 (obfuscated)
    "http://[2001:db8::1]/",
    "http://[100::1]/",
    "https://[::1]:8443/x",
]
REFUSED_NAMES = ["http://localhost/", "http://LOCALHOST:8080/x", "https://localhost/"]


def judge(url: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    target = check_url(url, require_https=False, allow_private=True)
    return asyncio.run(resolve(target.host, target.port, allow_private=False))


class TestAddressChecks:
    @pytest.mark.parametrize("url", REFUSED_LITERALS)
    def test_a_non_public_literal_is_refused_before_any_lookup(self, url: str) -> None:
        with pytest.raises(UnsafeTarget, match="not a public address"):
            check_url(url, require_https=False)

    @pytest.mark.parametrize("url", REFUSED_LITERALS + REFUSED_NAMES)
    def test_a_non_public_address_is_refused_after_resolution(self, url: str) -> None:
        with pytest.raises(UnsafeTarget, match="non-public address"):
            judge(url)

    @pytest.mark.parametrize("url", REFUSED_NAMES)
    def test_a_name_passes_the_syntax_check_and_is_judged_when_resolved(self, url: str) -> None:
        assert check_url(url, require_https=False).host == "localhost"

    @pytest.mark.parametrize("url", REFUSED_LITERALS[:5] + REFUSED_NAMES)
    def test_private_targets_are_allowed_only_when_asked(self, url: str) -> None:
        target = check_url(url, require_https=False, allow_private=True)
        addresses = asyncio.run(resolve(target.host, target.port, allow_private=True))
        assert addresses
        assert not any(is_public_address(address) for address in addresses)

    @pytest.mark.parametrize(
        "address",
        [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ],
    )
    def test_public_addresses_are_public(self, address: str) -> None:
        assert is_public_address(ipaddress.ip_address(address))

    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",
            "10.1.2.3",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",  # noqa: S104 - a target being refused, not an address to bind
            "224.0.0.251",
            "239.255.255.250",
            "192.0.0.9",
            "192.88.99.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:0:a00:1",
            "::8.8.8.8",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::1",
            "2002:c0a8:101::",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fd12:3456::1",
            "fe80::1",
            "fe80::1%2",
            "fec0::1",
            "ff0e::1",
            "3fff::1",
            "2001:db8:85a3::8a2e:370:7334",
        ],
    )
    def test_non_public_addresses_are_not_public(self, address: str) -> None:
        assert not is_public_address(ipaddress.ip_address(address))


class TestResolve:
    def test_a_name_resolving_only_to_public_addresses_is_accepted(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        fake_dns(hooks_example=[["8.8.8.8", "2606:4700::1111", "8.8.8.8"]])
        addresses = asyncio.run(resolve("hooks.example", 443, allow_private=False))
        assert addresses == [
            ipaddress.ip_address("8.8.8.8"),
            ipaddress.ip_address("2606:4700::1111"),
        ]

    def test_one_private_answer_refuses_the_whole_name(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        fake_dns(hooks_example=[["8.8.8.8", "10.0.0.1"]])
        with pytest.raises(UnsafeTarget, match="non-public address") as caught:
            asyncio.run(resolve("hooks.example", 443, allow_private=False))
        assert "10.0.0.1" not in str(caught.value)

    def test_a_name_that_does_not_resolve_is_refused(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        fake_dns(hooks_example=[[]])
        with pytest.raises(UnsafeTarget, match="does not resolve"):
            asyncio.run(resolve("hooks.example", 443, allow_private=True))

    @pytest.mark.parametrize("host", ["fe80::1%eth0", "[fe80::1%lo]", "fe80::1%1"])
    def test_zone_ids_are_refused_even_when_private_is_allowed(self, host: str) -> None:
        with pytest.raises(UnsafeTarget, match="zone ids"):
            asyncio.run(resolve(host, 80, allow_private=True))

    def test_bracketed_ipv6_is_resolved_as_its_address(self) -> None:
        with pytest.raises(UnsafeTarget, match="non-public"):
            asyncio.run(resolve("[::ffff:127.0.0.1]", 80, allow_private=False))


# --------------------------------------------------------------------------- send


class TestSend:
    def test_a_post_arrives_with_body_headers_and_the_original_host(self) -> None:
        async def scenario() -> tuple[Receiver, Outcome]:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url("/in?x=1&y=%2F"),
                    b'{"type":"report.created"}',
                    {
                        "Content-Type": "application/json",
                        "webhook-id": "msg_1",
                        "Host": "x.test",
                        "content-length": "3",
                        "accept-encoding": "gzip",
                    },
                    allow_private=True,
                    require_https=False,
                )
            return receiver, outcome

        receiver, outcome = asyncio.run(scenario())
        assert (outcome.status, outcome.excerpt, outcome.error, outcome.retry_after) == (
            200,
            b"ok",
            None,
            None,
        )
        assert 0 <= outcome.duration_ms < 5000
        [request] = receiver.requests
        assert (request.method, request.target, request.body) == (
            "POST",
            "/in?x=1&y=%2F",
            b'{"type":"report.created"}',
        )
        assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
        assert request.headers["webhook-id"] == "msg_1"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["accept-encoding"] == "identity"
        assert request.headers["content-length"] == str(len(request.body))
        assert len(request.header_names) == len(set(request.header_names))

    def test_a_server_error_is_reported_with_its_status_and_excerpt(self) -> None:
        fail = answering(500, b"internal details")

        async def scenario() -> Outcome:
            async with Receiver(fail) as receiver:
                return await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False
                )

        outcome = asyncio.run(scenario())
        assert (outcome.status, outcome.excerpt, outcome.error) == (500, b"internal details", None)

    def test_a_redirect_is_returned_and_never_followed(self) -> None:
        async def scenario() -> tuple[Outcome, Receiver, Receiver]:
            async with Receiver() as elsewhere:
                redirect = answering(307, b"", {"Location": elsewhere.url("/stolen")})
                async with Receiver(redirect) as receiver:
                    outcome = await send(
                        receiver.url(), b"{}", {}, allow_private=True, require_https=False
                    )
            return outcome, receiver, elsewhere

        outcome, receiver, elsewhere = asyncio.run(scenario())
        assert (outcome.status, outcome.error) == (307, None)
        assert len(receiver.requests) == 1
        assert elsewhere.connections == 0

    def test_a_slow_receiver_times_out_within_the_bound(self) -> None:
        async def scenario() -> Outcome:
            async with Receiver(stall) as receiver:
                return await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False, timeout=0.3
                )

        started = time.monotonic()
        outcome = asyncio.run(scenario())
        assert time.monotonic() - started < 2.0
        assert (outcome.status, outcome.error) == (None, "timeout")
        assert 250 <= outcome.duration_ms < 2000

    def test_a_trickling_body_is_cut_off_at_the_total_bound(self) -> None:
        async def scenario() -> Outcome:
            async with Receiver(trickle) as receiver:
                return await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False, timeout=0.5
                )

        started = time.monotonic()
        outcome = asyncio.run(scenario())
        assert time.monotonic() - started < 2.0
        assert (outcome.status, outcome.error) == (200, "timeout")
        assert 0 < len(outcome.excerpt) < 1000

    def test_a_large_response_is_read_only_up_to_the_cap(self) -> None:
        body = bytes(range(256)) * 4096  # 1 MiB

        big = answering(200, body)

        async def scenario() -> tuple[Outcome, Outcome]:
            async with Receiver(big) as receiver:
                default = await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False
                )
                nothing = await send(
                    receiver.url(),
                    b"{}",
                    {},
                    allow_private=True,
                    require_https=False,
                    max_response_bytes=0,
                )
            return default, nothing

        default, nothing = asyncio.run(scenario())
        assert (default.status, default.error, default.excerpt) == (200, None, body[:4096])
        assert (nothing.status, nothing.error, nothing.excerpt) == (200, None, b"")

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("120", 120.0),
            ("0", 0.0),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
            ("soon", None),
        ],
    )
    def test_retry_after_is_reported(self, header: str, expected: float | None) -> None:
        busy = answering(503, b"busy", {"Retry-After": header})

        async def scenario() -> Outcome:
            async with Receiver(busy) as receiver:
                return await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False
                )

        outcome = asyncio.run(scenario())
        assert (outcome.status, outcome.retry_after) == (503, expected)

    def test_retry_after_as_a_future_date_counts_down_from_now(self) -> None:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
        header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")

        busy = answering(429, b"", {"Retry-After": header})

        async def scenario() -> Outcome:
            async with Receiver(busy) as receiver:
                return await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False
                )

        outcome = asyncio.run(scenario())
        assert outcome.status == 429
        assert outcome.retry_after is not None
        assert 85 <= outcome.retry_after <= 90

    def test_a_refused_connection_is_an_outcome_not_an_exception(self) -> None:
        port = unused_port()
        outcome = asyncio.run(
            send(f"http://127.0.0.1:{port}/", b"{}", {}, allow_private=True, require_https=False)
        )
        assert (outcome.status, outcome.error, outcome.excerpt) == (
            None,
            "connection refused",
            b"",
        )

    def test_a_private_target_is_refused_without_connecting(self) -> None:
        async def scenario() -> tuple[Outcome, Outcome, Receiver]:
            async with Receiver() as receiver:
                literal = await send(
                    receiver.url(), b"{}", {}, allow_private=False, require_https=False
                )
                name = await send(
                    receiver.url(host="localhost"),
                    b"{}",
                    {},
                    allow_private=False,
                    require_https=False,
                )
            return literal, name, receiver

        literal, name, receiver = asyncio.run(scenario())
        assert literal.error == "unsafe target: URL host is not a public address"
        assert name.error == "unsafe target: host resolves to a non-public address"
        assert literal.status is None
        assert name.status is None
        assert receiver.connections == 0

    def test_an_invalid_url_is_an_outcome(self) -> None:
        outcome = asyncio.run(
            send("http://hooks.example/", b"{}", {}, allow_private=False, require_https=True)
        )
        assert (outcome.status, outcome.error) == (None, "unsafe target: URL scheme must be https")

    def test_environment_proxies_are_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        dead = f"http://127.0.0.1:{unused_port()}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, dead)
        monkeypatch.setenv("all_proxy", dead)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        async def scenario() -> tuple[Outcome, Receiver]:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url(), b"{}", {}, allow_private=True, require_https=False
                )
            return outcome, receiver

        outcome, receiver = asyncio.run(scenario())
        assert (outcome.status, outcome.error) == (200, None)
        assert len(receiver.requests) == 1

    def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        # The first answer is checked; any later lookup would "rebind" to another loopback
        # address where nothing listens, so only a pinned connection can reach the receiver.
        resolver = fake_dns(hooks_example=[["127.0.0.1"], ["127.0.0.2"]])

        async def scenario() -> tuple[Outcome, Receiver]:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url(host="hooks.example"),
                    b"{}",
                    {},
                    allow_private=True,
                    require_https=False,
                )
            return outcome, receiver

        outcome, receiver = asyncio.run(scenario())
        assert (outcome.status, outcome.error) == (200, None)
        assert resolver.lookups == {"hooks.example": 1}
        [request] = receiver.requests
        assert request.headers["host"] == f"hooks.example:{receiver.port}"

    def test_a_name_resolving_privately_is_refused_without_connecting(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        resolver = fake_dns(hooks_example=[["127.0.0.1"]])

        async def scenario() -> tuple[Outcome, Receiver]:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url(host="hooks.example"),
                    b"{}",
                    {},
                    allow_private=False,
                    require_https=False,
                )
            return outcome, receiver

        outcome, receiver = asyncio.run(scenario())
        assert outcome.error == "unsafe target: host resolves to a non-public address"
        assert receiver.connections == 0
        assert resolver.lookups == {"hooks.example": 1}

    def test_an_unreachable_checked_address_falls_back_to_the_next_checked_one(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        fake_dns(hooks_example=[["127.0.0.2", "127.0.0.1"]])

        async def scenario() -> tuple[Outcome, Receiver]:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url(host="hooks.example"),
                    b"{}",
                    {},
                    allow_private=True,
                    require_https=False,
                )
            return outcome, receiver

        outcome, receiver = asyncio.run(scenario())
        assert (outcome.status, outcome.error) == (200, None)
        assert len(receiver.requests) == 1

    def test_a_name_that_does_not_resolve_is_an_outcome(
        self, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        fake_dns(hooks_example=[[]])
        outcome = asyncio.run(
            send("https://hooks.example/", b"{}", {}, allow_private=False, require_https=True)
        )
        assert (outcome.status, outcome.error) == (
            None,
            "unsafe target: host name does not resolve",
        )

    def test_many_concurrent_sends_all_arrive(self) -> None:
        async def scenario() -> tuple[list[Outcome], Receiver]:
            async with Receiver() as receiver:
                outcomes = await asyncio.gather(
                    *(
                        send(
                            receiver.url(f"/{n}"),
                            str(n).encode(),
                            {},
                            allow_private=True,
                            require_https=False,
                        )
                        for n in range(100)
                    )
                )
            return outcomes, receiver

        outcomes, receiver = asyncio.run(scenario())
        assert {(o.status, o.error) for o in outcomes} == {(200, None)}
        assert sorted(int(r.body) for r in receiver.requests) == list(range(100))


# --------------------------------------------------------------------------- hostile responses


def sending(raw: bytes) -> Respond:
    """A responder that writes `raw` as is, whatever it is, and hangs up."""

    async def respond(
        _receiver: Receiver, _request: Received, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(raw)

    return respond


def chunked(size: int) -> bytes:
    return f"{size:x}\r\n".encode("ascii")


async def endless_chunks(
    receiver: Receiver, _request: Received, writer: asyncio.StreamWriter
) -> None:
    # a chunked body that never ends: only the cap can stop the reader
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for n in range(1_000_000):
        if receiver.release.is_set():
            return
        writer.write(chunked(1000) + bytes([n % 256]) * 1000 + b"\r\n")
        await writer.drain()


async def endless_head(
    receiver: Receiver, _request: Received, writer: asyncio.StreamWriter
) -> None:
    # a header block that never ends: only the bound on the head can stop the reader
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for n in range(1_000_000):
        if receiver.release.is_set():
            return
        writer.write(f"X-Pad-{n}: {'a' * 1000}\r\n".encode("ascii"))
        await writer.drain()


def deliver(respond: Respond, **options: Any) -> tuple[Outcome, Receiver, float]:
    async def scenario() -> tuple[Outcome, Receiver]:
        async with Receiver(respond) as receiver:
            outcome = await send(
                receiver.url(), b"{}", {}, allow_private=True, require_https=False, **options
            )
        return outcome, receiver

    started = time.monotonic()
    outcome, receiver = asyncio.run(scenario())
    return outcome, receiver, time.monotonic() - started


class TestSendHostileResponses:
    def test_an_endless_header_block_is_a_protocol_error_not_a_hang(self) -> None:
        outcome, _, elapsed = deliver(endless_head, timeout=10.0)
        assert (outcome.status, outcome.error, outcome.excerpt) == (None, "protocol error", b"")
        assert elapsed < 3.0

    def test_a_huge_header_block_sent_at_once_is_a_protocol_error(self) -> None:
        pad = "".join(f"X-Pad-{n}: {'a' * 100}\r\n" for n in range(2000))  # about 220 KB
        huge = sending(f"HTTP/1.1 200 OK\r\n{pad}Content-Length: 2\r\n\r\nok".encode())
        outcome, _, elapsed = deliver(huge, timeout=10.0)
        assert (outcome.status, outcome.error) == (None, "protocol error")
        assert elapsed < 3.0

    def test_a_header_block_well_under_the_bound_is_accepted(self) -> None:
        headers = {f"X-Pad-{n}": "a" * 100 for n in range(80)}  # about 9 KB
        outcome, _, _ = deliver(answering(200, b"ok", headers))
        assert (outcome.status, outcome.error, outcome.excerpt) == (200, None, b"ok")

    def test_a_chunked_body_is_decoded_and_read_to_its_end(self) -> None:
        body = chunked(3) + b"abc\r\n" + chunked(4) + b"defg\r\n" + chunked(0) + b"\r\n"
        head = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        outcome, _, _ = deliver(sending(head + body))
        assert (outcome.status, outcome.error, outcome.excerpt) == (202, None, b"abcdefg")

    def test_an_endless_chunked_body_is_read_only_up_to_the_cap(self) -> None:
        outcome, _, elapsed = deliver(endless_chunks, timeout=10.0, max_response_bytes=2500)
        expected = b"\x00" * 1000 + b"\x01" * 1000 + b"\x02" * 500
        assert (outcome.status, outcome.error, outcome.excerpt) == (200, None, expected)
        assert elapsed < 3.0

    @pytest.mark.parametrize(
        "raw",
        [
            b"",  # hangs up without a word
            b"HTTP/1.1 200 OK\r\nContent-Le",  # hangs up in the middle of the head
            b"HTTP/1.1 100 Continue\r\n\r\n",  # hangs up after an interim response
        ],
    )
    def test_a_server_that_hangs_up_without_answering_is_a_protocol_error(self, raw: bytes) -> None:
        outcome, receiver, _ = deliver(sending(raw))
        assert (outcome.status, outcome.error, outcome.excerpt) == (None, "protocol error", b"")
        assert len(receiver.requests) == 1

    def test_a_body_cut_short_keeps_the_status(self) -> None:
        outcome, _, _ = deliver(sending(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\npartial"))
        assert (outcome.status, outcome.error, outcome.excerpt) == (
            500,
            "protocol error",
            b"partial",
        )

    @pytest.mark.parametrize(
        "raw",
        [
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        ],
    )
    def test_a_response_that_is_not_valid_http_is_a_protocol_error(self, raw: bytes) -> None:
        outcome, _, _ = deliver(sending(raw))
        assert outcome.error == "protocol error"

    def test_interim_responses_before_the_final_answer_are_skipped(self) -> None:
        interim = (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        )
        outcome, receiver, _ = deliver(sending(interim + reply(201, b"made", {"Retry-After": "5"})))
        assert (outcome.status, outcome.error, outcome.excerpt) == (201, None, b"made")
        assert outcome.retry_after == 5.0
        assert len(receiver.requests) == 1

    def test_repeated_retry_after_headers_are_not_trusted(self) -> None:
        busy = sending(
            b"HTTP/1.1 503 Busy\r\nRetry-After: 5\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n"
        )
        outcome, _, _ = deliver(busy)
        assert (outcome.status, outcome.retry_after) == (503, None)

    def test_the_connection_is_closed_by_the_request_not_the_caller(self) -> None:
        async def scenario() -> Receiver:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url(),
                    b"{}",
                    {"Connection": "keep-alive", "Transfer-Encoding": "chunked"},
                    allow_private=True,
                    require_https=False,
                )
                assert (outcome.status, outcome.error) == (200, None)
            return receiver

        [request] = asyncio.run(scenario()).requests
        assert request.headers["connection"] == "close"
        assert "transfer-encoding" not in request.headers
        assert request.header_names.count("connection") == 1

    @pytest.mark.parametrize(
        "headers",
        [
            {"X-Evil": "a\r\nX-Injected: 1"},
            {"X-Evil": "a\nX-Injected: 1"},
            {"X-Evil\r\nX-Injected": "1"},
            {"Bad Name": "1"},
            {"X-Name": "Zoë"},
        ],
    )
    def test_an_invalid_caller_header_is_refused_before_connecting(
        self, headers: dict[str, str]
    ) -> None:
        async def scenario() -> tuple[Outcome, Receiver]:
            async with Receiver() as receiver:
                outcome = await send(
                    receiver.url(), b"{}", headers, allow_private=True, require_https=False
                )
            return outcome, receiver

        outcome, receiver = asyncio.run(scenario())
        assert (outcome.status, outcome.error) == (None, "protocol error")
        assert receiver.connections == 0


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    directory: Path

    def server_context(self, name: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("Test CA", ca_key, "Test CA", ca_key, ca=True)
    for name in ("hooks.example", "other.example"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, "Test CA", ca_key, ca=False)
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return Pki(ca_cert.public_bytes(serialization.Encoding.PEM), directory)


class TestSendTls:
    @pytest.fixture(autouse=True)
    def trust_test_ca(self, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
        context = pki.client_context()
        monkeypatch.setattr(outbound, "_ssl_context", lambda: context)

    def _deliver(
        self, server_context: ssl.SSLContext, url_host: str = "hooks.example"
    ) -> tuple[Outcome, Receiver, list[str | None]]:
        server_names: list[str | None] = []
        server_context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)

        async def scenario() -> tuple[Outcome, Receiver]:
            async with Receiver(ssl_context=server_context) as receiver:
                outcome = await send(
                    receiver.url(host=url_host, scheme="https"),
                    b"{}",
                    {},
                    allow_private=True,
                    require_https=True,
                )
            return outcome, receiver

        outcome, receiver = asyncio.run(scenario())
        return outcome, receiver, server_names

    def test_tls_names_and_verifies_the_original_host_while_connecting_to_the_checked_ip(
        self, pki: Pki, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        resolver = fake_dns(hooks_example=[["127.0.0.1"], ["127.0.0.2"]])
        outcome, receiver, server_names = self._deliver(pki.server_context("hooks.example"))
        assert (outcome.status, outcome.error) == (200, None)
        assert server_names == ["hooks.example"]
        assert receiver.requests[0].headers["host"] == f"hooks.example:{receiver.port}"
        assert resolver.lookups == {"hooks.example": 1}

    def test_a_certificate_for_another_name_is_a_tls_error_and_nothing_is_sent(
        self, pki: Pki, fake_dns: Callable[..., FakeResolver]
    ) -> None:
        fake_dns(hooks_example=[["127.0.0.1"]])
        outcome, receiver, _ = self._deliver(pki.server_context("other.example"))
        assert (outcome.status, outcome.error) == (None, "tls error")
        assert receiver.requests == []

    @pytest.mark.parametrize(
        ("respond", "options", "expected"),
        [
            (endless_chunks, {"max_response_bytes": 1500}, (200, None)),
            (stall, {"timeout": 0.3}, (None, "timeout")),
            (trickle, {"timeout": 0.5}, (200, "timeout")),
        ],
    )
    def test_a_tls_exchange_cut_off_by_the_cap_or_the_deadline_ends_promptly(
        self,
        pki: Pki,
        fake_dns: Callable[..., FakeResolver],
        respond: Respond,
        options: dict[str, Any],
        expected: tuple[int | None, str | None],
    ) -> None:
        fake_dns(hooks_example=[["127.0.0.1"]])

        async def scenario() -> Outcome:
            context = pki.server_context("hooks.example")
            async with Receiver(respond, ssl_context=context) as receiver:
                return await send(
                    receiver.url(host="hooks.example", scheme="https"),
                    b"{}",
                    {},
                    allow_private=True,
                    require_https=True,
                    **options,
                )

        started = time.monotonic()
        outcome = asyncio.run(scenario())
        assert (outcome.status, outcome.error) == expected
        assert time.monotonic() - started < 3.0

    @pytest.mark.parametrize("timeout", [0.3, 10.0])
    def test_a_peer_that_ignores_the_tls_goodbye_does_not_spoil_a_complete_answer(
        self, pki: Pki, fake_dns: Callable[..., FakeResolver], timeout: float
    ) -> None:
        # the answer is complete, but the server neither closes nor reads our close_notify
        async def answer_and_linger(
            receiver: Receiver, _request: Received, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(reply(200, b"ok"))
            await writer.drain()
            writer.transport.pause_reading()
            await receiver.release.wait()

        fake_dns(hooks_example=[["127.0.0.1"]])

        async def scenario() -> Outcome:
            context = pki.server_context("hooks.example")
            async with Receiver(answer_and_linger, ssl_context=context) as receiver:
                return await send(
                    receiver.url(host="hooks.example", scheme="https"),
                    b"{}",
                    {},
                    allow_private=True,
                    require_https=True,
                    timeout=timeout,
                )

        started = time.monotonic()
        outcome = asyncio.run(scenario())
        assert (outcome.status, outcome.error, outcome.excerpt) == (200, None, b"ok")
        assert time.monotonic() - started < 2.0

    def test_an_ip_literal_is_verified_against_the_ip(self, pki: Pki) -> None:
        # the test certificates name hosts, not 127.0.0.1, so verification must fail
        outcome, receiver, _ = self._deliver(pki.server_context("hooks.example"), "127.0.0.1")
        assert (outcome.status, outcome.error) == (None, "tls error")
        assert receiver.requests == []

    def test_plain_http_to_a_tls_port_is_refused_when_https_is_required(self) -> None:
        outcome = asyncio.run(
            send("http://127.0.0.1:1/", b"", {}, allow_private=True, require_https=True)
        )
        assert outcome.error == "unsafe target: URL scheme must be https"


# --------------------------------------------------------------------------- Retry-After

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC).timestamp()


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, None),
            ("", None),
            ("120", 120.0),
            (" 7 ", 7.0),
            ("0", 0.0),
            ("-5", None),
            ("9" * 400, None),
            ("Thu, 01 Jan 99999 12:00:00 GMT", None),
            ("1.5", None),
            ("1e3", None),
            ("inf", None),
            ("nan", None),
            ("soon", None),
            ("Thu, 01 Jan 2026 12:01:30 GMT", 90.0),  # IMF-fixdate
            ("Thursday, 01-Jan-26 12:01:30 GMT", 90.0),  # RFC 850
            ("Thu Jan  1 12:01:30 2026", 90.0),  # asctime
            ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),  # in the past: no wait
            ("Thu, 32 Jan 2026 12:00:00 GMT", None),
        ],
    )
    def test_values(self, value: str | None, expected: float | None) -> None:
        assert parse_retry_after(value, now=NOW) == expected
