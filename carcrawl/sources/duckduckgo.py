"""DuckDuckGo Images: a two-step flow around the ``vqd`` token.

DuckDuckGo only answers its JSON endpoint (``/i.js``) with a ``vqd`` token that is minted by the
HTML search page for the same query. So the first request for a query (cursor ``None``) is the
HTML page; parsing it yields no candidates but a cursor that *is* the ``i.js`` request (path and
parameters, with ``vqd``; the query is added again by :meth:`DuckDuckGoSource.build_request`).
Every ``i.js`` answer carries ``next`` (its own next request, without the token); we add the
token back and hand that on as the next cursor.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from carcrawl.models import Candidate, HttpRequest, SearchPage
from carcrawl.sources._util import clean_text, http_url, load_json, looks_like_html, status_problem, to_int

log = logging.getLogger(__name__)

SafeSearch = Literal["strict", "moderate", "off"]
_SAFE_P = {"strict": "1", "moderate": "1", "off": "-1"}  # the i.js ``p`` parameter

# DuckDuckGo's image filter bar: field -> allowed values in DuckDuckGo's own spelling
_FILTERS: dict[str, tuple[str, ...]] = {
    "time": ("Day", "Week", "Month", "Year"),
    "size": ("Small", "Medium", "Large", "Wallpaper"),
    "color": (
        "color",
        "Monochrome",
        "Red",
        "Orange",
        "Yellow",
        "Green",
        "Blue",
        "Purple",
        "Pink",
        "Brown",
        "Black",
        "Gray",
        "Teal",
        "White",
    ),
    "type": ("photo", "clipart", "gif", "transparent", "line"),
    "layout": ("Square", "Tall", "Wide"),
    "license": ("any", "Public", "Share", "ShareCommercially", "Modify", "ModifyCommercially"),
}

_VQD_RES = (
    re.compile(rb'vqd\s*[=:]\s*"([\w-]{4,200})"'),
    re.compile(rb"vqd\s*[=:]\s*'([\w-]{4,200})'"),
    re.compile(rb"vqd=([\w-]{4,200})&"),
)
_BLOCK_MARKERS = (b"anomaly-modal", b"bots use duckduckgo too", b"/anomaly.js", b"challenge-form")
_TOKEN_RE = re.compile(r"[\w-]{4,200}")


@dataclass(frozen=True, slots=True)
class DuckDuckGoFilters:
    """The image filter bar (``f`` parameter). Values are matched case-insensitively and stored in
    DuckDuckGo's spelling; a bad value is a ``ValueError`` naming the field."""

    time: str | None = None
    size: str | None = None
    color: str | None = None
    type: str | None = None
    layout: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in _FILTERS.items():
            value = getattr(self, name)
            if value is None:
                continue
            match = next((a for a in allowed if isinstance(value, str) and a.lower() == value.lower()), None)
            if match is None:
                raise ValueError(f"DuckDuckGoFilters.{name}: {value!r} is not one of: {', '.join(allowed)}")
            object.__setattr__(self, name, match)

    def f(self) -> str:
        """``time:Day,size:Large,,,,`` -- six slots, empty where unset (what the site sends)."""
        return ",".join(f"{n}:{v}" if (v := getattr(self, n)) else "" for n in _FILTERS)


@dataclass(frozen=True, slots=True)
class DuckDuckGoSource:
    """DuckDuckGo Images. Cursor: ``None`` (fetch the token page) or an ``i.js?...`` request."""

    base_url: str = "https://duckduckgo.com"
    safe_search: SafeSearch = "moderate"
    filters: DuckDuckGoFilters | None = None
    region: str = "us-en"
    name: str = field(default="duckduckgo", init=False)
    reports_total: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.safe_search not in _SAFE_P:
            raise ValueError(f"safe_search: {self.safe_search!r} is not one of: strict, moderate, off")

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        """``per_page`` is ignored: DuckDuckGo pages are the size it chooses (about 100)."""
        base = self.base_url.rstrip("/")
        params = _cursor_params(cursor)
        if params is None or not params.get("vqd"):
            url = f"{base}/?{urlencode({'q': query, 'iax': 'images', 'ia': 'images'})}"
            return HttpRequest(url=url, headers=(("Accept", "text/html"),))
        params["q"] = query
        ordered = {k: params.pop(k) for k in ("q", "o", "vqd") if k in params} | params
        return HttpRequest(
            url=f"{base}/i.js?{urlencode(ordered, safe=',:')}",
            headers=(("Accept", "application/json"), ("Referer", f"{base}/")),
        )

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        try:
            return self._parse(status, body, cursor)
        except Exception as exc:  # a parser must never take the crawl down
            log.debug("duckduckgo parse failed", exc_info=True)
            return SearchPage(problem=f"unknown_shape:{type(exc).__name__}")

    def _parse(self, status: int, body: bytes, cursor: str | None) -> SearchPage:
        if status in (403, 418):
            # 403 / 418 are how DuckDuckGo says "slow down" (a stale token also gets 403)
            return SearchPage(problem="blocked")
        if (problem := status_problem(status)) is not None:
            return SearchPage(problem=problem)
        if not body or not body.strip():
            return SearchPage(problem="empty")
        if looks_like_html(body):
            return self._parse_token_page(body)
        data, problem = load_json(body)
        if problem is not None:
            return SearchPage(problem=problem)
        return self._parse_ijs(data, cursor)

    def _parse_token_page(self, body: bytes) -> SearchPage:
        token = extract_vqd(body)
        if token is None:
            return SearchPage(
                problem="blocked" if _is_block_page(body) else "unknown_shape:no vqd token in html"
            )
        params = {"o": "json", "vqd": token, "l": self.region, "p": _SAFE_P[self.safe_search]}
        params["f"] = self.filters.f() if self.filters is not None else ",,,,,"
        return SearchPage(next_cursor="i.js?" + urlencode(params, safe=",:"))

    def _parse_ijs(self, data: Any, cursor: str | None) -> SearchPage:
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            return SearchPage(problem="unknown_shape:no results list")
        candidates = []
        for item in data["results"]:
            if not isinstance(item, dict) or (url := http_url(item.get("image"))) is None:
                continue
            candidates.append(
                Candidate(
                    url=url,
                    source=self.name,
                    thumbnail_url=http_url(item.get("thumbnail")),
                    page_url=http_url(item.get("url")),
                    title=clean_text(item.get("title")),
                    width=to_int(item.get("width")),
                    height=to_int(item.get("height")),
                )
            )
        if not candidates:
            return SearchPage(problem="no_results")
        return SearchPage(candidates=tuple(candidates), next_cursor=_next_cursor(data, cursor))


def extract_vqd(body: bytes) -> str | None:
    """The ``vqd`` token from DuckDuckGo's HTML (``vqd="..."``, ``vqd='...'`` or ``vqd=...&``)."""
    for pattern in _VQD_RES:
        if (m := pattern.search(body)) is not None:
            return m.group(1).decode("ascii")
    return None


def _is_block_page(body: bytes) -> bool:
    lowered = body[:200_000].lower()
    return any(marker in lowered for marker in _BLOCK_MARKERS)


def _cursor_params(cursor: str | None) -> dict[str, str] | None:
    """Parameters of an ``i.js`` cursor; ``None`` for no cursor or one we did not make."""
    if not cursor:
        return None
    path, _, query = cursor.partition("?")
    if path.lstrip("/") != "i.js":
        return None
    return dict(parse_qsl(query, keep_blank_values=True))


def _next_cursor(data: dict[str, Any], cursor: str | None) -> str | None:
    """DuckDuckGo's ``next`` request with the ``vqd`` token put back (it omits it)."""
    nxt = data.get("next")
    if not isinstance(nxt, str) or not nxt.strip():
        return None
    params = _cursor_params(nxt.strip())
    if params is None:
        return None
    token = None
    vqd = data.get("vqd")
    if isinstance(vqd, dict):
        token = next((v for v in vqd.values() if isinstance(v, str) and _TOKEN_RE.fullmatch(v)), None)
    elif isinstance(vqd, str) and _TOKEN_RE.fullmatch(vqd):
        token = vqd
    if token is None:
        token = (_cursor_params(cursor) or {}).get("vqd")
    if not token:
        return None
    params.pop("q", None)  # build_request puts the query back
    params["vqd"] = token
    params["o"] = "json"
    return "i.js?" + urlencode(params, safe=",:")
