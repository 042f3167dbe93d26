"""Where a destination URL may connect: public addresses only (no loopback, private, link-local
or cloud-metadata ones), checked on saving and again on every connection, so a name that
resolves elsewhere later (DNS rebinding) still cannot reach inside. Pure, apart from DNS."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

URL_MAX = 2048
# Cloud metadata services (AWS, GCP, Azure, Alibaba, Oracle …): link-local or ULA, named
# here so the refusal says what it is.
METADATA = {ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """The URL may not be used, and why (safe to show: it names only the URL's host)."""


def why_blocked(ip: IpAddress) -> str | None:
    """Why no destination may connect to `ip`, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    for test, what in ((ip.is_loopback, "a loopback address"),
                       (ip.is_link_local, "a link-local address"),
                       (ip.is_unspecified, "the unspecified address"),
                       (ip.is_multicast, "a multicast address"),
                       (ip.is_private, "a private address"),
                       (ip.is_reserved, "a reserved address")):
        if test:
            return what
    if not ip.is_global:
        return "not a public address"
    return None


def check_url(url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a destination URL anyone may set, or Refused saying why."""
    if not isinstance(url, str) or not url or len(url) > URL_MAX:
        raise Refused(f"url must be a string of 1..{URL_MAX} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"url is not a valid URL ({exc})") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise Refused("url must start with https:// (plain http:// only with "
                      "ALLOW_PRIVATE_DESTINATIONS=1, for development)")
    if not parts.hostname:
        raise Refused("url has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("url must not carry a user name or password")
    if parts.fragment:
        raise Refused("url must not have a #fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def public_address(host: str, port: int) -> str:
    """The address to connect to for `host`: every address it resolves to must be public
    (one private answer among public ones refuses it, or a rebinding could pick it)."""
    try:
        literal: IpAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise Refused(f"host {host} does not resolve ({exc.__class__.__name__})") from None
        found = [ipaddress.ip_address(info[4][0]) for info in infos]
    for ip in found:
        why = why_blocked(ip)
        if why is not None:
            where = host if literal is not None else f"{host} resolves to {ip}, which"
            raise Refused(f"{where} is {why}: destinations must be public")
    if not found:
        raise Refused(f"host {host} has no address")
    return str(found[0])
