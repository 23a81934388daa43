"""The network layer: the only package that touches aiohttp.

Politeness is part of it, not a sleep in a loop, and so is safety. One job per module:

- ``guard``: the address guard (SSRF) and the resolver that applies it after DNS;
- ``politeness``: the per-host limiter and its leases, the engines' token bucket, Retry-After
  and backoff;
- ``robots``: robots.txt per host, cached;
- ``client``: the shared aiohttp session, hand-followed redirects, streamed and checked bodies,
  exceptions mapped to reasons.
"""

from carcrawl.net.client import (
    REDIRECT_CODES,
    RETRYABLE_CODES,
    HttpClient,
    PageResponse,
    classify_exception,
    host_key,
)
from carcrawl.net.guard import AddressGuard, BlockedAddressError, GuardedResolver, literal_ip
from carcrawl.net.politeness import HostLimiter, Lease, TokenBucket, backoff_delay, parse_retry_after
from carcrawl.net.robots import RobotsCache

__all__ = [
    "REDIRECT_CODES",
    "RETRYABLE_CODES",
    "AddressGuard",
    "BlockedAddressError",
    "GuardedResolver",
    "HostLimiter",
    "HttpClient",
    "Lease",
    "PageResponse",
    "RobotsCache",
    "TokenBucket",
    "backoff_delay",
    "classify_exception",
    "host_key",
    "literal_ip",
    "parse_retry_after",
]
