"""URLs carcrawl refuses to keep or send, whoever found them (a URL list or a search engine).

- ``user:password@`` in a URL: the checkpoint, the manifest, the report and the logs would hold
  the password in clear, and a resumed run would have to read it back from there. carcrawl keeps
  no secrets in its files, so it does not fetch such a URL: the row is stored without the
  credentials, ``failed`` with the reason ``credentials_in_url`` (serve the files without a
  password in the URL, or fetch them yourself).
- a URL longer than :data:`MAX_URL_LENGTH` (browsers and servers stop near 8 KB): never sent;
  the row keeps the first characters and the reason ``url_too_long``.
"""

from __future__ import annotations

import hashlib

MAX_URL_LENGTH = 8192
#: how much of a too-long URL the checkpoint keeps (enough to recognise it)
KEPT_PREFIX = 200


def strip_credentials(url: str) -> tuple[str, bool]:
    """``url`` without a ``user:password@`` part, and whether it had one."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, False
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch, 0, end)
        if i != -1:
            end = i
    at = rest.rfind("@", 0, end)
    if at == -1:
        return url, False
    return f"{scheme}://{rest[at + 1:]}", True


def refuse(url: str, key: str) -> tuple[str, str, str | None]:
    """``(url, url_key, reason)`` to store for a candidate: the URL as found when it is fine
    (reason None), else what may be kept of it and why it will not be fetched."""
    if len(url) > MAX_URL_LENGTH:
        digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
        return strip_credentials(url[:KEPT_PREFIX])[0] + "...", f"too_long:{digest}", "url_too_long"
    clean, had = strip_credentials(url)
    if had:
        return clean, strip_credentials(key)[0], "credentials_in_url"
    return url, key, None
