"""Bing Images: the ``/images/async`` grid fragment (and full ``/images/search`` pages).

Every result is an ``<a class="iusc" m="{json}">``: the ``m`` attribute (HTML-escaped JSON) holds
the image URL (``murl``), thumbnail (``turl``), landing page (``purl``) and title (``t``). Pixel
sizes ride on the link's ``href`` (``expw``/``exph``) or in the ``.img_info`` caption
("1920 x 1080"). The grid carries its own next-page URL (``data-nextUrl``) with state Bing wants
back (``imgbf``, the set of images already shown), so we follow it when present.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import parse_qsl, urlencode

from selectolax.lexbor import LexborHTMLParser, LexborNode

from carcrawl.models import Candidate, HttpRequest, SearchPage
from carcrawl.sources._util import clean_text, http_url, status_problem, to_int

BingSize = Literal["small", "medium", "large", "wallpaper"]
BingColor = Literal[
    "color",
    "bw",
    "red",
    "orange",
    "yellow",
    "green",
    "teal",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "gray",
    "white",
]
BingType = Literal["photo", "clipart", "linedrawing", "animatedgif", "transparent"]
BingLayout = Literal["square", "wide", "tall"]
BingLicense = Literal["any", "public", "share", "sharecommercially", "modify", "modifycommercially"]
BingAge = Literal["day", "week", "month", "year"]

# filter value -> the ``filterui:`` token Bing's own filter bar puts in ``qft``
_SIZE = {v: f"imagesize-{v}" for v in get_args(BingSize)}
_COLOR = {"color": "color2-color", "bw": "color2-bw"} | {
    v: f"color2-FGcls_{v.upper()}" for v in get_args(BingColor) if v not in ("color", "bw")
}
_TYPE = {v: f"photo-{v}" for v in get_args(BingType)}
_LAYOUT = {v: f"aspect-{v}" for v in get_args(BingLayout)}
_LICENSE = {
    "any": "licenseType-Any",
    "public": "license-L1",
    "share": "license-L2_L3_L4_L5_L6_L7",
    "sharecommercially": "license-L2_L3_L4",
    "modify": "license-L2_L3_L5_L6",
    "modifycommercially": "license-L2_L3",
}
_AGE = {"day": "age-lt1440", "week": "age-lt10080", "month": "age-lt43200", "year": "age-lt525600"}
_FILTER_TABLES: dict[str, dict[str, str]] = {
    "size": _SIZE,
    "color": _COLOR,
    "type": _TYPE,
    "layout": _LAYOUT,
    "license": _LICENSE,
    "age": _AGE,
}

MAX_PER_PAGE = 150  # the most ``count`` Bing honours on /images/async

log = logging.getLogger(__name__)

_BLOCK_MARKERS = (
    b"/turing/captcha",
    b"captcha/challenge",
    b"b_captcha",
    b"one last step",
    b"please solve the challenge",
    b"unusual traffic",
)
_SIZE_RE = re.compile(r"(\d{1,6})\s*[x\u00d7]\s*(\d{1,6})")
_EXPW_RE = re.compile(r"[?&]expw=(\d{1,6})")
_EXPH_RE = re.compile(r"[?&]exph=(\d{1,6})")
_FIRST_RE = re.compile(r"[?&]first=(\d{1,9})")


@dataclass(frozen=True, slots=True)
class BingFilters:
    """Bing's image filter bar as typed values; ``None`` = no filter. Bad values fail at construction."""

    size: BingSize | None = None
    color: BingColor | None = None
    type: BingType | None = None
    layout: BingLayout | None = None
    license: BingLicense | None = None
    age: BingAge | None = None

    def __post_init__(self) -> None:
        for name, table in _FILTER_TABLES.items():
            value = getattr(self, name)
            if value is not None and value not in table:
                allowed = ", ".join(sorted(table))
                raise ValueError(f"BingFilters.{name}: {value!r} is not one of: {allowed}")

    def qft(self) -> str:
        """The ``qft`` parameter (`` filterui:a filterui:b``; ``+`` separated once URL-encoded)."""
        parts = [
            "filterui:" + table[value]
            for name, table in _FILTER_TABLES.items()
            if (value := getattr(self, name)) is not None
        ]
        return "".join(" " + p for p in parts)


@dataclass(frozen=True, slots=True)
class BingSource:
    """Bing Images via the async grid endpoint. Cursor: a ``first`` offset, or Bing's own next URL."""

    base_url: str = "https://www.bing.com"
    market: str = "en-US"
    filters: BingFilters | None = None
    name: str = field(default="bing", init=False)
    reports_total: bool = field(default=False, init=False)

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        count = max(1, min(int(per_page), MAX_PER_PAGE))
        params: dict[str, str] = {}
        if cursor and cursor.startswith("/images/") and "?" in cursor:
            # Bing's next-page URL: keep its state parameters, set ours on top.
            params.update(parse_qsl(cursor.split("?", 1)[1], keep_blank_values=True))
        else:
            params["first"] = str(_offset(cursor))
        params["q"] = query
        params["count"] = str(count)
        params["mkt"] = self.market
        if self.filters is not None and (qft := self.filters.qft()):
            params["qft"] = qft
        # stable order: q, first, count first (readable logs), then the rest as given
        ordered = {k: params.pop(k) for k in ("q", "first", "count") if k in params} | params
        url = f"{self.base_url.rstrip('/')}/images/async?{urlencode(ordered, safe=':')}"
        return HttpRequest(url=url, headers=(("Accept", "text/html"),))

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        try:
            return self._parse(status, body, cursor)
        except Exception as exc:  # a parser must never take the crawl down
            log.debug("bing parse failed", exc_info=True)
            return SearchPage(problem=f"unknown_shape:{type(exc).__name__}")

    def _parse(self, status: int, body: bytes, cursor: str | None) -> SearchPage:
        if (problem := status_problem(status)) is not None:
            return SearchPage(problem="blocked" if _is_block_page(body) else problem)
        if not body or not body.strip():
            return SearchPage(problem="empty")
        tree = LexborHTMLParser(body)
        candidates: list[Candidate] = []
        bad_m = 0
        nodes = tree.css("a.iusc")
        for node in nodes:
            cand = self._candidate(node)
            if cand is None:
                bad_m += 1
            else:
                candidates.append(cand)
        if not candidates:
            if _is_block_page(body):
                return SearchPage(problem="blocked")
            if nodes:
                return SearchPage(problem=f"unknown_shape:{bad_m} a.iusc without usable m json")
            if b"iusc" in body or b"dgControl" in body or b"no results" in body.lower():
                return SearchPage(problem="no_results")
            return SearchPage(problem="unknown_shape:no a.iusc elements")
        return SearchPage(
            candidates=tuple(candidates), next_cursor=self._next_cursor(tree, cursor, len(candidates))
        )

    def _candidate(self, node: LexborNode) -> Candidate | None:
        attrs = node.attributes
        raw = attrs.get("m")
        if not raw:
            return None
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        url = http_url(meta.get("murl"))
        if url is None:
            return None
        width, height = to_int(meta.get("expw")), to_int(meta.get("exph"))
        href = attrs.get("href") or ""
        if width is None and (mw := _EXPW_RE.search(href)) and (mh := _EXPH_RE.search(href)):
            width, height = to_int(mw.group(1)), to_int(mh.group(1))
        if width is None and node.parent is not None:
            info = node.parent.css_first(".img_info")
            if info is not None and (ms := _SIZE_RE.search(info.text())):
                width, height = to_int(ms.group(1)), to_int(ms.group(2))
        thumb = http_url(meta.get("turl"))
        if thumb is None and (img := node.css_first("img")) is not None:  # cluster cards: turl is ""
            thumb = http_url(img.attributes.get("src") or img.attributes.get("data-src"))
        title = clean_text(meta.get("t")) or clean_text(meta.get("desc"))
        if title is None and not (label := attrs.get("aria-label") or "").startswith("Image result for"):
            title = clean_text(label)
        return Candidate(
            url=url,
            source=self.name,
            thumbnail_url=thumb,
            page_url=http_url(meta.get("purl")),
            title=title,
            width=width,
            height=height,
        )

    @staticmethod
    def _next_cursor(tree: LexborHTMLParser, cursor: str | None, found: int) -> str | None:
        current = _offset(cursor)
        for node in tree.css("[data-nexturl]"):
            nxt = (node.attributes.get("data-nexturl") or "").strip()
            if nxt.startswith("/images/") and (m := _FIRST_RE.search(nxt)) and int(m.group(1)) > current:
                return nxt
        main = found - len(tree.css(".clustCards a.iusc"))  # cluster cards repeat grid images
        return str(current + max(main, 1))


def _is_block_page(body: bytes) -> bool:
    """Bing's CAPTCHA / "one last step" challenge pages (only asked when a page gave no results)."""
    lowered = body[:200_000].lower()
    return any(marker in lowered for marker in _BLOCK_MARKERS)


def _offset(cursor: str | None) -> int:
    """The 1-based ``first`` offset a cursor stands for (a number, or Bing's next URL)."""
    if not cursor:
        return 1
    if cursor.isdigit():
        return max(1, int(cursor))
    m = _FIRST_RE.search(cursor)
    return max(1, int(m.group(1))) if m else 1
