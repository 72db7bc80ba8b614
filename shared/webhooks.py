"""Webhook targets: refuse any URL that could reach the farm's own services or a private network.

Checked when a job is submitted and again right before delivery, since DNS can change in between.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from shared.config import Settings
from shared.errors import BadRequest

MAX_URL_CHARS = 2000


def _addresses(host: str, port: int) -> set[tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return set()
    return {(str(info[4][0]), port) for info in infos}


def _endpoint(url: str, default_port: int) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port or default_port
    except ValueError:
        return None
    return parts.hostname, port


def internal_endpoints(settings: Settings) -> set[tuple[str, int]]:
    """Every address and port the farm itself talks to or serves on."""
    endpoints = [
        _endpoint(settings.resolved_database_url(), 5432),
        _endpoint(settings.broker_url, 6379),
        _endpoint(settings.s3_endpoint_url, 443 if settings.s3_endpoint_url.startswith("https") else 80),
        (settings.host, settings.port),
        ("127.0.0.1", settings.port),
    ]
    found: set[tuple[str, int]] = set()
    for endpoint in endpoints:
        if endpoint is not None:
            found |= _addresses(*endpoint)
    return found


def check_webhook_url(url: str, settings: Settings) -> str:
    """Return the URL when it is a safe delivery target, else raise `BadRequest` saying why."""
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"webhook_url is longer than {MAX_URL_CHARS} characters", code="invalid_webhook_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("webhook_url must be an http or https URL with a host", code="invalid_webhook_url")
    if parts.username or parts.password:
        raise BadRequest("webhook_url must not carry credentials", code="invalid_webhook_url")
    endpoint = _endpoint(url, 443 if parts.scheme == "https" else 80)
    if endpoint is None:
        raise BadRequest("webhook_url has an invalid port", code="invalid_webhook_url")
    addresses = _addresses(*endpoint)
    if not addresses:
        raise BadRequest(f"webhook host {parts.hostname!r} does not resolve", code="webhook_unresolvable")
    internal = internal_endpoints(settings)
    for address, port in addresses:
        if (address, port) in internal:
            raise BadRequest("webhook_url points at one of the farm's own services", code="webhook_forbidden")
        ip = ipaddress.ip_address(address.split("%")[0])
        public = ip.is_global and not ip.is_multicast
        if not public and not settings.webhook_allow_private:
            raise BadRequest(f"webhook_url resolves to a non-public address ({ip})", code="webhook_forbidden")
    return url
