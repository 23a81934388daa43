"""Politeness: a per-host limiter (concurrency cap and a minimum interval between request
starts), leases, the search engines' token bucket, ``Retry-After`` parsing and backoff."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import math
import random
import time


class HostLimiter:
    """Per host: at most ``cap`` transfers at once, request starts at least ``interval`` apart, and
    a pause when the host says it is overloaded (429/503, ``Retry-After``) that holds back every
    request to it, not only the URL that got the answer.

    A download *leases* its host for the whole transfer (that is the concurrency cap); each request
    it makes (robots.txt, each redirect hop) is *paced* (that is the interval). State for idle hosts
    is dropped, so a crawl over a million hosts keeps only the active ones in memory."""

    def __init__(self, cap: int, interval: float):
        self.cap = cap
        self.interval = interval
        self._active: dict[str, int] = {}
        self._next: dict[str, float] = {}
        self._paused: dict[str, float] = {}  # overloaded hosts: no request starts before this
        self._sent: dict[str, float] = {}  # when the last request to the host actually started
        self._strikes: dict[str, int] = {}  # consecutive overload answers, for backoff without Retry-After
        self._given_up: dict[str, str] = {}  # hosts abandoned for this run, and why
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}

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
        """Wait for a lease on ``host``. A waiter at the cap is woken by a release of *this* host
        only (one future per waiter), not by every release of every host."""
        while (wait := self.try_lease(host)) > 0:
            if wait == math.inf:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(host, collections.deque()).append(fut)
                try:
                    await fut
                except asyncio.CancelledError:
                    if fut.done() and not fut.cancelled():
                        self._wake_one(host)  # the release meant for this waiter goes to the next
                    raise
                finally:
                    q = self._waiters.get(host)
                    if q is not None:
                        with contextlib.suppress(ValueError):
                            q.remove(fut)
                        if not q:
                            del self._waiters[host]
            else:
                await asyncio.sleep(wait)

    async def pace(self, host: str) -> None:
        """Wait until ``host`` may see another request start (caller holds a lease, or must not
        take one: a robots.txt redirect to another host is paced there, never leased, so no
        download ever holds two leases)."""
        while (wait := self._next.get(host, 0.0) - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        self._next[host] = time.monotonic() + self.interval
        await self.sending(host)

    async def sending(self, host: str) -> None:
        """Called just before a request to ``host`` goes out: waits until ``interval`` after the
        previous one went out. Leases are granted ``interval`` apart, but a lease granted before a
        stall (a loaded machine deschedules the process, a slow connect) can go out late, right
        beside the next one; the server must see the gap between sends, not between grants.
        A pause (429/503) that began after this lease was granted holds it back too."""
        if self._paused:
            while (wait := self._paused.get(host, 0.0) - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self._paused.get(host, math.inf) <= time.monotonic():
                self._paused.pop(host, None)
        if self.interval <= 0:
            return
        while (wait := self._sent.get(host, -math.inf) + self.interval - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        self._sent[host] = time.monotonic()

    def started(self, host: str) -> None:
        """A request to ``host`` starts now: the next may start ``interval`` from now at the
        earliest (a lease stamps this when granted; the request re-stamps it when it leaves)."""
        until = time.monotonic() + self.interval
        if until > self._next.get(host, 0.0):
            self._next[host] = until

    def release(self, host: str) -> None:
        n = self._active.get(host, 0) - 1
        if n > 0:
            self._active[host] = n
        else:
            self._active.pop(host, None)
            if self._next.get(host, 0.0) <= time.monotonic():
                self._next.pop(host, None)
            if self._sent.get(host, -math.inf) + self.interval <= time.monotonic():
                self._sent.pop(host, None)
        if len(self._next) > 4 * max(len(self._active), 1024) or len(self._sent) > 4 * max(len(self._active), 1024):
            now = time.monotonic()
            for h in [h for h, t in self._next.items() if t <= now and h not in self._active]:
                del self._next[h]
            for h in [h for h, t in self._sent.items() if t + self.interval <= now and h not in self._active]:
                del self._sent[h]
        self._wake_one(host)

    def _wake_one(self, host: str) -> None:
        q = self._waiters.get(host)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    # -- overload (429/503) ------------------------------------------------------------------

    def pause(self, host: str, seconds: float) -> None:
        """No request to ``host`` starts for ``seconds`` (leases and paced requests alike)."""
        until = time.monotonic() + seconds
        if until > self._next.get(host, 0.0):
            self._next[host] = until
        if until > self._paused.get(host, 0.0):
            self._paused[host] = until
        if len(self._paused) > 10_000:  # bounded: forget pauses that are over
            now = time.monotonic()
            self._paused = {h: t for h, t in self._paused.items() if t > now}

    def overloaded(self, host: str, retry_after: float | None, base: float, cap: float) -> float:
        """The host answered 429/503: pause it (for ``Retry-After``, else an exponential backoff
        that grows with consecutive answers) and return the pause."""
        strikes = self._strikes.get(host, 0)
        self._strikes[host] = strikes + 1
        if len(self._strikes) > 100_000:  # bounded: forget the oldest
            self._strikes.pop(next(iter(self._strikes)))
        delay = retry_after if retry_after is not None else backoff_delay(strikes, base, cap)
        self.pause(host, delay)
        return delay

    def answered(self, host: str) -> None:
        """A normal answer: the host's backoff starts again from the bottom."""
        if self._strikes:
            self._strikes.pop(host, None)

    def give_up(self, host: str, reason: str) -> None:
        """Abandon ``host`` for the rest of the run; its URLs are recorded with ``reason``."""
        self._given_up[host] = reason

    def given_up(self, host: str) -> str | None:
        return self._given_up.get(host) if self._given_up else None


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
            # the interval runs from the request's start, not from the lease: between the two
            # this download may have waited (for robots.txt another download was fetching)
            self.fresh = False
            await self.limiter.sending(self.host)
            self.limiter.started(self.host)
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
