"""The image cap and per-class quotas a user sets (``--max-images``, ``--per-class``).

Both count distinct stored images: the checkpoint's at the start, then each new image the
download stage stores. A class is the candidate's make and model (a search) or its category (a
URL list). The checks happen when a transfer is about to start, not when work is queued, so a
full class costs no request: its remaining URLs end ``rejected:quota_full``. When the cap is
reached the crawl drains like a Ctrl-C (transfers in flight finish, so at most
``download.concurrency`` images more than the cap are stored) and ends ``done``; URLs not tried
stay pending, so the same command with a higher cap goes on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping


def class_of(make: str, model: str, category: str) -> str:
    """The class a quota counts: ``make/model`` when the candidate has them, else its category."""
    if make or model:
        return f"{make}/{model}"
    return category


class Quota:
    def __init__(
        self,
        max_images: int,
        per_class: int,
        total: int = 0,
        per_class_counts: Mapping[str, int] | None = None,
        on_full: Callable[[], None] | None = None,
    ):
        self.max_images = max_images
        self.per_class = per_class
        self.total = total
        self.counts: Counter[str] = Counter(per_class_counts or {})
        self.on_full = on_full
        self._announced = False

    @property
    def full(self) -> bool:
        return bool(self.max_images) and self.total >= self.max_images

    def class_full(self, cls: str) -> bool:
        return bool(self.per_class) and self.counts[cls] >= self.per_class

    def stored(self, cls: str) -> None:
        """One new distinct image of ``cls`` was stored."""
        self.total += 1
        self.counts[cls] += 1
        if self.full and not self._announced:
            self._announced = True
            if self.on_full is not None:
                self.on_full()
