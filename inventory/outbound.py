"""Requests the service makes to URLs its clients give (webhook receivers): to public addresses
only, checked on the very address connected to, bounded in time, redirects not followed.

A URL a client gives could otherwise make the service reach what only the service can reach:
its own loopback, the private network beside it, a cloud's metadata service (server-side
request forgery). So the host must resolve only to public addresses. The rule is checked when
a webhook is made and again at every request, on the addresses resolved then, and the
connection goes to the address that was checked, never to a second lookup of the name: a name
that resolves to a public address for the check and a private one for the connection (DNS
rebinding) reaches nothing. WEBHOOKS_ALLOW_PRIVATE lifts the rule, and allows http://, for
tests and closed networks.

Address classes are the IANA special-purpose registries' (RFC 6890 and its updates), as the
standard library's ipaddress module knows them, with what the Python in use gets wrong or
leaves out written here (multicast counted as global before Python 3.11.10, shared address
space, addresses embedding an IPv4 one).
"""

import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import re
import socket
import threading
import time
import unicodedata
from urllib.parse import urlsplit

import idna
import urllib3
from urllib3 import connection as urllib3_connection
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from inventory.errors import WebhookUrlRefused

URL_MAX_LENGTH = 2000
TIMEOUT_SECONDS = 10.0  # a whole request: resolving, connecting, sending, the answer
CONNECT_TIMEOUT_SECONDS = 5.0
EXCERPT_CHARS = 200  # of a refusing receiver's body, kept in the delivery's log
USER_AGENT = "inventory-webhooks/1.0"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Reachable only from inside a cloud, and answering there with its credentials. Most lie in a
# class refused anyway (link-local, unique-local, shared); Azure's is a public address.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: an IPv4 address in its low bits
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a URL points: what to connect to and what to say once connected."""

    scheme: str  # "https", or "http" where private addresses are allowed
    host: str  # a name in ASCII (IDNA), or an IP address without brackets
    port: int
    path: str  # the request target: path and query
    host_header: str  # as the URL spells host and port
    address: IPAddress | None  # the host, when the URL gives an IP address


@dataclasses.dataclass(frozen=True)
class Answer:
    """What became of one request: the receiver's status, or why there is none."""

    status: int | None
    error: str | None  # a short reason, or an excerpt of a refusing receiver's body
    seconds: float


class Unreachable(Exception):
    """The request could not be made (the host does not resolve, in time or at all)."""


def address_refusal(address: IPAddress) -> str | None:
    """Why the service must not connect to `address`, or None when it is a public address
    (globally reachable, RFC 6890). An IPv6 address that embeds an IPv4 one (IPv4-mapped,
    6to4, NAT64's well-known prefix) is judged by the IPv4 address it leads to."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            refusal = address_refusal(embedded)
            return None if refusal is None else f"{refusal} (inside {address})"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "an address that is not globally reachable"
    return None


def check_addresses(host: str, addresses: list[IPAddress]) -> None:
    """Raise WebhookUrlRefused unless every address the host has is public."""
    for address in addresses:
        refusal = address_refusal(address)
        if refusal is None:
            continue
        if host == str(address):
            raise WebhookUrlRefused(f"url: {host} is {refusal}")
        raise WebhookUrlRefused(f"url: {host} resolves to {address}, {refusal}")


def parse_url(url: object, *, allow_private: bool) -> Target:
    """The target of a webhook URL, or WebhookUrlRefused. https with a host (a DNS name, or an
    IP address written canonically) and no credentials or fragment; http too when private
    addresses are allowed. An IP address given in the URL is checked here; a name is checked
    once it is resolved (`resolve`)."""
    if not isinstance(url, str):
        raise WebhookUrlRefused("url must be a string")
    if len(url) > URL_MAX_LENGTH:
        raise WebhookUrlRefused(f"url must be at most {URL_MAX_LENGTH} characters")
    if any(char.isspace() or unicodedata.category(char) in ("Cc", "Cs") for char in url):
        raise WebhookUrlRefused("url must not contain white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"url is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_private and scheme == "http"):
        raise WebhookUrlRefused("url must be https" + (" (or http)" if allow_private else ""))
    if "@" in parts.netloc:
        raise WebhookUrlRefused("url must not carry credentials")
    if parts.fragment or url.endswith("#"):
        raise WebhookUrlRefused("url must not have a fragment")
    if not parts.hostname:
        raise WebhookUrlRefused("url must name a host")
    if port == 0:
        raise WebhookUrlRefused("url has an invalid port")
    target = parts.path or "/"
    if parts.query or url.endswith("?"):
        target += "?" + parts.query
    if not target.isascii():
        raise WebhookUrlRefused("url's path and query must be ASCII (percent-encode the rest)")
    host, address = _host(parts.hostname, bracketed=parts.netloc.startswith("["))
    if address is not None and not allow_private:
        check_addresses(host, [address])
    default_port = 443 if scheme == "https" else 80
    spelled = f"[{host}]" if isinstance(address, ipaddress.IPv6Address) else host
    host_header = spelled if port in (None, default_port) else f"{spelled}:{port}"
    return Target(scheme, host, port or default_port, target, host_header, address)


def _host(hostname: str, *, bracketed: bool) -> tuple[str, IPAddress | None]:
    """A URL's host as a name in ASCII or an IP address. An IP address in any other spelling
    than the canonical one (2130706433, 0x7f.1, 127.1: names whose last label is a number) is
    refused, as no name ends in a number (the WHATWG URL standard reads those as IPv4)."""
    if bracketed:
        try:
            return hostname, ipaddress.IPv6Address(hostname)
        except ValueError as exc:
            raise WebhookUrlRefused("url has a malformed IPv6 address") from exc
    try:
        address = ipaddress.IPv4Address(hostname)
    except ValueError:
        address = None
    if address is not None:
        return str(address), address
    try:
        name = hostname if hostname.isascii() else idna.encode(hostname, uts46=True).decode()
    except idna.IDNAError as exc:
        raise WebhookUrlRefused("url's host is not a valid name") from exc
    labels = name.lower().removesuffix(".").split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise WebhookUrlRefused("url's host is not a valid name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise WebhookUrlRefused("url's host must be a name or an IPv4 address in dotted decimal")
    return name.lower(), None


_resolver: concurrent.futures.ThreadPoolExecutor | None = None
_resolver_lock = threading.Lock()


def resolve(host: str, port: int, *, timeout: float) -> list[IPAddress]:
    """Every address of `host`, in the system resolver's order of preference, or Unreachable.
    The system resolver has no timeout of its own to give: it runs in a helper thread, and a
    lookup that takes longer than `timeout` seconds is given up (the thread finishes it)."""
    global _resolver
    with _resolver_lock:
        if _resolver is None:
            _resolver = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="resolve")
    future = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        found = future.result(timeout=max(timeout, 0.001))
    except concurrent.futures.TimeoutError as exc:
        future.cancel()
        raise Unreachable(f"{host} did not resolve within {timeout:g} s") from exc
    except (OSError, UnicodeError) as exc:
        raise Unreachable(f"{host} does not resolve") from exc
    addresses = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unreachable(f"{host} does not resolve")
    return addresses


def check_url(url: object, *, allow_private: bool, timeout: float = CONNECT_TIMEOUT_SECONDS) -> Target:
    """parse_url, then the host's addresses resolved and checked (unless private addresses are
    allowed). Raises WebhookUrlRefused, also for a name that does not resolve."""
    target = parse_url(url, allow_private=allow_private)
    if target.address is None and not allow_private:
        try:
            addresses = resolve(target.host, target.port, timeout=timeout)
        except Unreachable as exc:
            raise WebhookUrlRefused(f"url: {exc}") from exc
        check_addresses(target.host, addresses)
    return target


def post(url: str, *, body: bytes, headers: dict[str, str], allow_private: bool) -> Answer:
    """POST `body` to `url`, once, within TIMEOUT_SECONDS in all. Never raises for what the
    receiver does or fails to do: the Answer says it. The host is resolved and its addresses
    checked now; the connection goes to the first of them, with the name given for TLS (SNI
    and the certificate's check) and in the Host header. A redirect is an answer like any
    other: not followed."""
    started = time.monotonic()
    deadline = started + TIMEOUT_SECONDS

    def answer(status: int | None, error: str | None) -> Answer:
        return Answer(status, None if error is None else error[:250], time.monotonic() - started)

    try:
        target = parse_url(url, allow_private=allow_private)
        addresses = [target.address] if target.address is not None else None
        if addresses is None:
            addresses = resolve(target.host, target.port, timeout=deadline - time.monotonic())
        if not allow_private:
            check_addresses(target.host, addresses)
    except WebhookUrlRefused as exc:
        return answer(None, f"refused: {exc.message.removeprefix('url: ')}")
    except Unreachable as exc:
        return answer(None, str(exc))
    try:
        status, error = _send(target, addresses[0], body, headers, deadline)
    except Exception as exc:  # what a receiver does must never stop delivery to the others
        timed_out = time.monotonic() >= deadline
        return answer(None, f"no answer within {TIMEOUT_SECONDS:g} s" if timed_out else _reason(exc))
    if status is not None and 200 <= status < 300 and time.monotonic() > deadline:
        return answer(status, f"answered after {TIMEOUT_SECONDS:g} s")
    return answer(status, error)


def _send(
    target: Target, address: IPAddress, body: bytes, headers: dict[str, str], deadline: float
) -> tuple[int, str | None]:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    options = {}
    if target.scheme == "https":
        pool_class = _HTTPSPool
        name = None if target.address is not None else target.host  # no SNI for an IP address
        options = {"server_hostname": name, "assert_hostname": target.host}
    else:
        pool_class = _HTTPPool
    watchdog = _Watchdog(deadline)
    pool = None
    try:
        pool = pool_class(
            host=str(address),
            port=target.port,
            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_SECONDS, left), total=left),
            retries=False,
            maxsize=1,
            watchdog=watchdog,
            **options,
        )
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header, "User-Agent": USER_AGENT},
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
        )
        try:
            if 200 <= response.status < 300:
                return response.status, None
            if 300 <= response.status < 400:
                return response.status, "redirects are not followed"
            return response.status, _excerpt(response.read(EXCERPT_CHARS * 4)) or None
        finally:
            response.close()
    finally:
        watchdog.cancel()
        if pool is not None:
            pool.close()


def _excerpt(raw: bytes) -> str:
    """The start of a receiver's body as one line of at most EXCERPT_CHARS characters."""
    text = raw.decode("utf-8", errors="replace")
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Cs") else char for char in text)
    return " ".join(text.split())[:EXCERPT_CHARS]


def _reason(exc: Exception) -> str:
    """A short reason for a failed request, without the receiver's words."""
    # urllib3's NewConnectionError is a ConnectTimeoutError too (for compatibility): first.
    if isinstance(exc, NameResolutionError):
        return "does not resolve"
    if isinstance(exc, NewConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"cannot connect: {getattr(cause, 'strerror', None) or 'connection failed'}"
    if isinstance(exc, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(exc, ReadTimeoutError):
        return "read timeout"
    if isinstance(exc, SSLError):
        cause = exc.__cause__ or exc.__context__ or exc
        return f"TLS: {getattr(cause, 'reason', None) or type(cause).__name__}"
    if isinstance(exc, ProtocolError):
        return "connection broken"
    return f"request failed: {type(exc).__name__}"


class _Watchdog:
    """Ends a request at its deadline: a socket's own timeout bounds each read, not a whole
    answer a receiver drips out a byte at a time. Shutting the socket down wakes whatever
    waits on it."""

    def __init__(self, deadline: float):
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._fired = False
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self._fired
        if fired:
            self._shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(urllib3_connection.HTTPConnection):
    def __init__(self, *args, watchdog: _Watchdog, **kwargs):
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._watchdog.watch(sock)
        return sock


class _WatchedHTTPSConnection(urllib3_connection.HTTPSConnection):
    def __init__(self, *args, watchdog: _Watchdog, **kwargs):
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # the TCP socket, before TLS: the handshake is watched too
        self._watchdog.watch(sock)
        return sock


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection
