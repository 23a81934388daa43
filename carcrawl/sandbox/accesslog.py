"""In-memory access log of the sandbox, for politeness checks.

Every request the sandbox answers is recorded as (host, path, start, end, status) with monotonic
times, so a test or a benchmark can prove after the fact that the client kept its per-host
concurrency cap and minimum interval. Bounded (a deque) so a long benchmark cannot grow it
without limit; appends are one tuple, cheap enough for thousands of requests a second.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Access:
    """One answered request. ``host`` is the image host's address (``127.0.0.2``) or the engine's
    name (``bing``); ``path`` includes the query string; times are ``time.monotonic()``."""

    host: str
    path: str
    start: float
    end: float
    status: int


class AccessLog:
    """The last ``maxlen`` requests, with the arithmetic politeness checks need."""

    def __init__(self, maxlen: int = 1_000_000) -> None:
        self._entries: deque[tuple[str, str, float, float, int]] = deque(maxlen=maxlen)

    def record(self, host: str, path: str, start: float, end: float, status: int) -> None:
        self._entries.append((host, path, start, end, status))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def requests(self, host: str | None = None) -> list[Access]:
        """Requests in the order they finished, all hosts or one."""
        return [Access(*e) for e in self._entries if host is None or e[0] == host]

    def hosts(self) -> list[str]:
        return sorted({e[0] for e in self._entries})

    def counts(self) -> dict[str, int]:
        """Requests per host."""
        return dict(Counter(e[0] for e in self._entries))

    def max_concurrency(self, host: str | None = None) -> int:
        """The largest number of requests to ``host`` that were in progress at the same instant.

        A sweep over start/end events; an end and a start at the same instant do not overlap."""
        events: list[tuple[float, int]] = []
        for e in self._entries:
            if host is None or e[0] == host:
                events.append((e[2], 1))
                events.append((e[3], -1))
        events.sort()  # at equal times -1 sorts before +1: touching intervals don't count as overlap
        best = cur = 0
        for _, delta in events:
            cur += delta
            best = max(best, cur)
        return best

    def min_interval(self, host: str | None = None) -> float | None:
        """The smallest gap in seconds between two consecutive request starts to ``host``
        (``None`` with fewer than two requests)."""
        starts = sorted(e[2] for e in self._entries if host is None or e[0] == host)
        if len(starts) < 2:
            return None
        return min(b - a for a, b in zip(starts, starts[1:], strict=False))
