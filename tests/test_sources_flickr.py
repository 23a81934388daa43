"""FlickrSource: key handling, the real photos.search answers, licence names, errors."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from carcrawl.errors import ConfigError
from carcrawl.sources.flickr import LICENSES, FlickrSource

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search" / "flickr"
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"),  # in CI a missing ../shared must fail
    reason=f"shared fixtures not found at {FIXTURES}",
)

GOIS = "gois_flickr_photos_search_api_url_o_2021-07.json"  # 100 photos, 66 with url_o
CATALOG = "openversecatalog_flickr_photos_search_example_pretty.json"  # 30 photos, url_l/m/s/t
SECRET = "k3y-that-must-not-leak-0123"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_missing_key_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARCRAWL_TEST_FLICKR", raising=False)
    with pytest.raises(ConfigError, match="CARCRAWL_TEST_FLICKR"):
        FlickrSource(api_key_env="CARCRAWL_TEST_FLICKR").build_request("car", None, 10)


def test_key_is_read_at_request_time_and_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    src = FlickrSource()
    monkeypatch.setenv("FLICKR_API_KEY", SECRET)
    req = src.build_request("red car", "3", 1000)
    parts = urlsplit(req.url)
    assert (parts.netloc, parts.path) == ("api.flickr.com", "/services/rest/")
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert params["api_key"] == SECRET
    assert params["method"] == "flickr.photos.search"
    assert params["text"] == "red car"
    assert params["extras"] == "url_o,url_k,url_h,url_l,url_c,url_z,license,owner_name,o_dims"
    assert params["format"] == "json" and params["nojsoncallback"] == "1"
    assert params["page"] == "3" and params["per_page"] == "500"
    assert SECRET not in repr(src) and SECRET not in str(dataclasses.asdict(src))
    page = src.parse(200, {}, body(GOIS), "3")
    assert all(SECRET not in repr(c) for c in page.candidates)
    monkeypatch.setenv("FLICKR_API_KEY", "other")
    assert "api_key=other" in src.build_request("x", None, 1).url  # not cached


def test_gois_capture_largest_size_wins() -> None:
    raw = body(GOIS)
    photos = json.loads(raw)["photos"]["photo"]
    page = FlickrSource().parse(200, {}, raw, None)
    assert page.problem is None and len(page.candidates) == 100
    assert page.total_hits == 2283034
    assert page.next_cursor is None  # page 1 of 1
    for cand, photo in zip(page.candidates, photos, strict=True):
        assert cand.url == photo.get("url_o", photo["url_t"])
        assert cand.page_url == f"https://www.flickr.com/photos/{photo['owner']}/{photo['id']}"
    suffixes = collections.Counter(c.url.rsplit("_", 1)[1] for c in page.candidates)
    assert suffixes == {"o.jpg": 66, "t.jpg": 34}
    first = page.candidates[0]
    assert first.url == "https://live.staticflickr.com/8176/7992858380_8b3b5fab08_o.jpg"
    assert (first.width, first.height) == (5184, 3456)
    assert first.title == "Cats"
    assert first.thumbnail_url == "https://live.staticflickr.com/8176/7992858380_6c4dbe517a_t.jpg"
    assert page.candidates[-1].url == "https://live.staticflickr.com/3731/11951615794_d87b410927_o.jpg"
    licences = collections.Counter(c.license for c in page.candidates)
    assert licences == {
        "All Rights Reserved": 93,
        "CC BY-NC-SA 2.0": 2,
        "CC0 1.0": 2,
        "CC BY-NC-ND 2.0": 2,
        "CC BY 2.0": 1,
    }
    assert all(c.attribution is None for c in page.candidates if c.license == "All Rights Reserved")


def test_catalog_capture_licence_creator_sizes() -> None:
    page = FlickrSource().parse(200, {}, body(CATALOG), None)
    assert len(page.candidates) == 30 and page.total_hits == 30
    first = page.candidates[0]
    assert first.url == "https://live.staticflickr.com/65535/49514337848_bbdbb5f761_b.jpg"  # url_l
    assert (first.width, first.height) == (660, 1024)
    assert first.license == "CC BY-NC-SA 2.0"
    assert first.license_url == "https://creativecommons.org/licenses/by-nc-sa/2.0/"
    assert first.creator == "markustrois"
    assert first.title == "Warsy (église) • 7433"
    assert first.attribution and "by markustrois is licensed under CC BY-NC-SA 2.0" in first.attribution
    assert sum(c.url.endswith("_b.jpg") for c in page.candidates) == 28  # two photos have no url_l


def test_next_page_and_licence_table() -> None:
    data = json.loads(body(CATALOG))
    data["photos"].update(page=2, pages="5")
    assert FlickrSource().parse(200, {}, json.dumps(data).encode(), "2").next_cursor == "3"
    assert [LICENSES[str(i)][0] for i in range(11)] == [
        "All Rights Reserved",
        "CC BY-NC-SA 2.0",
        "CC BY-NC 2.0",
        "CC BY-NC-ND 2.0",
        "CC BY 2.0",
        "CC BY-SA 2.0",
        "CC BY-ND 2.0",
        "No known copyright restrictions",
        "United States Government Work",
        "CC0 1.0",
        "Public Domain Mark 1.0",
    ]


def test_licence_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLICKR_API_KEY", SECRET)
    req = FlickrSource(license="4,5,9,10").build_request("x", None, 10)
    assert parse_qs(urlsplit(req.url).query)["license"] == ["4,5,9,10"]
    with pytest.raises(ValueError, match=r"FlickrSource\.license"):
        FlickrSource(license="4,99")


def test_errors_and_hostile_input() -> None:
    src = FlickrSource()
    bad_key = b'{"stat":"fail","code":100,"message":"Invalid API Key (Key has invalid format)"}'
    assert (
        src.parse(200, {}, bad_key, None).problem
        == "unknown_shape:flickr error 100 Invalid API Key (Key has invalid format)"
    )
    assert (
        src.parse(
            200, {}, b'{"stat":"fail","code":105,"message":"Service currently unavailable"}', None
        ).problem
        == "blocked"
    )
    assert (
        src.parse(200, {}, b'{"stat":"ok","photos":{"page":1,"pages":0,"total":0,"photo":[]}}', None).problem
        == "no_results"
    )
    assert (
        src.parse(200, {}, b'{"stat":"ok","photos":[]}', None).problem == "unknown_shape:no photos.photo list"
    )
    assert src.parse(200, {}, b"jsonFlickrApi({})", None).problem == "unknown_shape:not json"
    assert src.parse(502, {}, b"", None).problem == "http_502"
    assert src.parse(200, {}, b"", None).problem == "empty"
    odd = b'{"photos":{"photo":[{"id":"1"},{"id":"2","url_z":"https://live.staticflickr.com/1/2_z.jpg","license":"77"}]}}'
    (cand,) = src.parse(200, {}, odd, None).candidates
    assert cand.url.endswith("_z.jpg") and cand.license == "Flickr licence 77" and cand.page_url is None
