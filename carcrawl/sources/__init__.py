"""The search sources, by name, and the helpers around them.

``make_source("bing", market="de-DE")`` builds a source from config; ``parse_saved`` /
``parse_lines`` run a parser over a saved response (``carcrawl parse SOURCE FILE``), which is how
a changed engine format gets diagnosed; ``normalize_url`` is the one URL spelling the store uses
to de-duplicate candidates across sources and queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from carcrawl.errors import InputFileError
from carcrawl.models import SearchPage
from carcrawl.sources.base import SearchSource
from carcrawl.sources.bing import BingFilters, BingSource
from carcrawl.sources.duckduckgo import DuckDuckGoFilters, DuckDuckGoSource
from carcrawl.sources.flickr import FlickrSource
from carcrawl.sources.google import GoogleSource
from carcrawl.sources.openverse import OpenverseSource, rate_limit_wait
from carcrawl.sources.wikimedia import WikimediaSource
from carcrawl.urlsafety import strip_credentials

__all__ = [
    "SOURCES",
    "BingFilters",
    "BingSource",
    "DuckDuckGoFilters",
    "DuckDuckGoSource",
    "FlickrSource",
    "GoogleSource",
    "OpenverseSource",
    "SearchSource",
    "WikimediaSource",
    "make_source",
    "normalize_url",
    "parse_lines",
    "parse_saved",
    "rate_limit_wait",
    "redact_url",
    "strip_credentials",
]

#: every source by the name stored on its candidates
SOURCES: dict[str, type] = {
    "bing": BingSource,
    "duckduckgo": DuckDuckGoSource,
    "openverse": OpenverseSource,
    "wikimedia": WikimediaSource,
    "flickr": FlickrSource,
    "google": GoogleSource,
}

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SECRET_PARAM_RE = re.compile(r"([?&](?:api_key|apikey|key|token|access_token)=)[^&#]*", re.IGNORECASE)


def make_source(name: str, **options: Any) -> SearchSource:
    """The source called ``name`` built with ``options``; a clear ``ValueError`` for an unknown
    name, an unknown option or a bad option value."""
    key = name.strip().lower() if isinstance(name, str) else ""
    cls = SOURCES.get(key)
    if cls is None:
        raise ValueError(f"unknown search source {name!r}; allowed: {', '.join(SOURCES)}")
    name = key
    if name == "bing" and isinstance(options.get("filters"), dict):
        options["filters"] = BingFilters(**options["filters"])
    if name == "duckduckgo" and isinstance(options.get("filters"), dict):
        options["filters"] = DuckDuckGoFilters(**options["filters"])
    try:
        source = cls(**options)
    except TypeError as exc:  # unknown keyword: say which source and which options exist
        fields = [f for f in getattr(cls, "__dataclass_fields__", {}) if f not in ("name", "reports_total")]
        fields = [f for f in fields if not f.startswith("_")]
        raise ValueError(f"search source {name!r}: {exc}; options are: {', '.join(fields)}") from None
    return source  # type: ignore[no-any-return]


def parse_saved(source_name: str, body: bytes, cursor: str | None = None) -> SearchPage:
    """Parse a saved response body as ``source_name`` would (status 200, no headers)."""
    return make_source(source_name).parse(200, {}, body, cursor)


def parse_lines(source_name: str, path: str | Path) -> Iterator[str]:
    """One JSON object per candidate of a saved response, then a last summary object.

    The summary is ``{"next_cursor", "total_hits", "problem", "count"}``; when the page gave no
    candidates it also has ``"note"`` saying why, so an empty answer is never silent."""
    file = Path(path)
    try:
        body = file.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{file}: cannot read: {exc.strerror or exc}") from None
    page = parse_saved(source_name, body)
    for c in page.candidates:
        yield json.dumps(
            {
                "url": c.url,
                "thumbnail": c.thumbnail_url,
                "page_url": c.page_url,
                "title": c.title,
                "width": c.width,
                "height": c.height,
                "license": c.license,
                "license_url": c.license_url,
                "creator": c.creator,
                "attribution": c.attribution,
            },
            ensure_ascii=False,
        )
    summary: dict[str, Any] = {
        "next_cursor": page.next_cursor,
        "total_hits": page.total_hits,
        "problem": page.problem,
        "count": len(page.candidates),
    }
    if not page.candidates:
        summary["note"] = _why_empty(page)
    yield json.dumps(summary, ensure_ascii=False)


def _why_empty(page: SearchPage) -> str:
    problem = page.problem or ""
    if problem == "blocked":
        return "the engine answered with a block / CAPTCHA page"
    if problem == "empty":
        return "the response body is empty"
    if problem == "no_results":
        return "the engine says there are no (more) results for this query"
    if problem.startswith("http_"):
        return f"the engine answered HTTP {problem[5:]}"
    if problem.startswith("unknown_shape:"):
        return "the response is not in a format this parser knows: " + problem.split(":", 1)[1]
    if page.next_cursor:
        return "this response carries no results, only the next request (next_cursor), e.g. a token page"
    return "no candidates"


def normalize_url(url: str) -> str:
    """The spelling used to de-duplicate URLs: scheme and host lower-cased, fragment and default
    port dropped, an empty http(s) path written ``/``. Path and query keep their case (servers
    treat them as case-sensitive). A string that is not a URL comes back stripped, unchanged."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text.split("#", 1)[0]
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not scheme or not host:
        return text.split("#", 1)[0]
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    # a user name or password is not part of the key (it never is stored: see carcrawl.urlsafety)
    path = parts.path or ("/" if scheme in _DEFAULT_PORTS else "")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def redact_url(url: str) -> str:
    """``url`` with API keys and tokens in its query replaced by ``***`` and any user name and
    password removed, for logs and errors (Flickr wants its key in the URL)."""
    return _SECRET_PARAM_RE.sub(r"\1***", strip_credentials(url)[0])
