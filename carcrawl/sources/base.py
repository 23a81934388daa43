"""The one small protocol every search source implements.

A source is pure: it builds the request for a query and a cursor, and parses a response into a
:class:`~carcrawl.models.SearchPage`. It never does I/O, so the search stage owns rate limits,
retries and politeness, and every parser can be tested on saved responses.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from carcrawl.models import HttpRequest, SearchPage


@runtime_checkable
class SearchSource(Protocol):
    #: short name stored on every candidate (``bing``, ``duckduckgo``, ``openverse`` ...)
    name: str
    #: True for sources that report a total hit count (used for body-type features)
    reports_total: bool

    def build_request(self, query: str, cursor: str | None, per_page: int) -> HttpRequest:
        """The request for ``query`` at ``cursor`` (``None`` = the first page)."""
        ...

    def parse(self, status: int, headers: dict[str, str], body: bytes, cursor: str | None) -> SearchPage:
        """Turn a response into candidates and the next cursor. Never raises on bad input:
        a block page, an empty body or an unknown shape becomes ``SearchPage(problem=...)``."""
        ...
