"""Typed records that flow between the stages.

Every hand-off across a module border is one of these frozen dataclasses, never a dict, so a
reader can see what a stage produces and a type checker can hold us to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Labels:
    """What a query (or a URL-list row) says the image shows. Empty string = unknown."""

    make: str = ""
    model: str = ""
    color: str = ""
    body_type: str = ""
    category: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """One thing to search for. ``kind`` is ``image`` (find photos) or ``bodytype`` (count hits)."""

    text: str
    labels: Labels = field(default_factory=Labels)
    kind: str = "image"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request a search source wants made. The network layer sends it; sources never touch aiohttp."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Candidate:
    """An image URL a source found, with whatever provenance the source gives."""

    url: str
    source: str
    thumbnail_url: str | None = None
    page_url: str | None = None
    title: str | None = None
    width: int | None = None
    height: int | None = None
    license: str | None = None
    license_url: str | None = None
    creator: str | None = None
    attribution: str | None = None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """What one response of a search source yielded.

    ``next_cursor`` is opaque to everyone but the source (a page number, an offset, a URL, a
    token); ``None`` means there is no next page. ``problem`` says why a response gave nothing
    (``blocked``, ``unknown_shape:<detail>``, ``http_<code>``); a page with a problem never
    raises.
    """

    candidates: tuple[Candidate, ...] = ()
    next_cursor: str | None = None
    total_hits: int | None = None
    problem: str | None = None

    @property
    def blocked(self) -> bool:
        return self.problem == "blocked"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A downloaded body that passed the cheap checks (size cap, magic number). Its sha256 is
    computed by the file store, in the thread that writes it, not on the event loop."""

    candidate_id: int
    url: str
    final_url: str
    body: bytes
    format: str  # from the magic number: jpeg, png, gif, webp, bmp, tiff, avif, heic
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A URL that ended without an image, and why (``http_404``, ``timeout``, ``not_image:html`` ...).

    ``terminal`` is False for outcomes worth another try later (a 503, a timeout)."""

    candidate_id: int
    url: str
    reason: str
    terminal: bool = True
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """One label the classifier gave an image, with its probability."""

    label: str
    score: float
    index: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classify stage's decision about one image."""

    sha256: str
    keep: bool
    reason: str  # why kept (``vehicle:<class>``) or rejected (``not_vehicle:<class>``, ``decode_error``)
    top5: tuple[Prediction, ...] = ()
    width: int | None = None
    height: int | None = None
    embedding: bytes | None = None  # float16 little-endian, penultimate layer
    model: str = ""
    hashes: bytes | None = None  # perceptual hashes of the decoded picture (phash.to_blob)
