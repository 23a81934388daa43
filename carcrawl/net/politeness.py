"""Politeness: a per-host limiter (concurrency cap and a minimum interval between request
starts), leases, the search engines' token bucket, ``Retry-After`` parsing and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time


class HostLimiter:
    """Per host: at most ``cap`` transfers at once, request starts at least ``interval`` apart.

    A download *leases* its host for the whole transfer (that is the concurrency cap); each request
    it makes (robots.txt, each redirect hop) is *paced* (that is the interval). State for idle hosts
    is dropped, so a crawl over a million hosts keeps only the active ones in memory."""

    def __init__(self, cap: int, interval: float):
        self.cap = cap
        self.interval = interval
        self._active: dict[str, int] = {}
        self._next: dict[str, float] = {}
        self._changed = asyncio.Event()

    def try_lease(self, host: str) -> float:
        """Lease ``host`` now and return 0.0, or return how long to wait (``inf``: at its cap)."""
        if self._active.get(host, 0) >= self.cap:
            return math.inf
        now = time.monotonic()
        wait = self._next.get(host, 0.0) - now
        if wait > 0:
            return wait
        self._active[host] = self._active.get(host, 0) + 1
        self._next[host] = now + self.interval
        return 0.0

    async def lease(self, host: str) -> None:
        while (wait := self.try_lease(host)) > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(wait, 1.0))

    async def pace(self, host: str) -> None:
        """Wait until ``host`` may see another request start (caller holds a lease)."""
        while (wait := self._next.get(host, 0.0) - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        self._next[host] = time.monotonic() + self.interval

    def release(self, host: str) -> None:
        n = self._active.get(host, 0) - 1
        if n > 0:
            self._active[host] = n
        else:
            self._active.pop(host, None)
            if self._next.get(host, 0.0) <= time.monotonic():
                self._next.pop(host, None)
        if len(self._next) > 4 * max(len(self._active), 1024):
            now = time.monotonic()
            for h in [h for h, t in self._next.items() if t <= now and h not in self._active]:
                del self._next[h]
        self._changed.set()


class Lease:
    """A download's hold on one host: the lease itself counted as the first request start; every
    later request under it (after robots.txt, a redirect to the same host) waits for the interval."""

    __slots__ = ("limiter", "host", "fresh")

    def __init__(self, limiter: HostLimiter, host: str):
        self.limiter = limiter
        self.host = host
        self.fresh = True

    async def before_request(self) -> None:
        if self.fresh:
            self.fresh = False
        else:
            await self.limiter.pace(self.host)

    def release(self) -> None:
        self.limiter.release(self.host)


class TokenBucket:
    """Requests per second with a burst, plus jitter; used for search engines, which punish bursts.
    ``pause(seconds)`` stops the whole bucket (a block page backs off the entire engine)."""

    def __init__(self, rate: float, burst: int = 1, jitter: float = 0.2):
        self.rate = rate
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.jitter = jitter
        self.updated = time.monotonic()
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self.tokens = 0.0

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait = (1.0 - self.tokens) / self.rate
                await asyncio.sleep(wait * (1.0 + random.uniform(0, self.jitter)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    delay = random.uniform(0, min(cap, base * (2**attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
