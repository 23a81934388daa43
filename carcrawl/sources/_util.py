"""Small helpers shared by the parsers (private: nothing outside ``carcrawl.sources`` imports them).

They exist so every source turns messy engine output into the same clean values: an http(s)
URL or nothing, an int or nothing, text without markup.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

#: ``problem`` values a source may report (see :class:`~carcrawl.models.SearchPage`); the
#: ``unknown_shape:`` and ``http_`` forms carry a suffix.
PROBLEMS = ("blocked", "empty", "no_results")

_BLOCK_TAG_RE = re.compile(r"<(?:br|/?p|/?div|/?li|/?td|/?tr|/?h\d)\b[^>]*>", re.IGNORECASE)
_TAG_RE = re.compile(r"<[^>]*>")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_WS_RE = re.compile(r"\s+")
# Private-use characters Bing wraps around the matched words in titles (U+E000 ... U+E001).
_HIGHLIGHT_RE = re.compile("[\ue000\ue001]")


def http_url(value: Any) -> str | None:
    """``value`` stripped if it is an absolute http(s) URL with a host, else ``None``.

    Engines sometimes hand back ``data:`` URIs, relative paths or protocol-relative ``//host``
    links; the download stage only wants absolute http(s) URLs."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if url.startswith("//"):
        url = "https:" + url
    low = url[:8].lower()
    if low.startswith("http://"):
        rest = url[7:]
    elif low.startswith("https://"):
        rest = url[8:]
    else:
        return None
    if not rest or rest[0] in "/?#" or _CONTROL_RE.search(url):
        return None
    return url.replace(" ", "%20") if " " in url else url


def to_int(value: Any) -> int | None:
    """A positive int from an int, a float or a numeric string; anything else is ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float):
        return int(value) if value > 0 and value == value else None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            number = int(text)
            return number if number > 0 else None
    return None


def clean_text(value: Any, limit: int = 500) -> str | None:
    """Plain text: tags stripped, entities decoded, whitespace collapsed, highlight marks removed."""
    if not isinstance(value, str):
        return None
    text = value
    if "<" in text:
        text = _TAG_RE.sub("", _BLOCK_TAG_RE.sub(" ", text))
    if "&" in text:
        text = html.unescape(text)
    text = _HIGHLIGHT_RE.sub("", text)
    text = _WS_RE.sub(" ", text).strip()
    if not text:
        return None
    return text[:limit]


def load_json(body: bytes) -> tuple[Any, str | None]:
    """Decode a JSON body; returns ``(data, None)`` or ``(None, problem)``.

    An empty body is ``empty``; anything that is not JSON is ``unknown_shape:not json``."""
    if not body or not body.strip():
        return None, "empty"
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "unknown_shape:not json"


def status_problem(status: int) -> str | None:
    """``http_<code>`` for a non-2xx status, else ``None``."""
    if 200 <= status < 300:
        return None
    return f"http_{status}"


def looks_like_html(body: bytes) -> bool:
    """True when the body starts (after whitespace/BOM) with markup rather than JSON."""
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")


def compose_attribution(
    title: str | None, creator: str | None, license: str | None, license_url: str | None
) -> str | None:
    """An attribution line in Openverse's wording, for sources that give the parts but not the line.

    ``None`` unless both a creator and a licence are known (a line without them attributes nothing)."""
    if not creator or not license:
        return None
    work = f'"{title}"' if title else "This work"
    verb = "is marked with" if _is_public_domain(license) else "is licensed under"
    line = f"{work} by {creator} {verb} {license}."
    if license_url:
        line += f" To view a copy of this license, visit {license_url}."
    return line


def _is_public_domain(license: str) -> bool:
    low = license.lower()
    return low.startswith(("cc0", "public domain", "pd", "no known copyright", "no restrictions"))
