"""Google Images -- BEST EFFORT, UNRELIABLE. Prefer the other sources.

Google has no public image-search API for this, changes its result markup often, and answers
automated traffic with a CAPTCHA ("sorry") page quickly. This parser understands the formats
that were stable for years and are in our captures:

* the ``ichunk`` response (``asearch=ichunk``): ``)]}'`` framing around HTML whose results each
  carry a hidden ``<div class="rg_meta">{json}</div>`` (``ou`` image URL, ``tu`` thumbnail,
  ``ru`` page, ``pt`` title, ``ow``/``oh`` size);
* the older ``["rg_s", ["dom", "<html>"]]`` async JSON and ``/imgres?imgurl=...`` links;
* as a last resort, the ``["https://...", height, width]`` triples of newer pages.

The "sorry" / reCAPTCHA page becomes ``problem="blocked"``; the search stage then backs off the
whole engine.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from carcrawl.models import Candidate, HttpRequest, SearchPage
from carcrawl.sources._util import clean_text, http_url, status_problem, to_int

log = logging.getLogger(__name__)

PER_PAGE = 100  # one ichunk page (``ijn``) holds about 100 results; ``per_page`` cannot change it
_BLOCK_MARKERS = (
    b"our systems have detected unusual traffic",
    b'id="captcha-form"',
    b"g-recaptcha",
    b"/sorry/index",
    b"google.com/sorry",
)
_XSSI_PREFIX = b")]}'"
# ["https://host/x.jpg",768,1024] in newer result pages (AF_initDataCallback data)
_TRIPLE_RE = re.compile(rb'\["(https?://(?:[^"\\]|\\.){8,2000})",(\d{2,5}),(\d{2,5})\]')
_THUMB_HOSTS = ("gstatic.com", "googleusercontent.com", "google.com")


@dataclass(frozen=True, slots=True)
class GoogleSource:
    """Google Images through the ``ichunk`` endpoint (best effort). Cursor: the ``ijn`` page index."""

    base_url: str = "https://www.google.com"
    language: str = "en"
    safe: bool = True
    name: str = field(default="google", init=False)
    reports_total: bool = field(default=False, init=False)

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        """``per_page`` is ignored (Google sends pages of about 100)."""
        page = int(cursor) if cursor and cursor.isdigit() else 0
        params = {
            "q": query,
            "tbm": "isch",
            "asearch": "ichunk",
            "async": "_id:rg_s,_pms:s,_fmt:pc",
            "ijn": str(page),
            "start": str(page * PER_PAGE),
            "hl": self.language,
            "safe": "active" if self.safe else "off",
        }
        url = f"{self.base_url.rstrip('/')}/search?{urlencode(params, safe=':,')}"
        return HttpRequest(url=url, headers=(("Accept", "text/html,*/*"),))

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        try:
            return self._parse(status, body, cursor)
        except Exception as exc:  # a parser must never take the crawl down
            log.debug("google parse failed", exc_info=True)
            return SearchPage(problem=f"unknown_shape:{type(exc).__name__}")

    def _parse(self, status: int, body: bytes, cursor: str | None) -> SearchPage:
        if (problem := status_problem(status)) is not None:
            return SearchPage(problem="blocked" if _is_block_page(body) else problem)  # "sorry" comes as 429
        if not body or not body.strip():
            return SearchPage(problem="empty")
        html = _html_payload(body)
        candidates = self._from_html(html) if html else []
        if not candidates:
            candidates = self._from_triples(body)
        if not candidates:
            if _is_block_page(body):  # ... or as 200
                return SearchPage(problem="blocked")
            known = b"rg_" in body or b"isch" in body
            return SearchPage(problem="no_results" if known else "unknown_shape:no rg_meta")
        page = int(cursor) if cursor and cursor.isdigit() else 0
        return SearchPage(candidates=tuple(candidates), next_cursor=str(page + 1))

    def _from_html(self, html: str | bytes) -> list[Candidate]:
        tree = LexborHTMLParser(html)
        out: list[Candidate] = []
        for node in tree.css("div.rg_meta"):
            try:
                meta = json.loads(node.text(deep=True, strip=True))
            except ValueError:
                continue
            if not isinstance(meta, dict):
                continue
            link = node.parent.css_first('a[href*="imgres?"]') if node.parent is not None else None
            if (cand := self._from_meta(meta, link)) is not None:
                out.append(cand)
        if not out:  # very old pages without rg_meta: the data is on the /imgres link
            out = [
                c for link in tree.css('a[href*="imgres?"]') if (c := self._from_meta({}, link)) is not None
            ]
        return out

    def _from_meta(self, meta: dict[str, Any], link: LexborNode | None) -> Candidate | None:
        """A candidate from an ``rg_meta`` object, filling gaps from the result's ``/imgres`` link."""
        qs: dict[str, list[str]] = {}
        thumb = meta.get("tu")
        if link is not None:
            qs = parse_qs(urlsplit(link.attributes.get("href") or "").query)
            if thumb is None and (img := link.css_first("img")) is not None:
                thumb = img.attributes.get("data-src") or img.attributes.get("src")
        url = http_url(meta.get("ou")) or http_url(_first(qs, "imgurl"))
        if url is None:
            return None
        return Candidate(
            url=url,
            source=self.name,
            thumbnail_url=http_url(thumb),
            page_url=http_url(meta.get("ru")) or http_url(_first(qs, "imgrefurl")),
            title=clean_text(meta.get("pt")) or clean_text(meta.get("s")),
            width=to_int(meta.get("ow")) or to_int(_first(qs, "w")),
            height=to_int(meta.get("oh")) or to_int(_first(qs, "h")),
        )

    def _from_triples(self, body: bytes) -> list[Candidate]:
        out: list[Candidate] = []
        seen: set[str] = set()
        for m in _TRIPLE_RE.finditer(body):
            try:
                url = json.loads(b'"' + m.group(1) + b'"')
            except ValueError:
                continue
            url = http_url(url)
            if url is None or url in seen:
                continue
            host = urlsplit(url).hostname or ""
            if host.endswith(_THUMB_HOSTS):
                continue
            seen.add(url)
            width, height = to_int(m.group(3).decode()), to_int(m.group(2).decode())
            out.append(Candidate(url=url, source=self.name, width=width, height=height))
        return out


def _first(qs: dict[str, list[str]], key: str) -> str | None:
    values = qs.get(key)
    return values[0] if values else None


def _is_block_page(body: bytes) -> bool:
    head = body[:100_000].lower()
    return any(marker in head for marker in _BLOCK_MARKERS)


def _html_payload(body: bytes) -> str | bytes | None:
    """The HTML inside a response: the ``rg_s`` async JSON's DOM string, or the body itself
    (the ``)]}'`` chunk framing is harmless to an HTML parser)."""
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            data = json.loads(stripped)
        except ValueError:
            return body
        found = _find_dom(data)
        return found
    if stripped.startswith(_XSSI_PREFIX):
        return stripped[len(_XSSI_PREFIX) :]
    return body


def _find_dom(data: Any, depth: int = 0) -> str | None:
    """The HTML string in ``["rg_s", ["dom", "<html>"]]`` (searched a few levels deep)."""
    if depth > 4 or not isinstance(data, list):
        return None
    if len(data) >= 2 and data[0] == "dom" and isinstance(data[1], str):
        return data[1]
    for item in data:
        if (found := _find_dom(item, depth + 1)) is not None:
            return found
    return None
