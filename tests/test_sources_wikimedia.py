"""WikimediaSource on real Commons API answers (generator=search and allimages-shaped) and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from carcrawl.sources.wikimedia import WikimediaSource

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search" / "wikimedia"
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"),  # in CI a missing ../shared must fail
    reason=f"shared fixtures not found at {FIXTURES}",
)

SEARCH = "mediasearch_generator-search_q-cat_image.json"
EMPTY = "mediasearch_generator-search_empty-with-suggestion.json"
DETAIL = "mediasearch_imageinfo-extmetadata_tired-cat.json"
RAW = "openversecatalog_wmc_raw.json"
PRETTY = "openversecatalog_wmc_pretty1.json"
ONE_PAGE = "openversecatalog_image_data_example.json"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_generator_search_capture_in_rank_order() -> None:
    raw = body(SEARCH)
    pages = sorted(json.loads(raw)["query"]["pages"].values(), key=lambda p: p["index"])
    page = WikimediaSource().parse(200, {}, raw, None)
    assert page.problem is None
    assert len(page.candidates) == 40
    assert [c.url for c in page.candidates] == [p["imageinfo"][0]["url"] for p in pages]
    assert [c.page_url for c in page.candidates] == [p["imageinfo"][0]["descriptionurl"] for p in pages]
    first = page.candidates[0]
    assert first.url == "https://upload.wikimedia.org/wikipedia/commons/4/4d/Cat_November_2010-1a.jpg"
    assert first.title == "Cat November 2010-1a"
    assert (first.width, first.height) == (1795, 2397)
    assert page.candidates[-1].title == "Siberian black tabby blotched cat 03"
    assert page.total_hits == 5145704


def test_continue_object_is_the_cursor() -> None:
    src = WikimediaSource()
    page = src.parse(200, {}, body(SEARCH), None)
    assert json.loads(page.next_cursor or "") == {"gsroffset": 40, "continue": "gsroffset||"}
    params = parse_qs(urlsplit(src.build_request("cat", page.next_cursor, 40).url).query)
    assert params["gsroffset"] == ["40"] and params["continue"] == ["gsroffset||"]


def test_licence_creator_and_page_from_extmetadata() -> None:
    page = WikimediaSource().parse(200, {}, body(DETAIL), None)
    (c,) = page.candidates
    assert c.license == "CC BY 2.0 fr"
    assert c.license_url == "https://creativecommons.org/licenses/by/2.0/fr/deed.en"
    assert c.creator == "Dimitri \u201cDiti\u201d Torterat"  # the <a> around the name is gone
    assert c.page_url == "https://commons.wikimedia.org/wiki/File:Tired_20-year-old_cat.jpg"
    assert c.title == "Tired 20-year-old cat"
    assert c.thumbnail_url and c.thumbnail_url.endswith("/239px-Tired_20-year-old_cat.jpg")
    assert c.attribution and c.attribution.startswith('"Tired 20-year-old cat" by Dimitri')
    assert page.next_cursor is None


def test_allimages_shaped_answers() -> None:
    src = WikimediaSource()
    raw_page = src.parse(200, {}, body(RAW), None)
    assert len(raw_page.candidates) == 28  # no mime given: the .jpg/.JPG/.tif names decide
    assert raw_page.candidates[-1].url.endswith("Stigbygel_-_Livrustkammaren_-_61961-negative.tif")
    by_url = {c.url: c for c in raw_page.candidates}
    cc = by_url["https://upload.wikimedia.org/wikipedia/commons/3/30/Bukomo.jpg"]
    assert cc.license == "CC BY-SA 4.0" and cc.license_url == "https://creativecommons.org/licenses/by-sa/4.0"
    assert all(c.creator and "<" not in c.creator for c in raw_page.candidates)
    assert raw_page.next_cursor is None and raw_page.total_hits is None
    pretty = src.parse(200, {}, body(PRETTY), None)
    assert len(pretty.candidates) == 9
    assert pretty.candidates[0].creator == "The original uploader was Elvezio at Italian Wikipedia."
    assert pretty.candidates[0].license == "Public domain"
    assert "gucontinue" in json.loads(pretty.next_cursor or "{}")
    single = src.parse(200, {}, body(ONE_PAGE), None)
    assert [c.creator for c in single.candidates] == ["PtrQs"]


def test_empty_search_with_suggestion() -> None:
    page = WikimediaSource().parse(200, {}, body(EMPTY), None)
    assert page.problem == "no_results" and page.total_hits == 0 and page.candidates == ()


def test_non_raster_files_are_skipped() -> None:
    data = json.loads(body(SEARCH))
    pages = list(data["query"]["pages"].values())
    pages[0]["imageinfo"][0]["mime"] = "video/webm"
    pages[1]["imageinfo"][0]["mime"] = "image/svg+xml"
    pages[2]["imageinfo"][0]["mime"] = "application/pdf"
    del pages[3]["imageinfo"]
    page = WikimediaSource().parse(200, {}, json.dumps(data).encode(), None)
    assert len(page.candidates) == 36
    # a page of nothing but skipped files still pages on
    for p in pages:
        p["imageinfo"] = [{"url": "https://upload.wikimedia.org/a.ogv", "mime": "video/ogg"}]
    page = WikimediaSource().parse(200, {}, json.dumps(data).encode(), None)
    assert page.candidates == () and page.problem is None and page.next_cursor is not None


def test_build_request() -> None:
    req = WikimediaSource().build_request("red ford focus", None, 500)
    parts = urlsplit(req.url)
    assert (parts.netloc, parts.path) == ("commons.wikimedia.org", "/w/api.php")
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert params["action"] == "query" and params["format"] == "json"
    assert params["generator"] == "search" and params["gsrnamespace"] == "6"
    assert params["gsrsearch"] == "red ford focus filetype:bitmap"
    assert params["gsrlimit"] == "50"
    assert params["gsrinfo"] == "totalhits"
    assert params["prop"] == "imageinfo"
    assert params["iiprop"] == "url|size|mime|extmetadata"
    assert "gsroffset" not in params
    plain = WikimediaSource(bitmap_only=False, thumb_width=None).build_request("car", "not json", 10)
    params = {k: v[0] for k, v in parse_qs(urlsplit(plain.url).query).items()}
    assert params["gsrsearch"] == "car" and "iiurlwidth" not in params and "continue" not in params


def test_hostile_input() -> None:
    src = WikimediaSource()
    assert (
        src.parse(200, {}, b'{"error": {"code": "ratelimited", "info": "slow down"}}', None).problem
        == "blocked"
    )
    assert (
        src.parse(200, {}, b'{"error": {"code": "badvalue"}}', None).problem
        == "unknown_shape:api error badvalue"
    )
    assert src.parse(503, {}, b"", None).problem == "http_503"
    assert src.parse(200, {}, b"", None).problem == "empty"
    assert src.parse(200, {}, b'{"foo": 1}', None).problem == "unknown_shape:no query object"
    assert src.parse(200, {}, b'"text"', None).problem == "unknown_shape:not an object"
    assert (
        src.parse(
            200, {}, b'{"query": {"pages": [1, null, {"imageinfo": "x"}]}, "batchcomplete": ""}', None
        ).problem
        == "no_results"
    )
    assert src.parse(200, {}, body(SEARCH)[:3000], None).problem == "unknown_shape:not json"
    # formatversion=2 (pages as a list) works too
    data = json.loads(body(SEARCH))
    data["query"]["pages"] = list(data["query"]["pages"].values())
    assert len(src.parse(200, {}, json.dumps(data).encode(), None).candidates) == 40
