"""Wikimedia Commons: the MediaWiki action API, searching the File: namespace.

One request does the search and fetches each hit's file URL, size, MIME type and licence
metadata (``generator=search`` + ``prop=imageinfo`` with ``extmetadata``), so every candidate
arrives with its licence, licence URL and author. Paging follows the API's own ``continue``
object, which the cursor carries as JSON.
"""

from __future__ import annotations

import json
import logging
import mimetypes
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

MAX_PER_PAGE = 50  # gsrlimit for clients without the apihighlimits right
#: MIME types the download stage can verify and decode; SVG, DjVu, PDF, audio and video are skipped.
RASTER_MIMES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/tiff",
        "image/bmp",
        "image/x-bmp",
        "image/avif",
        "image/heic",
        "image/heif",
    }
)
_EXTMETA_FIELDS = "ObjectName|LicenseShortName|LicenseUrl|Artist|Attribution|UsageTerms"


@dataclass(frozen=True, slots=True)
class WikimediaSource:
    """Commons file search. Cursor: the API's ``continue`` object as JSON.

    ``bitmap_only`` adds ``filetype:bitmap`` to the search, so Commons itself leaves out
    drawings, PDFs and videos (they would be skipped here anyway, after costing a page slot)."""

    base_url: str = "https://commons.wikimedia.org"
    thumb_width: int | None = 320
    bitmap_only: bool = True
    name: str = field(default="wikimedia", init=False)
    reports_total: bool = field(default=True, init=False)

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        search = f"{query} filetype:bitmap" if self.bitmap_only and "filetype:" not in query else query
        params: dict[str, str] = {
            "action": "query",
            "format": "json",
            "generator": "search",
            "gsrsearch": search,
            "gsrnamespace": "6",
            "gsrlimit": str(max(1, min(int(per_page), MAX_PER_PAGE))),
            "gsrinfo": "totalhits",
            "prop": "imageinfo",
            "iiprop": "url|size|mime|extmetadata",
            "iiextmetadatafilter": _EXTMETA_FIELDS,
        }
        if self.thumb_width:
            params["iiurlwidth"] = str(self.thumb_width)
        params.update(_continue_params(cursor))
        url = f"{self.base_url.rstrip('/')}/w/api.php?{urlencode(params, safe='|:')}"
        return HttpRequest(url=url, headers=(("Accept", "application/json"),))

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        try:
            return self._parse(status, body)
        except Exception as exc:  # a parser must never take the crawl down
            log.debug("wikimedia parse failed", exc_info=True)
            return SearchPage(problem=f"unknown_shape:{type(exc).__name__}")

    def _parse(self, status: int, body: bytes) -> SearchPage:
        if (problem := status_problem(status)) is not None:
            return SearchPage(problem=problem)
        data, problem = load_json(body)
        if problem is not None:
            return SearchPage(problem=problem)
        if not isinstance(data, dict):
            return SearchPage(problem="unknown_shape:not an object")
        if isinstance(err := data.get("error"), dict):
            code = str(err.get("code", "unknown"))[:40]
            return SearchPage(
                problem="blocked" if code == "ratelimited" else f"unknown_shape:api error {code}"
            )
        if "imageinfo" in data and "title" in data:
            pages: list[Any] = [data]  # one page object on its own
            query: dict[str, Any] = {}
        else:
            query = data.get("query") if isinstance(data.get("query"), dict) else {}
            if not query and "batchcomplete" not in data and "continue" not in data:
                return SearchPage(problem="unknown_shape:no query object")
            raw = query.get("pages", [])
            pages = list(raw.values()) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
            if isinstance(query.get("allimages"), list):  # list=allimages: items are imageinfo-like
                pages += [
                    {"title": i.get("title"), "imageinfo": [i]}
                    for i in query["allimages"]
                    if isinstance(i, dict)
                ]
        if any(isinstance(p, dict) and isinstance(p.get("index"), int) for p in pages):
            pages.sort(key=lambda p: p.get("index", 1 << 30) if isinstance(p, dict) else 1 << 30)
        candidates = tuple(c for p in pages if (c := self._candidate(p)) is not None)
        info = query.get("searchinfo")
        total = info.get("totalhits") if isinstance(info, dict) else None
        total_hits = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
        cont = data.get("continue")
        next_cursor = (
            json.dumps(cont, sort_keys=True, separators=(",", ":"))
            if isinstance(cont, dict) and cont
            else None
        )
        if not candidates and next_cursor is None:
            return SearchPage(total_hits=total_hits, problem="no_results")
        return SearchPage(candidates=candidates, next_cursor=next_cursor, total_hits=total_hits)

    def _candidate(self, page: Any) -> Candidate | None:
        if not isinstance(page, dict):
            return None
        infos = page.get("imageinfo")
        if not isinstance(infos, list) or not infos or not isinstance(infos[0], dict):
            return None
        ii = infos[0]
        url = http_url(ii.get("url"))
        if url is None:
            return None
        mime = (
            ii.get("mime")
            if isinstance(ii.get("mime"), str)
            else mimetypes.guess_type(url.split("?", 1)[0])[0]
        )
        if mime not in RASTER_MIMES:
            return None
        meta = ii.get("extmetadata") if isinstance(ii.get("extmetadata"), dict) else {}
        title = _meta(meta, "ObjectName") or _file_title(page.get("title"))
        creator = _meta(meta, "Artist")
        lic = _meta(meta, "LicenseShortName")
        lic_url = http_url(_meta(meta, "LicenseUrl"))
        return Candidate(
            url=url,
            source=self.name,
            thumbnail_url=http_url(ii.get("thumburl")),
            page_url=http_url(ii.get("descriptionurl")),
            title=title,
            width=to_int(ii.get("width")),
            height=to_int(ii.get("height")),
            license=lic,
            license_url=lic_url,
            creator=creator,
            attribution=_attribution(title, creator, lic, lic_url, _meta(meta, "Attribution")),
        )


def _attribution(
    title: str | None, creator: str | None, lic: str | None, lic_url: str | None, credit: str | None
) -> str | None:
    """The usual attribution line, plus Commons' own "Attribution" credit (the wording the author
    asked for, e.g. "Photo by X") when it says more than the creator's name."""
    line = compose_attribution(title, creator or credit, lic, lic_url)
    if line and credit and credit != creator:
        line += f" Attribution: {credit}."
    return line


def _meta(meta: dict[str, Any], key: str) -> str | None:
    """An ``extmetadata`` value as plain text (the API gives HTML for Artist, Credit ...)."""
    entry = meta.get(key)
    value = entry.get("value") if isinstance(entry, dict) else None
    return clean_text(value) if isinstance(value, str) else None


def _file_title(title: Any) -> str | None:
    """``File:Red car.jpg`` -> ``Red car``."""
    if not isinstance(title, str):
        return None
    text = title.split(":", 1)[1] if title.startswith("File:") else title
    stem, dot, ext = text.rpartition(".")
    return clean_text(stem if dot and 1 <= len(ext) <= 5 else text)


def _continue_params(cursor: str | None) -> dict[str, str]:
    """The ``continue`` object a cursor holds, as request parameters; ``{}`` if it holds none."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(k): str(v)
        for k, v in data.items()
        if isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
    }
