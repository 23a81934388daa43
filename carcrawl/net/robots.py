"""robots.txt, fetched once per scheme+host and cached (LRU-bounded)."""

from __future__ import annotations

import asyncio
import urllib.robotparser
from collections import OrderedDict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from carcrawl.net.politeness import Lease

if TYPE_CHECKING:
    from carcrawl.net.client import HttpClient


class RobotsCache:
    """robots.txt per scheme+host, fetched once (concurrent askers share the fetch), LRU-bounded.

    A missing or broken robots.txt allows everything (RFC 9309 treats 4xx as allow-all); a
    5xx or an unreachable one also allows, since images are rarely worth less than that risk."""

    def __init__(self, client: HttpClient, agent: str, size: int = 20_000):
        self.client = client
        self.agent = agent
        self.size = size
        self._cache: OrderedDict[str, urllib.robotparser.RobotFileParser | None] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[urllib.robotparser.RobotFileParser | None]] = {}

    async def allowed(self, url: str, lease: Lease | None) -> bool:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        if key in self._cache:
            self._cache.move_to_end(key)
            parser = self._cache[key]
        elif key in self._inflight:
            parser = await self._inflight[key]
        else:
            fut: asyncio.Future[urllib.robotparser.RobotFileParser | None] = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                parser = await self._fetch(key + "/robots.txt", lease)
            except Exception:  # noqa: BLE001 - any failure means "no rules"
                parser = None
            finally:
                del self._inflight[key]
            fut.set_result(parser)
            self._cache[key] = parser
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return True if parser is None else parser.can_fetch(self.agent, url)

    async def _fetch(self, url: str, lease: Lease | None) -> urllib.robotparser.RobotFileParser | None:
        resp = await self.client.get_small(url, max_bytes=512_000, lease=lease)
        if resp is None or resp.status >= 400:
            return None
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(resp.body.decode("utf-8", "replace").splitlines())
        return parser
