"""Which hosts the image fetcher may talk to: no internal address, in any spelling.

A URL list (or a redirect in it) can be written by anyone, and the pipeline runs
inside someone's network: ``http://169.254.169.254/`` or ``http://127.1:8082/``
in the list must not be fetched and kept as an "image".  Refused, by default:
loopback, private (RFC 1918, ULA), shared (CGNAT), link-local (cloud metadata),
multicast, unspecified, reserved and every other non-global address, as Python's
``ipaddress`` classifies them, including IPv4 embedded in IPv6 (mapped, 6to4,
Teredo) - and the names ``localhost``, ``*.localhost`` and the metadata names.

Three places check, each where it can:

* ``refused_host`` on every URL and redirect hop, before any request: literal
  addresses in every spelling the C resolver accepts (``127.1``, ``0177.0.0.1``,
  ``0x7f000001``, ``2130706433``...) and the names above.  This is all a client
  can check through an HTTP proxy, which resolves names itself;
* ``PolicyConnectionMixin`` when urllib3 connects directly: the name is resolved
  once, every address it resolves to is checked, and the socket connects to that
  vetted address (so a DNS answer that changes between check and connect - DNS
  rebinding - has no window); the peer address is checked again once connected;
* connections to a configured proxy are not checked: the operator chose it.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from sampler.deadline import pool_classes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that mean "this machine" or a cloud's metadata service whatever DNS says.
_INTERNAL_NAMES = ("localhost", "localhost.localdomain", "metadata", "metadata.google.internal")
# What the C resolver (inet_aton) reads as an IPv4 address: 1-4 parts, decimal, octal or hex.
_LEGACY_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)


class RefusedAddress(Exception):
    """A connection to an internal address was refused; the message says which and why."""


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is internal ("loopback", "private"...), or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            inner = address_kind(embedded)
            if inner is not None:
                return f"{inner} (inside {ip})"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),  # 169.254.169.254: cloud metadata
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    )
    for kind, hit in checks:
        if hit:
            return kind
    if not ip.is_global:
        return "not global"  # 100.64.0.0/10 (CGNAT), documentation ranges...
    return None


def parse_literal(host: str) -> IPAddress | None:
    """The address a host *literal* stands for, in any spelling; None for a name."""
    text = host.strip("[]").split("%", 1)[0]  # IPv6 zone ids ("fe80::1%eth0") do not matter here
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text):
        try:
            # inet_aton is what getaddrinfo applies to such hosts: "127.1", "0x7f000001"...
            return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
        except OSError:
            return None
    return None


def refused_host(host: str) -> str | None:
    """Why a URL's host must not be fetched (a literal or name check, no DNS), or None."""
    name = host.strip().lower().rstrip(".")
    if name in _INTERNAL_NAMES or name.endswith(".localhost"):
        return f"host {host!r} names this machine or a metadata service"
    ip = parse_literal(name)
    if ip is not None:
        kind = address_kind(ip)
        if kind is not None:
            return f"host {host!r} is {ip}: {kind} address"
    return None


def check_address(host: str, address: str) -> None:
    """Raise RefusedAddress when ``address`` (what ``host`` resolved to) is internal."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    kind = address_kind(ip)
    if kind is not None:
        raise RefusedAddress(f"{host} resolves to {ip}: {kind} address")


class PolicyConnectionMixin:
    """Resolve, vet, then connect to the vetted address - unless talking to a proxy."""

    # urllib3's HTTPConnection, which this is mixed into, sets these.
    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        if getattr(self, "proxy", None) is not None:
            return super()._new_conn()  # type: ignore[misc]
        host, port = self._dns_host, self.port
        why = refused_host(host)
        if why is not None:
            raise RefusedAddress(why)
        try:
            infos = socket.getaddrinfo(host.rstrip(".") or host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return super()._new_conn()  # type: ignore[misc]  # let urllib3 report the DNS failure
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:  # any internal answer refuses the host
            check_address(host, address)
        self._dns_host = addresses[0]  # connect to exactly what was vetted
        try:
            sock = super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = host
        try:
            check_address(host, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock


POLICY_POOLS = pool_classes(PolicyConnectionMixin)
