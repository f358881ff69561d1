"""One outbound webhook POST, sent only to an address that was checked to be public.

The URL is parsed once here; the host is resolved once, every resolved address is judged, and the
connection is made to a judged address (the original name travels only in the Host header and in
TLS SNI / certificate verification), so a second lookup cannot rebind the target. The exchange
is HTTP/1.1 framed and parsed by h11 over one asyncio connection per delivery: there is no
redirect or proxy machinery at all, and time, response head and response body are bounded.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import math
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TypeAlias
from urllib.parse import urlsplit

import h11
import httpx

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
_PORT = re.compile(r"[0-9]+")
_DELAY_SECONDS = re.compile(r"[0-9]+")
# Routing and framing are set here from what was checked and sent, never taken from the caller.
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "accept-encoding", "connection"}
)
# A response's status line and headers must fit here (h11 refuses a larger head); the body is
# read in chunks of _READ_SIZE, of which at most max_response_bytes are kept.
_MAX_RESPONSE_HEAD = 16 * 1024
_READ_SIZE = 64 * 1024
# How long closing a connection may take (TLS close_notify) before the socket is aborted.
_CLOSE_GRACE = 0.5

# Python's is_global counts multicast, 192.88.99.0/24 and (depending on the patch release)
# 192.0.0.0/24 as global, so the ranges that must never receive a webhook are listed here too.
_V4_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, home of cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",  # reserved, includes 255.255.255.255
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NOT_PUBLIC = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32
        "2001:db8::/32",
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_V6_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class UnsafeTarget(ValueError):
    """A webhook target that must not be contacted; the message is safe to show the subscriber."""


@dataclass(frozen=True, slots=True)
class Target:
    """A syntactically checked webhook URL, split into the parts the sender uses."""

    scheme: str
    host: str  # lower-case name or IP literal as written; IPv6 normalised, without brackets
    port: int
    path_with_query: str
    url: str

    @property
    def host_header(self) -> str:
        """The Host header value: the host, bracketed if IPv6, with any non-default port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery attempt produced; `error` is a short category, never response content."""

    status: int | None  # set whenever response headers arrived, even if the body then failed
    retry_after: float | None
    excerpt: bytes
    error: str | None
    duration_ms: int


def check_url(url: str, *, require_https: bool, allow_private: bool = False) -> Target:
    """Validate a webhook URL without touching the network; raise UnsafeTarget if it is unfit."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"URL is longer than {MAX_URL_LENGTH} characters")
    # Whitespace, control characters and backslashes are where URL parsers disagree (WHATWG reads
    # "\" as "/", urllib silently drops tabs), so none may appear and there is one reading.
    if not _PRINTABLE_ASCII.fullmatch(url) or "\\" in url:
        raise UnsafeTarget("URL must be printable ASCII without spaces or backslashes")
    if "#" in url:
        raise UnsafeTarget("URL must not have a fragment")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsafeTarget("URL is malformed") from None
    scheme = parts.scheme
    if require_https and scheme != "https":
        raise UnsafeTarget("URL scheme must be https")
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeTarget("URL scheme must be http or https")
    if "@" in parts.netloc:
        raise UnsafeTarget("URL must not contain a user name or password")
    host, port = _split_netloc(parts.netloc, _DEFAULT_PORTS[scheme])
    if not allow_private:
        literal = _numeric_address(host)
        if literal is not None and not is_public_address(literal):
            raise UnsafeTarget("URL host is not a public address")
    path_with_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=scheme, host=host, port=port, path_with_query=path_with_query, url=url)


def _split_netloc(netloc: str, default_port: int) -> tuple[str, int]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UnsafeTarget("URL is malformed")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if "%" in host:
            raise UnsafeTarget("IPv6 zone ids are not allowed")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise UnsafeTarget("URL host is not a valid IPv6 address") from None
    else:
        host, colon, port_text = netloc.partition(":")
        rest = colon + port_text
        host = host.lower()
        if not host:
            raise UnsafeTarget("URL has no host")
        if len(host) > 253 or not _HOST_NAME.fullmatch(host):
            raise UnsafeTarget("URL host is not a valid host name")
    if rest in {"", ":"}:
        return host, default_port
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
        raise UnsafeTarget("URL port is malformed")
    port = int(rest[1:])
    if not 1 <= port <= 65535:
        raise UnsafeTarget("URL port must be between 1 and 65535")
    return host, port


def _numeric_address(host: str) -> IPAddress | None:
    # AI_NUMERICHOST never queries DNS but accepts every numeric form the resolver does
    # (127.1, 0x7f.0.0.1, 2130706433, 017700000001, ...), so literals are judged as they resolve.
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, ValueError):  # ValueError covers UnicodeError from IDNA encoding
        return None
    for family, _, _, _, sockaddr in infos:
        if family in {socket.AF_INET, socket.AF_INET6}:
            return ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether `ip`, and any IPv4 address embedded in it, is public unicast space."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_global and not any(ip in net for net in _V4_NOT_PUBLIC)
    if ip.scope_id is not None:
        return False
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        if not is_public_address(embedded):
            return False
        if ip not in _V6_GLOBAL_UNICAST:
            return True  # mapped, translated or NAT64: the packets go to the embedded address
    return _is_public_v6(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _V6_IPV4_TRANSLATED or ip in _V6_NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _is_public_v6(ip: ipaddress.IPv6Address) -> bool:
    if ip in _V6_NAT64_LOCAL:
        return False  # local-use NAT64 (RFC 8215) places the IPv4 by a site-chosen prefix length
    if ip.teredo is not None:
        return False  # tunnels to an obfuscated client address; Teredo is never a webhook host
    # Only 2000::/3 is global unicast: this also refuses ::/8 (loopback, unspecified,
    # IPv4-compatible), ULA fc00::/7, link-local, site-local and multicast.
    if ip not in _V6_GLOBAL_UNICAST or any(ip in net for net in _V6_NOT_PUBLIC):
        return False
    return ip.is_global


async def resolve(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """Resolve `host` once; raise UnsafeTarget if nothing resolves or any address is not public."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in name:
        raise UnsafeTarget("IPv6 zone ids are not allowed")
    literal = _numeric_address(name)
    if literal is not None:
        # The resolver's own numeric parse gave the answer a lookup would; skip the thread hop.
        if not allow_private and not is_public_address(literal):
            raise UnsafeTarget("host resolves to a non-public address")
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):  # ValueError covers UnicodeError from IDNA encoding
        raise UnsafeTarget("host name does not resolve") from None
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in {socket.AF_INET, socket.AF_INET6}:
            continue
        if len(sockaddr) == 4 and sockaddr[3]:
            raise UnsafeTarget("IPv6 zone ids are not allowed")
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeTarget("host name does not resolve")
    # One bad answer refuses the host: a name that also resolves privately is an attack vector,
    # and the reason does not name the address, which could leak the subscriber's internal DNS.
    if not allow_private and not all(is_public_address(address) for address in addresses):
        raise UnsafeTarget("host resolves to a non-public address")
    return addresses


async def send(
    target_url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    require_https: bool,
    timeout: float = 10.0,
    max_response_bytes: int = 4096,
) -> Outcome:
    """POST `body` to `target_url` once, safely; network failures become an Outcome, never raise."""
    started = time.monotonic()
    progress = _Progress()
    try:
        target = check_url(target_url, require_https=require_https, allow_private=allow_private)
        # One deadline over resolution, connection, TLS, request and the capped read, so neither
        # a slow handshake nor a trickling server can hold a worker longer.
        async with asyncio.timeout(timeout):
            addresses = await resolve(target.host, target.port, allow_private=allow_private)
            await _exchange(target, addresses, body, headers, max_response_bytes, progress)
    except UnsafeTarget as exc:
        progress.error = f"unsafe target: {exc}"
    except TimeoutError:  # before OSError, of which it is a subclass
        if not progress.complete:  # else the deadline only cut short the closing handshake
            progress.error = "timeout"
    except _ConnectFailed as exc:
        progress.error = exc.category
    except h11.ProtocolError:
        progress.error = "protocol error"
    except OSError:  # includes ssl.SSLError after the handshake
        progress.error = "network error"
    return Outcome(
        status=progress.status,
        retry_after=progress.retry_after,
        excerpt=bytes(progress.excerpt),
        error=progress.error,
        duration_ms=round((time.monotonic() - started) * 1000),
    )


class _Progress:
    """What the exchange learnt so far, kept outside it so a timeout does not lose it."""

    __slots__ = ("complete", "error", "excerpt", "retry_after", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.retry_after: float | None = None
        self.excerpt = bytearray()
        self.complete = False  # the response was read to its end or to the cap
        self.error: str | None = None


class _ConnectFailed(Exception):
    """No checked address could be connected to; `category` is the Outcome's error."""

    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category


async def _exchange(
    target: Target,
    addresses: list[IPAddress],
    body: bytes,
    headers: Mapping[str, str],
    max_response_bytes: int,
    progress: _Progress,
) -> None:
    # h11 frames the request and parses the response; the I/O is ours. One connection per
    # delivery, never kept alive: a pool keyed by IP could hand a connection verified for one
    # host name to a request for another.
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_RESPONSE_HEAD)
    request = _request(connection, target, body, headers)  # refused before connecting
    reader, writer = await _connect(target, addresses)
    ended = False
    try:
        try:
            writer.write(request)
            await writer.drain()
        except ConnectionError:
            pass  # a server may answer early and hang up; whatever it said is read below
        ended = await _read_response(connection, reader, max_response_bytes, progress)
    finally:
        await _close(writer, graceful=ended)


def _request(
    connection: h11.Connection, target: Target, body: bytes, headers: Mapping[str, str]
) -> bytes:
    fields = [("Host", target.host_header)]
    fields += [(name, value) for name, value in headers.items() if name.lower() not in _OWN_HEADERS]
    fields += [
        ("Content-Length", str(len(body))),
        # Raw bytes are read and capped; asking for no content coding avoids decompression bombs.
        ("Accept-Encoding", "identity"),
        ("Connection", "close"),
    ]
    try:
        # h11 refuses header names and values that are not valid HTTP (no CR/LF injection).
        head = connection.send(
            h11.Request(method="POST", target=target.path_with_query, headers=fields)
        )
    except UnicodeEncodeError:
        raise h11.LocalProtocolError("request header is not ASCII") from None
    connection.send_with_data_passthrough(h11.Data(data=body))  # checks the body's length
    connection.send(h11.EndOfMessage())
    return (head or b"") + body


async def _connect(
    target: Target, addresses: list[IPAddress]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls_name: str | None = None
    if target.scheme == "https" and _numeric_address(target.host) is None:
        # The socket goes to the checked IP, but TLS names and verifies the original host.
        tls_name = target.host.rstrip(".")
    for index, address in enumerate(addresses):
        host = str(address)  # numeric: asyncio connects without any lookup
        try:
            if target.scheme != "https":
                return await asyncio.open_connection(host, target.port)
            return await asyncio.open_connection(
                host,
                target.port,
                ssl=_ssl_context(),
                server_hostname=tls_name or host,  # an IP literal is verified as that IP
                ssl_shutdown_timeout=_CLOSE_GRACE,
            )
        except TimeoutError:
            raise  # the kernel gave up connecting: a timeout, as for the total deadline
        except (OSError, ValueError) as exc:  # ValueError: a name the TLS layer cannot encode
            category = _connect_error(exc)
            # Like any client, try the next checked address when one cannot be reached, but
            # never after a TLS failure, which is about the host, not the address.
            if index + 1 < len(addresses) and category != "tls error":
                continue
            raise _ConnectFailed(category) from exc
    raise _ConnectFailed("connection failed")  # resolve never returns an empty list


async def _read_response(
    connection: h11.Connection,
    reader: asyncio.StreamReader,
    max_response_bytes: int,
    progress: _Progress,
) -> bool:
    """Read the status, Retry-After and up to the cap of the body; True if the body ended."""
    event = await _next_event(connection, reader)
    while isinstance(event, h11.InformationalResponse):  # 100 Continue and the like
        event = await _next_event(connection, reader)
    if not isinstance(event, h11.Response):
        raise h11.RemoteProtocolError("no response")
    progress.status = event.status_code
    retry_after = [value for name, value in event.headers if name == b"retry-after"]
    if retry_after:
        progress.retry_after = parse_retry_after(b", ".join(retry_after).decode("latin-1"))
    while len(progress.excerpt) < max_response_bytes:
        event = await _next_event(connection, reader)
        if isinstance(event, h11.EndOfMessage):
            progress.complete = True
            return True
        if not isinstance(event, h11.Data):
            raise h11.RemoteProtocolError("unexpected event in the response body")
        progress.excerpt += event.data[: max_response_bytes - len(progress.excerpt)]
    progress.complete = True
    return False  # the cap is reached: the rest of the body is left unread


async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        # h11 raises RemoteProtocolError on malformed input, on a head larger than
        # _MAX_RESPONSE_HEAD and on a peer that hangs up before the message is complete.
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(await reader.read(_READ_SIZE))


async def _close(writer: asyncio.StreamWriter, *, graceful: bool) -> None:
    # Closed on every path, within the send's deadline. After a response read to its end the
    # connection is shut down politely (TLS close_notify) within a short grace; after a read cut
    # off by the cap, an error or the deadline it is aborted at once, dropping what is unread.
    closed = False
    try:
        if graceful:
            writer.close()
        else:
            writer.transport.abort()
        async with asyncio.timeout(_CLOSE_GRACE):
            await writer.wait_closed()
        closed = True
    except (TimeoutError, OSError):
        pass  # the connection is being discarded; how it ended does not change the outcome
    finally:
        if not closed:
            writer.transport.abort()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or HTTP-date), or None if invalid."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        delay = float(value)
        return delay if math.isfinite(delay) else None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # asctime form has no zone; HTTP-dates are all GMT
        delay = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, delay)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle per delivery would dominate the cost of a send. httpx
    # builds it so that the trust store (certifi's bundle, no SSL_CERT_* from the environment)
    # stays what it always was; only HTTP/1.1 is offered.
    context = httpx.create_ssl_context(trust_env=False)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _connect_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):  # includes certificate verification failures
        return "tls error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno in {errno.EHOSTUNREACH, errno.ENETUNREACH}:
        return "host unreachable"
    return "connection failed"
