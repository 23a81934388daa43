"""Openverse (openly licensed images): a documented JSON API, the politest source we have.

Every result carries its licence, licence URL, creator and a ready-made attribution line, which
the dataset export keeps. The API tells us its rate-limit budget in ``x-ratelimit-*`` headers;
:func:`rate_limit_wait` turns those into a pause for the search stage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from carcrawl.models import Candidate, HttpRequest, SearchPage
from carcrawl.sources._util import (
    clean_text,
    compose_attribution,
    http_url,
    load_json,
    status_problem,
    to_int,
)

log = logging.getLogger(__name__)

# filter name -> allowed values (None = free-form slug); from the API's /v1/images/ docs
_ALLOWED: dict[str, tuple[str, ...] | None] = {
    "license": (
        "by",
        "by-nc",
        "by-nc-nd",
        "by-nc-sa",
        "by-nd",
        "by-sa",
        "cc0",
        "nc-sampling+",
        "pdm",
        "sampling+",
    ),
    "license_type": ("all", "all-cc", "commercial", "modification"),
    "category": ("digitized_artwork", "illustration", "photograph"),
    "aspect_ratio": ("square", "tall", "wide"),
    "size": ("large", "medium", "small"),
    "source": None,
}
_SLUG_RE = re.compile(r"[a-z0-9_.-]{1,64}")
ANON_MAX_PAGE_SIZE = 20  # larger page_size needs an API token (401 otherwise)

# Openverse licence slug -> the name people write (version appended when known)
_LICENSE_NAMES = {
    "cc0": "CC0",
    "pdm": "Public Domain Mark",
    "sampling+": "CC Sampling+",
    "nc-sampling+": "CC NC-Sampling+",
}
# seconds in the period of a ``x-ratelimit-limit-*`` value such as ``20/min``
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}

Filter = str | Sequence[str] | None


def _filter_value(name: str, value: Filter) -> str | None:
    """A comma-joined filter value after checking every item; ``ValueError`` names the field."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    items = [i.strip().lower() for i in items if isinstance(i, str) and i.strip()]
    if not items:
        return None
    allowed = _ALLOWED[name]
    for item in items:
        ok = _SLUG_RE.fullmatch(item) if allowed is None else item in allowed
        if not ok:
            expected = "a provider slug like 'flickr'" if allowed is None else "one of: " + ", ".join(allowed)
            raise ValueError(f"OpenverseSource.{name}: {item!r} is not {expected}")
    return ",".join(items)


@dataclass(frozen=True, slots=True)
class OpenverseSource:
    """Openverse ``/v1/images/`` search. Cursor: the page number (as text)."""

    base_url: str = "https://api.openverse.org"
    license: Filter = None
    license_type: Filter = None
    category: Filter = None
    aspect_ratio: Filter = None
    size: Filter = None
    source: Filter = None
    max_page_size: int = ANON_MAX_PAGE_SIZE
    name: str = field(default="openverse", init=False)
    reports_total: bool = field(default=True, init=False)
    _params: tuple[tuple[str, str], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        params = []
        for fname in _ALLOWED:
            raw = getattr(self, fname)
            if raw is not None and not isinstance(raw, str):
                object.__setattr__(self, fname, tuple(raw))  # keep the record hashable
            value = _filter_value(fname, raw)
            if value is not None:
                params.append((fname, value))
        object.__setattr__(self, "_params", tuple(params))

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        page = int(cursor) if cursor and cursor.isdigit() and int(cursor) > 0 else 1
        size = max(1, min(int(per_page), self.max_page_size))
        params = [("q", query), ("page", str(page)), ("page_size", str(size)), *self._params]
        url = f"{self.base_url.rstrip('/')}/v1/images/?{urlencode(params, safe=',+')}"
        return HttpRequest(url=url, headers=(("Accept", "application/json"),))

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        try:
            return self._parse(status, body, cursor)
        except Exception as exc:  # a parser must never take the crawl down
            log.debug("openverse parse failed", exc_info=True)
            return SearchPage(problem=f"unknown_shape:{type(exc).__name__}")

    def _parse(self, status: int, body: bytes, cursor: str | None) -> SearchPage:
        if (problem := status_problem(status)) is not None:
            return SearchPage(problem=problem)
        data, problem = load_json(body)
        if problem is not None:
            return SearchPage(problem=problem)
        if not isinstance(data, dict):
            return SearchPage(problem="unknown_shape:not an object")
        results = data.get("results")
        if results is None and "url" in data and "id" in data:
            # a single-image detail response (``/v1/images/<id>/``): one candidate, no paging
            cand = self._candidate(data)
            return SearchPage(candidates=(cand,) if cand else (), problem=None if cand else "no_results")
        if not isinstance(results, list):
            return SearchPage(problem="unknown_shape:no results list")
        total = data.get("result_count")
        total_hits = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
        candidates = tuple(c for r in results if (c := self._candidate(r)) is not None)
        if not candidates:
            return SearchPage(total_hits=total_hits, problem="no_results")
        page = data.get("page")
        if not isinstance(page, int) or isinstance(page, bool):
            page = int(cursor) if cursor and cursor.isdigit() else 1
        page_count = data.get("page_count")
        has_next = isinstance(page_count, int) and page < page_count
        return SearchPage(
            candidates=candidates, next_cursor=str(page + 1) if has_next else None, total_hits=total_hits
        )

    def _candidate(self, item: Any) -> Candidate | None:
        if not isinstance(item, dict) or (url := http_url(item.get("url"))) is None:
            return None
        title = clean_text(item.get("title"))
        creator = clean_text(item.get("creator"))
        lic = license_name(item.get("license"), item.get("license_version"))
        lic_url = http_url(item.get("license_url"))
        return Candidate(
            url=url,
            source=self.name,
            thumbnail_url=http_url(item.get("thumbnail")),
            page_url=http_url(item.get("foreign_landing_url")),
            title=title,
            width=to_int(item.get("width")),
            height=to_int(item.get("height")),
            license=lic,
            license_url=lic_url,
            creator=creator,
            attribution=clean_text(item.get("attribution"), limit=1000)
            or compose_attribution(title, creator, lic, lic_url),
        )


def license_name(slug: Any, version: Any) -> str | None:
    """``by-sa`` + ``4.0`` -> ``CC BY-SA 4.0``; ``cc0`` -> ``CC0 1.0``; ``pdm`` -> ``Public Domain Mark 1.0``."""
    if not isinstance(slug, str) or not slug.strip():
        return None
    slug = slug.strip().lower()
    name = _LICENSE_NAMES.get(slug) or "CC " + slug.upper()
    if isinstance(version, (str, int, float)) and not isinstance(version, bool) and str(version).strip():
        name += f" {str(version).strip()}"
    return name


def rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait before the next request, from Openverse's ``x-ratelimit-*`` headers.

    Each limit comes as ``x-ratelimit-limit-<scope>: 20/min`` with
    ``x-ratelimit-available-<scope>: 19``. When some scope has nothing left we wait out its
    period (the longest such period when several are spent); ``None`` when nothing is spent or
    the headers are absent or unreadable."""
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    wait: float | None = None
    prefix = "x-ratelimit-available-"
    for key, value in lower.items():
        if not key.startswith(prefix):
            continue
        scope = key[len(prefix) :]
        try:
            available = int(value.strip())
        except ValueError:
            continue
        if available > 0:
            continue
        limit = lower.get(f"x-ratelimit-limit-{scope}", "")
        period = _period_seconds(limit)
        if period is not None:
            wait = period if wait is None else max(wait, period)
    return wait


def _period_seconds(limit: str) -> float | None:
    """``20/min`` -> 60.0; ``200/day`` -> 86400.0; ``5/10s`` -> 10.0; unreadable -> ``None``."""
    _, _, per = limit.strip().partition("/")
    m = re.fullmatch(r"(\d*)\s*([a-z]+)", per.strip().lower())
    if not m or m.group(2) not in _PERIODS:
        return None
    return (int(m.group(1)) if m.group(1) else 1) * _PERIODS[m.group(2)]
