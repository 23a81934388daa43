"""A stats collector every stage writes to (like Scrapy's): counters by name, read by the
progress display and the end-of-run summary."""

from __future__ import annotations

import time
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.started = time.monotonic()

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def reason(self, reason: str) -> None:
        self.reasons[reason] += 1

    def rate(self, key: str) -> float:
        elapsed = time.monotonic() - self.started
        return self.counts[key] / elapsed if elapsed > 0 else 0.0

    def snapshot(self) -> dict[str, object]:
        return {
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "counts": dict(self.counts),
            "reasons": dict(self.reasons.most_common()),
        }
