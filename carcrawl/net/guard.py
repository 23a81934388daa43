"""The address guard (SSRF): every hop of every request is checked against it, after DNS
resolution and for literal IPs, so a URL a stranger chose cannot reach this machine's loopback,
private network or cloud metadata service."""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult


class BlockedAddressError(OSError):
    """Raised by the resolver when every address of a host is in a blocked range."""


class AddressGuard:
    """Refuses loopback, private, link-local, multicast, reserved and other non-global targets,
    except networks the user (or the sandbox) allowed explicitly."""

    def __init__(self, allow_networks: list[str] | tuple[str, ...] = ()):
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def is_blocked(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            elif ip.sixtofour is not None:
                ip = ip.sixtofour
        if any(ip in net for net in self.allowed):
            return False
        return (
            not ip.is_global
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_private
        )


class GuardedResolver(AbstractResolver):
    """Wraps aiohttp's resolver and drops blocked addresses; all blocked → BlockedAddressError.

    Checking after resolution (not on the name) is what stops DNS names that point at 127.0.0.1."""

    def __init__(self, guard: AddressGuard):
        self._inner = aiohttp.ThreadedResolver()
        self._guard = guard

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not self._guard.is_blocked(r["host"])]
        if not allowed:
            raise BlockedAddressError(f"{host} resolves only to blocked addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def literal_ip(host: str) -> str | None:
    """The address a host that is an IP literal names, or ``None`` for a name. Also the legacy
    IPv4 spellings C libraries accept (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``), so
    they are refused as ``blocked_address`` like the dotted form, not let through to a parser."""
    h = host.strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return h
    if h[:1].isdigit() and all(c in "0123456789abcdefxABCDEFX." for c in h):
        try:
            return socket.inet_ntoa(socket.inet_aton(h))
        except OSError:
            return None
    return None
