"""BingSource on the real captured Bing responses, on Bing's block page, and on hostile input."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from carcrawl.models import HttpRequest
from carcrawl.sources.bing import BingFilters, BingSource

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search" / "bing"
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"),  # in CI a missing ../shared must fail
    reason=f"shared fixtures not found at {FIXTURES}",
)

ASYNC_2021 = "gois_bing_images_async_2021-07.html"  # q=cats, count=150
ASYNC_RUST = "phrona_bing_images_async_rust-programming.html"  # q=rust programming, 35 results
FULL_PAGE = "retrievalgo_bing_images_search_golang-gopher.html"  # full /images/search page, 47 a.iusc

NEXT_URL_ATTR = re.compile(rb"data-nexturl=", re.IGNORECASE)
BING_CAPTCHA = b"""<!DOCTYPE html><html><head><title>Bing</title></head><body>
<div id="b_content"><h1>One last step</h1><p>Please solve the challenge below to continue.</p>
<iframe src="https://www.bing.com/turing/captcha/challenge?q=&amp;rid=1"></iframe></div></body></html>"""


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def murls(raw: bytes) -> list[str]:
    """The image URLs as a plain regex reads them from the raw capture (independent of the parser)."""
    return [html.unescape(m.decode()) for m in re.findall(rb"[{,]&quot;murl&quot;:&quot;(.*?)&quot;", raw)]


def qs(request: HttpRequest) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query, keep_blank_values=True)


@pytest.mark.parametrize(("name", "count"), [(ASYNC_2021, 150), (ASYNC_RUST, 35), (FULL_PAGE, 47)])
def test_every_result_of_each_capture_is_found(name: str, count: int) -> None:
    raw = body(name)
    page = BingSource().parse(200, {}, raw, None)
    assert page.problem is None
    assert len(page.candidates) == count
    assert [c.url for c in page.candidates] == murls(raw)
    for c in page.candidates:
        assert c.source == "bing"
        assert c.url.startswith(("http://", "https://"))
        assert c.thumbnail_url and c.thumbnail_url.startswith("https://")
        assert c.width and c.height  # from expw/exph on every result link
        assert c.title is None or ("\ue000" not in c.title and "\ue001" not in c.title)


def test_every_grid_result_has_a_landing_page() -> None:
    for name in (ASYNC_2021, ASYNC_RUST, FULL_PAGE):
        page = BingSource().parse(200, {}, body(name), None)
        grid = [c for c in page.candidates if c.page_url is not None]
        assert len(grid) == (35 if name == FULL_PAGE else len(page.candidates))  # cluster cards have none


def test_first_and_last_results_of_the_2021_async_capture() -> None:
    page = BingSource().parse(200, {}, body(ASYNC_2021), None)
    first, last = page.candidates[0], page.candidates[-1]
    assert first.url == (
        "https://i2-prod.glasgowlive.co.uk/incoming/article13072536.ece/ALTERNATES/s1200/pizapcom14954554058691.jpg"
    )
    # the title had Bing's private-use highlight marks around "cats"; they are gone
    assert first.title == "The Scottish SPCA has given these abandoned cats the best ..."
    assert first.thumbnail_url == "https://tse1.mm.bing.net/th?id=OIP.UMhQMMqC40jUjMBbITQ6hgHaD4&pid=15.1"
    assert first.page_url == (
        "http://www.glasgowlive.co.uk/news/glasgow-news/scottish-spca-given-abandoned-cats-13072490"
    )
    assert (first.width, first.height) == (1200, 630)
    assert last.url == "https://images.uncyc.org/commons/thumb/8/80/Hitler_cat.jpg/200px-Hitler_cat.jpg"
    assert (last.width, last.height) == (200, 224)


def test_full_search_page_includes_cluster_cards() -> None:
    page = BingSource().parse(200, {}, body(FULL_PAGE), None)
    first, last = page.candidates[0], page.candidates[-1]
    assert first.url == "https://vectorseek.com/wp-content/uploads/2023/03/Golang-Gopher-Logo-Vector.jpg"
    assert first.title == "Golang Gopher Logo PNG (Transparent) SVG AI – Free Download"
    assert (first.width, first.height) == (1000, 1000)
    assert last.url == "https://i.pinimg.com/originals/0e/2a/0c/0e2a0c6189bb11569a554664b37704fc.jpg"
    # the 12 cluster-card images carry no "t" title or turl: the link's label and <img> stand in
    card = page.candidates[14]  # the cluster block sits between grid rows
    assert (
        card.url
        == "https://ih1.redbubble.net/image.368231013.7258/flat,750x,075,f-pad,750x1000,f8f8f8.u3.jpg"
    )
    assert card.page_url is None
    assert card.title == '"Golang Gopher GO ,Lang Programming Programmer IT CS" Art Print by ...'
    assert card.thumbnail_url is not None and card.thumbnail_url.startswith(
        "https://th.bing.com/th/id/OIP.8d6wZrgP"
    )
    assert all(c.title for c in page.candidates)


def test_next_cursor_is_the_grids_own_next_url_and_is_followed() -> None:
    src = BingSource()
    page = src.parse(200, {}, body(ASYNC_RUST), None)
    assert page.next_cursor is not None and page.next_cursor.startswith("/images/async?")
    req = src.build_request("rust programming", page.next_cursor, 50)
    params = qs(req)
    assert urlsplit(req.url).path == "/images/async"
    assert params["first"] == ["36"]
    assert params["q"] == ["rust programming"]
    assert params["count"] == ["50"]  # ours, not the grid's 35
    assert params["mkt"] == ["en-US"]
    # Bing's state for "which images were shown already" goes back with the request
    assert params["imgbf"][0].startswith("DfCtqwgAAACQ")


def test_next_offset_without_a_next_url() -> None:
    raw = NEXT_URL_ATTR.sub(b"data-gone=", body(ASYNC_RUST))
    src = BingSource()
    assert src.parse(200, {}, raw, None).next_cursor == "36"  # first=1 + 35 results
    assert src.parse(200, {}, raw, "36").next_cursor == "71"
    assert qs(src.build_request("rust", "71", 35))["first"] == ["71"]


def test_full_page_fallback_offset_does_not_count_cluster_cards() -> None:
    raw = NEXT_URL_ATTR.sub(b"data-gone=", body(FULL_PAGE))
    assert BingSource().parse(200, {}, raw, None).next_cursor == "36"  # 47 - 12 cluster cards


def test_a_next_url_that_goes_backwards_is_ignored() -> None:
    page = BingSource().parse(200, {}, body(ASYNC_RUST), "100")  # the grid says first=36
    assert page.next_cursor == "135"


def test_size_falls_back_to_the_img_info_caption() -> None:
    src = BingSource()
    for name, expected in [(ASYNC_2021, (1200, 630)), (ASYNC_RUST, (700, 444))]:
        raw = body(name).replace(b"expw=", b"xxpw=")  # "1200 x 630 · jpeg" / "700×444"
        first = src.parse(200, {}, raw, None).candidates[0]
        assert (first.width, first.height) == expected


def test_build_request_first_page() -> None:
    req = BingSource().build_request("red ford focus", None, 35)
    parts = urlsplit(req.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "www.bing.com", "/images/async")
    params = qs(req)
    assert params == {"q": ["red ford focus"], "first": ["1"], "count": ["35"], "mkt": ["en-US"]}
    assert req.method == "GET"


def test_build_request_clamps_count_and_uses_base_url_and_market() -> None:
    src = BingSource(base_url="http://127.0.0.1:8080/", market="de-DE")
    req = src.build_request("x", "7", 1000)
    assert req.url.startswith("http://127.0.0.1:8080/images/async?")
    assert qs(req)["count"] == ["150"] and qs(req)["mkt"] == ["de-DE"] and qs(req)["first"] == ["7"]
    assert qs(src.build_request("x", None, 0))["count"] == ["1"]


def test_filters_become_qft() -> None:
    f = BingFilters(size="large", color="red", type="photo", layout="wide", license="public", age="week")
    qft = qs(BingSource(filters=f).build_request("car", None, 35))["qft"][0].split()
    assert qft == [
        "filterui:imagesize-large",
        "filterui:color2-FGcls_RED",
        "filterui:photo-photo",
        "filterui:aspect-wide",
        "filterui:license-L1",
        "filterui:age-lt10080",
    ]
    assert "qft" not in qs(BingSource(filters=BingFilters()).build_request("car", None, 35))


@pytest.mark.parametrize(
    ("field", "value"), [("size", "huge"), ("color", "RED"), ("license", "cc0"), ("age", 7)]
)
def test_bad_filter_value_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"BingFilters\.{field}: .* is not one of"):
        BingFilters(**{field: value})  # type: ignore[arg-type]


def test_block_page_is_blocked_whatever_the_status() -> None:
    src = BingSource()
    assert src.parse(200, {}, BING_CAPTCHA, None).problem == "blocked"
    assert src.parse(429, {}, BING_CAPTCHA, None).problem == "blocked"
    assert src.parse(200, {}, BING_CAPTCHA, None).blocked


def test_results_that_mention_captcha_are_not_a_block() -> None:
    raw = body(ASYNC_RUST) + b"<p>one last step: unusual traffic</p>"
    assert BingSource().parse(200, {}, raw, None).problem is None


def test_hostile_input() -> None:
    src = BingSource()
    assert src.parse(200, {}, b"", None).problem == "empty"
    assert src.parse(200, {}, b"  \n ", None).problem == "empty"
    assert src.parse(500, {}, b"<html>oops</html>", None).problem == "http_500"
    assert src.parse(200, {}, b'{"results": []}', None).problem == "unknown_shape:no a.iusc elements"
    garbage = bytes(range(256)) * 64
    assert src.parse(200, {}, garbage, None).problem.startswith("unknown_shape:")
    # a grid with no results left (past the end of the results)
    assert (
        src.parse(200, {}, b'<style>.iusc{}</style><div class="dgControl"></div>', None).problem
        == "no_results"
    )
    # a result link whose m attribute is not JSON
    broken = b'<a class="iusc" m="{not json" href="/x"></a><a class="iusc" m="[1,2]"></a>'
    assert src.parse(200, {}, broken, None).problem == "unknown_shape:2 a.iusc without usable m json"
    # an m whose murl is not an http(s) URL is skipped
    page = src.parse(
        200, {}, b'<a class="iusc" m="{&quot;murl&quot;:&quot;javascript:alert(1)&quot;}"></a>', None
    )
    assert page.candidates == ()


def test_truncated_capture_gives_the_results_before_the_cut() -> None:
    raw = body(ASYNC_2021)
    cut = raw[: len(raw) // 2]
    page = BingSource().parse(200, {}, cut, None)
    assert 0 < len(page.candidates) < 150
    assert [c.url for c in page.candidates] == murls(raw)[: len(page.candidates)]
