"""OpenverseSource on the recorded API answers (bodies and headers) and on bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from carcrawl.sources.openverse import OpenverseSource, license_name, rate_limit_wait

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search" / "openverse"
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"),  # in CI a missing ../shared must fail
    reason=f"shared fixtures not found at {FIXTURES}",
)

PAGE2 = "openverse_tape_q-cat_page2_2022-09-07"  # width/height/attribution null
PAGE3 = "openverse_tape_q-cat_page3_2024-01-01"  # with x-ratelimit-* headers
MOCK = "openversefrontend_mock_data_q-cat_2021.json"  # no "page" field
EMPTY = "openverse_tape_q-querywithnoresults_2024.json"
DETAIL = "openverse_tape_detail_f9384235_2022.json"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def headers(stem: str) -> dict[str, str]:
    return json.loads(body(stem + ".headers.json"))["headers"]


def test_page3_capture() -> None:
    raw = body(PAGE3 + ".json")
    expected = json.loads(raw)["results"]
    page = OpenverseSource().parse(200, headers(PAGE3), raw, "3")
    assert page.problem is None
    assert len(page.candidates) == 20
    assert page.total_hits == 10000
    assert page.next_cursor == "4"  # page 3 of 20
    for cand, item in zip(page.candidates, expected, strict=True):
        assert cand.url == item["url"]
        assert cand.page_url == item["foreign_landing_url"]
        assert cand.license_url == item["license_url"]
        assert cand.creator == item["creator"]
        assert cand.attribution == item["attribution"]
        assert (cand.width, cand.height) == (item["width"], item["height"])
    first = page.candidates[0]
    assert first.url == "https://live.staticflickr.com/3313/3481540500_c846c62863_b.jpg"
    assert first.title == "Cat Fish 2"
    assert first.license == "CC BY 2.0"
    assert (
        first.thumbnail_url == "http://localhost:49153/v1/images/1c5442f6-6bb6-4ab7-b603-f598e7579dd2/thumb/"
    )
    assert page.candidates[-1].url == "https://live.staticflickr.com/140/358199239_510016203b_b.jpg"


def test_page2_capture_with_nulls_composes_the_attribution() -> None:
    page = OpenverseSource().parse(200, headers(PAGE2), body(PAGE2 + ".json"), "2")
    assert len(page.candidates) == 20 and page.total_hits == 240 and page.next_cursor == "3"
    first = page.candidates[0]
    assert first.url == "https://live.staticflickr.com/51/169329862_b3b297c7a9_b.jpg"
    assert (first.width, first.height) == (None, None)
    assert first.creator == "cheesechoker"
    assert first.attribution == (
        '"Cat" by cheesechoker is licensed under CC BY 2.0. '
        "To view a copy of this license, visit https://creativecommons.org/licenses/by/2.0/."
    )
    assert page.candidates[-1].url == "https://live.staticflickr.com/4642/38268795194_5861fd8b96_b.jpg"


def test_page_number_comes_from_the_cursor_when_the_answer_has_none() -> None:
    src = OpenverseSource()
    page = src.parse(200, {}, body(MOCK), None)
    assert len(page.candidates) == 20 and page.next_cursor == "2" and page.total_hits == 10000
    assert page.candidates[0].license == "CC BY-NC-ND 2.0"
    assert src.parse(200, {}, body(MOCK), "250").next_cursor is None  # page_count is 250


def test_last_page_has_no_next() -> None:
    data = json.loads(body(PAGE3 + ".json"))
    data["page"] = data["page_count"]
    assert OpenverseSource().parse(200, {}, json.dumps(data).encode(), None).next_cursor is None


def test_no_results() -> None:
    page = OpenverseSource().parse(200, {}, body(EMPTY), None)
    assert page.problem == "no_results" and page.total_hits == 0 and page.next_cursor is None


def test_detail_answer_is_one_candidate() -> None:
    page = OpenverseSource().parse(200, {}, body(DETAIL), None)
    assert [c.url for c in page.candidates] == [
        "https://live.staticflickr.com/3903/15218475961_963a4c116e_b.jpg"
    ]
    assert page.next_cursor is None


def test_licence_names() -> None:
    assert license_name("by-sa", "4.0") == "CC BY-SA 4.0"
    assert license_name("cc0", "1.0") == "CC0 1.0"
    assert license_name("pdm", "1.0") == "Public Domain Mark 1.0"
    assert license_name("by", None) == "CC BY"
    assert license_name(None, "1.0") is None


def test_rate_limit_headers() -> None:
    h3 = headers(PAGE3)
    assert h3["x-ratelimit-available-anon_burst"] == "19"
    assert rate_limit_wait(h3) is None  # budget left
    assert rate_limit_wait(headers(PAGE2)) is None  # no rate-limit headers at all
    spent_burst = h3 | {"x-ratelimit-available-anon_burst": "0"}
    assert rate_limit_wait(spent_burst) == 60.0  # 20/min
    spent_both = spent_burst | {"x-ratelimit-available-anon_sustained": "0"}
    assert rate_limit_wait(spent_both) == 86400.0  # 200/day wins
    upper = {"X-RateLimit-Limit-Key": "5/10s", "X-RateLimit-Available-Key": "0"}
    assert rate_limit_wait(upper) == 10.0
    assert rate_limit_wait({"x-ratelimit-available-a": "zero", "x-ratelimit-limit-a": "1/min"}) is None
    assert rate_limit_wait({"x-ratelimit-available-a": "0", "x-ratelimit-limit-a": "lots"}) is None


def test_build_request() -> None:
    src = OpenverseSource(
        license=["by", "BY-SA"], category="photograph", aspect_ratio="wide", source="flickr"
    )
    req = src.build_request("red car", None, 50)
    parts = urlsplit(req.url)
    assert (parts.netloc, parts.path) == ("api.openverse.org", "/v1/images/")
    assert parse_qs(parts.query) == {
        "q": ["red car"],
        "page": ["1"],
        "page_size": ["20"],  # anonymous maximum
        "license": ["by,by-sa"],
        "category": ["photograph"],
        "aspect_ratio": ["wide"],
        "source": ["flickr"],
    }
    assert parse_qs(urlsplit(src.build_request("x", "7", 5).url).query)["page"] == ["7"]
    assert hash(src)  # list options are kept as tuples, the record stays hashable


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("license", "by-zz"),
        ("license_type", "free"),
        ("category", "photo"),
        ("size", "xl"),
        ("source", "a b"),
    ],
)
def test_bad_filter_names_the_field(option: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"OpenverseSource\.{option}: "):
        OpenverseSource(**{option: value})


def test_hostile_input() -> None:
    src = OpenverseSource()
    assert src.parse(401, {}, b'{"detail": "page_size too large"}', None).problem == "http_401"
    assert src.parse(429, {}, b"", None).problem == "http_429"
    assert src.parse(200, {}, b"", None).problem == "empty"
    assert src.parse(200, {}, b"<html>maintenance</html>", None).problem == "unknown_shape:not json"
    assert src.parse(200, {}, b"[]", None).problem == "unknown_shape:not an object"
    assert src.parse(200, {}, b'{"results": 5}', None).problem == "unknown_shape:no results list"
    truncated = body(PAGE3 + ".json")[:5000]
    assert src.parse(200, {}, truncated, None).problem == "unknown_shape:not json"
    odd = b'{"result_count": "many", "results": [{"url": "data:image/png;base64,xx"}, {"url": "https://x.example/a.jpg", "width": -3}]}'
    page = src.parse(200, {}, odd, None)
    assert [c.url for c in page.candidates] == ["https://x.example/a.jpg"]
    assert page.total_hits is None and page.candidates[0].width is None and page.next_cursor is None
