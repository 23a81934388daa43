"""Flickr: ``flickr.photos.search`` over the REST API (needs an API key).

The search asks for several size URLs at once (``extras=url_o,url_k,...``) and keeps the largest
one each photo has, with its pixel size. Licence ids become names through Flickr's own table.
The API key is read from the environment when a request is built, so it is never stored on a
candidate, in the checkpoint's config copy, or in this object's ``repr()``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from carcrawl.errors import ConfigError
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

MAX_PER_PAGE = 500
#: size suffixes, largest first (o = original, k = 2048, h = 1600, l = 1024, c = 800, z = 640,
#: m = 500, w = 400, n = 320, s = 240, q = 150 square, t = 100, sq = 75 square)
SIZES = ("o", "6k", "5k", "4k", "3k", "k", "h", "l", "c", "z", "m", "w", "n", "s", "q", "t", "sq")
EXTRAS = "url_o,url_k,url_h,url_l,url_c,url_z,license,owner_name,o_dims"
THUMB_SIZES = ("q", "s", "t", "n", "m", "sq")
#: flickr.photos.licenses.getInfo: id -> (name, URL)
LICENSES: dict[str, tuple[str, str | None]] = {
    "0": ("All Rights Reserved", None),
    "1": ("CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    "2": ("CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    "3": ("CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    "4": ("CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    "5": ("CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    "6": ("CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    "7": ("No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    "8": ("United States Government Work", "http://www.usa.gov/copyright.shtml"),
    "9": ("CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "10": ("Public Domain Mark 1.0", "https://creativecommons.org/publicdomain/mark/1.0/"),
}
# Flickr error codes that mean "stop asking for now" rather than "this request is wrong":
# 10 = search API not currently available, 105 = service currently unavailable
_THROTTLE_CODES = {"10", "105"}


@dataclass(frozen=True, slots=True)
class FlickrSource:
    """Flickr photo search. Cursor: the page number (as text). ``license`` is Flickr's id list
    (``"4,5,9,10"`` for reusable photos); ``None`` searches everything."""

    base_url: str = "https://api.flickr.com"
    api_key_env: str = "FLICKR_API_KEY"
    license: str | None = None
    sort: str = "relevance"
    name: str = field(default="flickr", init=False)
    reports_total: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.license is not None:
            ids = [p.strip() for p in str(self.license).split(",") if p.strip()]
            bad = [i for i in ids if i not in LICENSES]
            if bad or not ids:
                raise ValueError(f"FlickrSource.license: {bad or self.license!r} not among ids 0-10")

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"the Flickr source needs an API key in the environment variable {self.api_key_env} "
                "(get one at https://www.flickr.com/services/apps/create/)"
            )
        page = int(cursor) if cursor and cursor.isdigit() and int(cursor) > 0 else 1
        params = {
            "method": "flickr.photos.search",
            "api_key": key,
            "text": query,
            "media": "photos",
            "content_type": "1",
            "sort": self.sort,
            "extras": EXTRAS,
            "per_page": str(max(1, min(int(per_page), MAX_PER_PAGE))),
            "page": str(page),
            "format": "json",
            "nojsoncallback": "1",
        }
        if self.license is not None:
            params["license"] = self.license
        url = f"{self.base_url.rstrip('/')}/services/rest/?{urlencode(params, safe=',')}"
        return HttpRequest(url=url, headers=(("Accept", "application/json"),))

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        try:
            return self._parse(status, body)
        except Exception as exc:  # a parser must never take the crawl down
            log.debug("flickr parse failed", exc_info=True)
            return SearchPage(problem=f"unknown_shape:{type(exc).__name__}")

    def _parse(self, status: int, body: bytes) -> SearchPage:
        if (problem := status_problem(status)) is not None:
            return SearchPage(problem=problem)
        data, problem = load_json(body)
        if problem is not None:
            return SearchPage(problem=problem)
        if not isinstance(data, dict):
            return SearchPage(problem="unknown_shape:not an object")
        if data.get("stat") == "fail":
            code = str(data.get("code", "?"))
            if code in _THROTTLE_CODES:
                return SearchPage(problem="blocked")
            message = clean_text(data.get("message"), limit=200) or ""
            key = os.environ.get(self.api_key_env, "").strip()
            if key:  # "Invalid API Key (<key>)": the reason is stored and shown, the key must not be
                message = message.replace(key, "***")
            message = message[:80]
            return SearchPage(problem=f"unknown_shape:flickr error {code} {message}".rstrip())
        photos = data.get("photos")
        if not isinstance(photos, dict) or not isinstance(photos.get("photo"), list):
            return SearchPage(problem="unknown_shape:no photos.photo list")
        total_hits = _int0(photos.get("total"))
        candidates = tuple(c for p in photos["photo"] if (c := self._candidate(p)) is not None)
        if not candidates:
            return SearchPage(total_hits=total_hits, problem="no_results")
        page, pages = _int0(photos.get("page")), _int0(photos.get("pages"))
        next_cursor = str(page + 1) if page is not None and pages is not None and page < pages else None
        return SearchPage(candidates=candidates, next_cursor=next_cursor, total_hits=total_hits)

    def _candidate(self, photo: Any) -> Candidate | None:
        if not isinstance(photo, dict):
            return None
        best = next((s for s in SIZES if http_url(photo.get(f"url_{s}"))), None)
        if best is None:
            return None
        owner, pid = photo.get("owner"), photo.get("id")
        page_url = f"https://www.flickr.com/photos/{owner}/{pid}" if owner and pid else None
        thumb = next((u for s in THUMB_SIZES if s != best and (u := http_url(photo.get(f"url_{s}")))), None)
        lic = str(photo.get("license", "")).strip()
        lic_name, lic_url = LICENSES.get(lic, (f"Flickr licence {lic}" if lic else None, None))
        title = clean_text(photo.get("title"))
        creator = (
            clean_text(photo.get("ownername"))
            or clean_text(photo.get("realname"))
            or clean_text(photo.get("pathalias"))
        )
        width, height = to_int(photo.get(f"width_{best}")), to_int(photo.get(f"height_{best}"))
        if width is None and best == "o":
            width, height = to_int(photo.get("o_width")), to_int(photo.get("o_height"))
        return Candidate(
            url=http_url(photo[f"url_{best}"]) or "",
            source=self.name,
            thumbnail_url=thumb,
            page_url=page_url,
            title=title,
            width=width,
            height=height,
            license=lic_name,
            license_url=lic_url,
            creator=creator,
            attribution=compose_attribution(title, creator, lic_name, lic_url) if lic != "0" else None,
        )


def _int0(value: Any) -> int | None:
    """Like ``to_int`` but keeps 0 (a total of 0 is an answer, not a missing value)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
