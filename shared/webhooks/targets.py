"""Webhook targets: parse a URL, resolve its host once, and refuse every address a delivery must never reach.

The API checks a URL when a job is submitted; the webhook worker checks it again right before each attempt (DNS
can change in between) and then connects to exactly the address it checked (worker/webhooks/deliver.py), so a name that
answers a public address to the check and a private one to the connection cannot steer the farm inward.

A refusal names the URL's host and the rule it broke, never the address a name resolved to: the answer goes to the
tenant (and into the delivery records it can list), and the farm's internal addresses are not theirs to map.
The API resolves before it opens a transaction, in a small pool of threads and within
`webhook_resolve_timeout_s` (`socket.getaddrinfo` itself has no timeout), so a slow or hanging name server holds
neither a database connection nor a request for long.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any
from urllib.parse import quote, urlsplit

import idna

from shared.config import Settings
from shared.errors import BadRequest, Unavailable

MAX_URL_CHARS = 2000
# Threads per process that resolve webhook hosts for the API at once; a hung lookup holds one until the system
# resolver gives up, and lookups past these wait their turn within the same timeout.
RESOLVER_THREADS = 4
# host, port -> every address the name resolves to, in the resolver's order.
Resolver = Callable[[str, int], list[str]]
Address = IPv4Address | IPv6Address

# IPv6 forms that embed or translate to an IPv4 address: where they lead is decided by a gateway, not by the
# checks below, so they are refused whatever the IPv4 inside.
_TRANSLATED = [
    (ip_network("64:ff9b::/96"), "NAT64"),
    (ip_network("64:ff9b:1::/48"), "NAT64"),
    (ip_network("2002::/16"), "6to4"),
    (ip_network("2001::/32"), "Teredo"),
    (ip_network("::/96"), "IPv4-compatible"),
    (ip_network("::ffff:0:0:0/96"), "IPv4-translated"),
]
# Never a webhook receiver, even on a trusted network: cloud metadata lives at link-local addresses.
_NEVER_V4 = [ip_network("0.0.0.0/8"), ip_network("169.254.0.0/16"), ip_network("224.0.0.0/3")]
_NEVER_V6 = [ip_network("fe80::/10"), ip_network("ff00::/8")]
# The URL characters left as they are; anything else (non-ASCII above all) is percent-encoded as UTF-8.
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"


class WebhookUnresolvable(BadRequest):
    """The host does not resolve: a client error at submission, possibly a passing DNS failure at delivery."""

    code = "webhook_unresolvable"


class WebhookResolveTimeout(Unavailable):
    """The host's name servers did not answer within `webhook_resolve_timeout_s`: perhaps a passing failure."""

    code = "webhook_resolve_timeout"


@dataclass(frozen=True)
class Target:
    """A checked delivery target: connect to `addresses[0]`, name `host` in the Host header and for TLS."""

    scheme: str
    host: str  # ASCII: IDNA-encoded name, or an IP literal without brackets
    port: int
    path: str  # path and query, percent-encoded
    addresses: tuple[str, ...]  # every address the host resolved to; all were checked

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver, asked once; raises `WebhookUnresolvable` when the name has no address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookUnresolvable(f"webhook host {host!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_webhook_url")


def parse_webhook_url(url: str) -> tuple[str, str, int, str]:
    """Scheme, ASCII host, port and encoded path of a webhook URL, or `BadRequest` saying what is wrong."""
    if len(url) > MAX_URL_CHARS:
        raise _invalid(f"webhook_url is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in url):
        raise _invalid("webhook_url must not contain spaces or control characters (percent-encode them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("webhook_url is not a valid URL (check the host and port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid("webhook_url must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _invalid("webhook_url must not carry credentials")
    if port == 0:
        raise _invalid("webhook_url has an invalid port")
    host = _ascii_host(parts.hostname, bracketed=parts.netloc.rpartition("@")[2].startswith("["))
    path = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        path += "?" + quote(parts.query, safe=_SAFE_QUERY)
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path


def _ascii_host(host: str, *, bracketed: bool) -> str:
    if bracketed:
        try:
            if "%" in host:
                raise ValueError(host)
            return str(IPv6Address(host))
        except ValueError:
            raise _invalid("webhook_url has an invalid IPv6 literal (zone ids are not accepted)") from None
    try:
        return str(IPv4Address(host))
    except ValueError:
        pass
    try:
        return idna.encode(host.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError:
        raise _invalid(f"webhook_url host {host!r} is not a valid host name") from None


def classify(address: Address) -> tuple[str, IPv4Address | IPv6Address]:
    """('public'|'private'|'never', the address a connection would really reach) for one resolved address.

    IPv4-mapped IPv6 addresses are judged (and connected to) as the IPv4 inside them.
    """
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return classify(address.ipv4_mapped)
        if address.is_loopback:
            return "private", address
        if address.is_unspecified or any(address in net for net in _NEVER_V6):
            return "never", address
        if any(address in net for net, _ in _TRANSLATED):
            return "never", address
    elif address.is_unspecified or address.is_reserved or any(address in net for net in _NEVER_V4):
        return "never", address
    if address.is_global and not address.is_multicast:
        return "public", address
    return "private", address


def _why_never(address: Address) -> str:
    """The rule an always-refused address breaks, in words that do not repeat the address."""
    for net, form in _TRANSLATED:
        if address in net:
            return f"a {form} address, which a gateway translates to IPv4"
    return "a link-local, multicast, unspecified or reserved address"


def farm_ports(settings: Settings) -> set[int]:
    """Every port the farm's own services use: database, broker, storage (every SeaweedFS listener), API."""
    ports = set(settings.webhook_blocked_ports) | {settings.port}
    for url in (settings.resolved_database_url(), settings.broker_url, settings.s3_endpoint_url):
        port = _url_port(url)
        if port is not None:
            ports.add(port)
    if settings.s3_public_endpoint_url:
        port = _url_port(settings.s3_public_endpoint_url)
        if port is not None:
            ports.add(port)
    # `voicefarm up` keeps the embedded SeaweedFS's master, volume, filer, admin and gRPC ports here.
    saved = settings.data_dir / "s3" / "ports.json"
    try:
        ports |= {int(port) for port in json.loads(saved.read_text()).values()}
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return ports


def _url_port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        if parts.hostname is None:
            return None
        return parts.port or {"https": 443, "http": 80, "redis": 6379, "rediss": 6379}.get(parts.scheme, 5432)
    except ValueError:
        return None


def farm_addresses(settings: Settings) -> set[Address]:
    """The addresses of the hosts the farm's services run on, this machine's own included."""
    hosts: set[str] = {settings.host, socket.gethostname()}
    for url in (settings.resolved_database_url(), settings.broker_url, settings.s3_endpoint_url):
        hosts.add(urlsplit(url).hostname or "")
    if settings.s3_public_endpoint_url:
        hosts.add(urlsplit(settings.s3_public_endpoint_url).hostname or "")
    found: set[Address] = set()
    for host in hosts - {""}:
        try:
            found |= {_normal(a) for a in resolve_host(host, 0)}
        except (BadRequest, ValueError):
            continue
    return found


def _normal(address: str) -> Address:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped else ip


def check_addresses(addresses: Iterable[str], port: int, settings: Settings, *, host: str) -> tuple[str, ...]:
    """The addresses as a connection should use them, or `BadRequest` when any one of them is refused.

    A refusal names `host` (as the URL wrote it, IDNA-encoded) and the rule, never a resolved address."""
    checked: list[str] = []
    own_ports, own_hosts = farm_ports(settings), farm_addresses(settings)
    for raw in addresses:
        try:
            kind, real = classify(ipaddress.ip_address(raw))
        except ValueError:
            raise BadRequest(
                f"webhook host {host!r} resolved to something that is not an address", code="webhook_forbidden"
            ) from None
        if kind == "never":
            raise BadRequest(f"webhook host {host!r} resolves to {_why_never(real)}", code="webhook_forbidden")
        if kind == "private" and not settings.webhook_allow_private:
            raise BadRequest(
                f"webhook host {host!r} resolves to a loopback or private address; webhooks go to public addresses",
                code="webhook_forbidden",
            )
        if port in own_ports and (kind == "private" or real in own_hosts):
            raise BadRequest(
                f"webhook host {host!r} port {port} is one of the farm's own services", code="webhook_forbidden"
            )
        checked.append(str(real))
    if not checked:
        raise WebhookUnresolvable(f"webhook host {host!r} has no address")
    return tuple(checked)


def resolve_target(url: str, settings: Settings, resolve: Resolver | None = None) -> Target:
    """Parse the URL, resolve its host once and check every address; raise `BadRequest` saying why not.

    `resolve` defaults to `resolve_host`, looked up when called (so a test may replace it)."""
    scheme, host, port, path = parse_webhook_url(url)
    addresses = check_addresses((resolve or resolve_host)(host, port), port, settings, host=host)
    return Target(scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def check_webhook_url(url: str, settings: Settings, resolve: Resolver | None = None) -> str:
    """Return the URL when it is a safe delivery target, else raise `BadRequest` saying why; within
    `webhook_resolve_timeout_s` (`resolve_target_within`). Call this before opening a transaction."""
    resolve_target_within(url, settings, resolve)
    return url


def resolve_target_within(url: str, settings: Settings, resolve: Resolver | None = None) -> Target:
    """`resolve_target`, with the lookups (the URL's host, the farm's own hosts) on one of `RESOLVER_THREADS` daemon
    threads, given up after `webhook_resolve_timeout_s` with `WebhookResolveTimeout` (503 at the API, a retried
    attempt at delivery): `socket.getaddrinfo` itself has no timeout."""
    host = parse_webhook_url(url)[1]  # a malformed URL is refused without a thread
    timeout = settings.webhook_resolve_timeout_s
    deadline = time.monotonic() + timeout
    late = WebhookResolveTimeout(f"webhook host {host!r} did not resolve within {timeout:g} s; try again later")
    # Lookups past the pool's size wait for a thread within the same timeout.
    if not _RESOLVER_SLOTS.acquire(timeout=timeout):
        raise late
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def lookup() -> None:
        try:
            outcome["target"] = resolve_target(url, settings, resolve)
        except BaseException as exc:  # handed to the caller, if it is still waiting
            outcome["error"] = exc
        finally:
            _RESOLVER_SLOTS.release()  # a hung lookup keeps its slot until the system resolver gives up
            done.set()

    threading.Thread(target=lookup, name="webhook-resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise late
    if "error" in outcome:
        raise outcome["error"]
    return outcome["target"]


# Threads per process that resolve webhook hosts (the API's checks, a webhook worker's deliveries).
_RESOLVER_SLOTS = threading.BoundedSemaphore(RESOLVER_THREADS)
