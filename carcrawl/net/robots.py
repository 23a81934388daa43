"""robots.txt (RFC 9309), fetched once per scheme+host, parsed by protego, cached (LRU-bounded).

protego implements the RFC's matching (``*`` and ``$`` wildcards, the longest match wins, Allow
beats Disallow on a tie), which ``urllib.robotparser`` does not (no wildcards, first match wins).
Outcomes by the RFC: 2xx → the rules; 4xx → no rules (allow); 5xx, a timeout or no answer →
"unreachable": the host is disallowed for ``retry_after`` seconds, then asked again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from protego import Protego

from carcrawl.net.politeness import Lease

if TYPE_CHECKING:
    from carcrawl.net.client import HttpClient

ROBOTS_DISALLOWED = "robots_disallowed"
ROBOTS_UNAVAILABLE = "robots_unavailable"  # not the URL's fault: retried, and left for a resume

#: a cache entry: the parsed rules, ``None`` (allow all), or the monotonic time until which the
#: host counts as unreachable
_Rules = Protego | None | float


class RobotsCache:
    """robots.txt per scheme+host. Concurrent askers share one fetch; when the fetching task is
    cancelled, the waiters do not wait forever: the next one fetches."""

    def __init__(self, client: HttpClient, agent: str, size: int = 20_000, retry_after: float = 300.0):
        self.client = client
        self.agent = agent
        self.size = size
        self.retry_after = retry_after
        self._cache: OrderedDict[str, _Rules] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_Rules]] = {}

    async def check(self, url: str, lease: Lease | None) -> str | None:
        """``None`` when ``url`` may be fetched, else the reason it may not."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        rules = await self._rules(key, lease)
        if rules is None:
            return None
        if isinstance(rules, float):
            return ROBOTS_UNAVAILABLE
        return None if rules.can_fetch(url, self.agent) else ROBOTS_DISALLOWED

    async def allowed(self, url: str, lease: Lease | None) -> bool:
        return await self.check(url, lease) is None

    async def _rules(self, key: str, lease: Lease | None) -> _Rules:
        while True:
            if key in self._cache:
                rules = self._cache[key]
                if not (isinstance(rules, float) and rules <= time.monotonic()):
                    self._cache.move_to_end(key)
                    return rules
                del self._cache[key]  # unreachable long enough: ask again
            fut = self._inflight.get(key)
            if fut is not None:
                try:
                    # shielded: a waiter's own cancellation must not cancel the shared fetch
                    return await asyncio.shield(fut)
                except asyncio.CancelledError:
                    if fut.cancelled():
                        continue  # the fetching task was cancelled: try again (maybe as the fetcher)
                    raise
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                rules = await self._fetch(key + "/robots.txt", lease)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - every failure is an outcome
                rules = self._after_error(e)
            finally:
                del self._inflight[key]
            fut.set_result(rules)
            self._cache[key] = rules
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return rules

    def _after_error(self, e: Exception) -> _Rules:
        """No answer (timeout, reset, refused): unreachable for a while. An error the image URL
        will meet too (a blocked address, DNS, TLS, a bad URL): no rules, so the fetch itself goes
        on and fails with that, its real reason."""
        from carcrawl.net.client import classify_exception

        _reason, terminal = classify_exception(e)
        if terminal or getattr(e, "terminal", False):
            return None
        return time.monotonic() + self.retry_after

    async def _fetch(self, url: str, lease: Lease | None) -> _Rules:
        resp = await self.client.get_small(url, max_bytes=512_000, lease=lease)
        if resp is None:  # more than max_redirects: the RFC lets a crawler treat it as unavailable (4xx)
            return None
        if resp.status >= 500 or resp.status == 429:
            return time.monotonic() + self.retry_after
        if resp.status >= 400:
            return None
        if resp.status >= 300:  # a redirect without a Location
            return None
        return Protego.parse(resp.body.decode("utf-8", "replace"))
