"""DuckDuckGoSource: the vqd token flow, the real i.js captures, block answers and hostile input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from carcrawl.models import HttpRequest
from carcrawl.sources.duckduckgo import DuckDuckGoFilters, DuckDuckGoSource, extract_vqd

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search" / "duckduckgo"
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"),  # in CI a missing ../shared must fail
    reason=f"shared fixtures not found at {FIXTURES}",
)

RUST = "phrona_ddg_images_ijs_rust-programming.json"  # 99 results, newer format
MINECRAFT = "duckduckscrape_ijs_q-minecraft_safeoff_2022.json"  # 100 results, 2022 format
NO_RESULTS = "duckduckscrape_ijs_noresults_2022.json"

# the token page as DuckDuckGo serves it embeds the token in an inline script
TOKEN_PAGE = b"""<!DOCTYPE html><html lang="en-US"><head><title>red ford focus at DuckDuckGo</title></head>
<body><script type="text/javascript">DDG.deep.initialize('/d.js?q=red%20ford%20focus&l=us-en&s=0&dl=en&ct=US&vqd=4-211806513467419290146433347426418113271&p=1');
DDG.ready(function () {DDG.duckbar.future_signal_tab({signal:'high',from:'images'});});
vqd="4-211806513467419290146433347426418113271"</script></body></html>"""
ANOMALY_PAGE = b"""<html><body><div class="anomaly-modal__title">Unfortunately, bots use DuckDuckGo too.</div>
<div class="anomaly-modal__description">Please complete the following challenge</div>
<form id="challenge-form" action="/anomaly.js?sv=html"></form></body></html>"""


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def qs(request: HttpRequest) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query, keep_blank_values=True)


def test_first_request_is_the_token_page() -> None:
    req = DuckDuckGoSource().build_request("red ford focus", None, 100)
    parts = urlsplit(req.url)
    assert (parts.netloc, parts.path) == ("duckduckgo.com", "/")
    assert qs(req) == {"q": ["red ford focus"], "iax": ["images"], "ia": ["images"]}


@pytest.mark.parametrize(
    ("html", "token"),
    [
        (TOKEN_PAGE, "4-211806513467419290146433347426418113271"),
        (b"<script>var x = {vqd='3-99887766', q:'car'}</script>", "3-99887766"),
        (b'<link href="/d.js?q=car&vqd=4-5566778899&p=1">', "4-5566778899"),
    ],
)
def test_token_page_gives_the_ijs_request_as_cursor(html: bytes, token: str) -> None:
    src = DuckDuckGoSource()
    assert extract_vqd(html) == token
    page = src.parse(200, {}, html, None)
    assert page.problem is None and page.candidates == ()
    assert page.next_cursor is not None
    req = src.build_request("red ford focus", page.next_cursor, 100)
    parts = urlsplit(req.url)
    assert parts.path == "/i.js"
    params = qs(req)
    assert params["vqd"] == [token]
    assert params["q"] == ["red ford focus"]
    assert params["o"] == ["json"]
    assert params["l"] == ["us-en"]
    assert params["p"] == ["1"]  # moderate
    assert params["f"] == [",,,,,"]
    assert ("Referer", "https://duckduckgo.com/") in req.headers


def test_safe_search_and_filters_reach_the_ijs_request() -> None:
    src = DuckDuckGoSource(
        safe_search="off", filters=DuckDuckGoFilters(time="week", size="large", color="RED", layout="wide")
    )
    cursor = src.parse(200, {}, TOKEN_PAGE, None).next_cursor
    params = qs(src.build_request("q", cursor, 10))
    assert params["p"] == ["-1"]
    assert params["f"] == ["time:Week,size:Large,color:Red,,layout:Wide,"]


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"DuckDuckGoFilters\.size: 'gigantic' is not one of"):
        DuckDuckGoFilters(size="gigantic")
    with pytest.raises(ValueError, match="safe_search"):
        DuckDuckGoSource(safe_search="none")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "count"), [(RUST, 99), (MINECRAFT, 100)])
def test_ijs_captures(name: str, count: int) -> None:
    raw = body(name)
    expected = json.loads(raw)["results"]
    page = DuckDuckGoSource().parse(200, {}, raw, "i.js?o=json&vqd=4-1")
    assert page.problem is None
    assert len(page.candidates) == count
    for cand, item in zip(page.candidates, expected, strict=True):
        assert cand.url == item["image"]
        assert cand.thumbnail_url == item["thumbnail"]
        assert cand.page_url == item["url"]
        assert cand.title == item["title"].strip()
        assert (cand.width, cand.height) == (item["width"], item["height"])
        assert cand.source == "duckduckgo"


def test_rust_capture_first_last_and_next_page() -> None:
    src = DuckDuckGoSource()
    page = src.parse(200, {}, body(RUST), "i.js?o=json&vqd=4-1")
    assert page.candidates[0].url == "https://www.rust-lang.org/static/images/rust-social-wide.jpg"
    assert page.candidates[0].title == "Rust Programming Language"
    assert (page.candidates[0].width, page.candidates[0].height) == (2048, 1024)
    assert page.candidates[-1].url == "https://miro.medium.com/v2/resize:fit:1358/0*8Bb_5En1ozLXwivi"
    req = src.build_request("rust programming", page.next_cursor, 100)
    params = qs(req)
    assert urlsplit(req.url).path == "/i.js"
    assert params["s"] == ["100"]  # from the answer's "next"
    assert params["vqd"] == ["4-223413263753125317115557746668718077517"]  # from the answer's "vqd"
    assert params["q"] == ["rust programming"]
    assert params["o"] == ["json"]


def test_minecraft_next_page_keeps_safe_search_off() -> None:
    page = DuckDuckGoSource().parse(200, {}, body(MINECRAFT), None)
    params = qs(DuckDuckGoSource().build_request("minecraft", page.next_cursor, 100))
    assert params["p"] == ["-1"] and params["s"] == ["100"]
    assert params["vqd"][0].startswith("3-126127733100704423094592086514747332676")


def test_token_comes_from_the_cursor_when_the_answer_has_none() -> None:
    data = json.loads(body(RUST))
    del data["vqd"]
    page = DuckDuckGoSource().parse(200, {}, json.dumps(data).encode(), "i.js?o=json&vqd=4-42424242")
    assert qs(DuckDuckGoSource().build_request("x", page.next_cursor, 1))["vqd"] == ["4-42424242"]
    # and with no token anywhere there is no next page rather than a request that must fail
    assert DuckDuckGoSource().parse(200, {}, json.dumps(data).encode(), None).next_cursor is None


def test_no_results_capture() -> None:
    page = DuckDuckGoSource().parse(200, {}, body(NO_RESULTS), "i.js?o=json&vqd=3-1")
    assert page.problem == "no_results"
    assert page.candidates == () and page.next_cursor is None


def test_blocks() -> None:
    src = DuckDuckGoSource()
    assert src.parse(403, {}, b"", "i.js?vqd=4-1").problem == "blocked"  # stale token / rate limit
    assert src.parse(418, {}, b"", None).problem == "blocked"
    assert src.parse(200, {}, ANOMALY_PAGE, None).problem == "blocked"


def test_hostile_input() -> None:
    src = DuckDuckGoSource()
    assert src.parse(200, {}, b"", None).problem == "empty"
    assert src.parse(500, {}, b"{}", None).problem == "http_500"
    assert (
        src.parse(200, {}, b"<html><body>hello</body></html>", None).problem
        == "unknown_shape:no vqd token in html"
    )
    assert src.parse(200, {}, b'{"results": {"a": 1}}', None).problem == "unknown_shape:no results list"
    assert src.parse(200, {}, b"[1, 2, 3]", None).problem == "unknown_shape:no results list"
    assert src.parse(200, {}, b'{"results": [', None).problem == "unknown_shape:not json"
    assert src.parse(200, {}, bytes(range(256)), None).problem == "unknown_shape:not json"
    odd = b'{"results": [null, 1, {"image": "ftp://x/y.jpg"}, {"image": "https://a.example/b.jpg", "width": "x"}]}'
    page = src.parse(200, {}, odd, None)
    assert [c.url for c in page.candidates] == ["https://a.example/b.jpg"]
    assert page.candidates[0].width is None


def test_a_cursor_from_elsewhere_restarts_at_the_token_page() -> None:
    req = DuckDuckGoSource().build_request("car", "https://evil.example/i.js?vqd=1", 10)
    assert urlsplit(req.url).netloc == "duckduckgo.com" and urlsplit(req.url).path == "/"
    assert urlsplit(DuckDuckGoSource().build_request("car", "i.js?o=json", 10).url).path == "/"  # no token
