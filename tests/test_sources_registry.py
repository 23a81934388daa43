"""The source registry, ``parse_saved`` / ``parse_lines``, ``normalize_url``, and a hostile-input
matrix run against every registered source (none may raise, each must say what went wrong)."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from pathlib import Path

import pytest

from carcrawl.errors import InputFileError
from carcrawl.models import HttpRequest, SearchPage
from carcrawl.sources import (
    SOURCES,
    BingFilters,
    BingSource,
    DuckDuckGoFilters,
    make_source,
    normalize_url,
    parse_lines,
    parse_saved,
    redact_url,
)
from carcrawl.sources.base import SearchSource

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"),  # in CI a missing ../shared must fail
    reason=f"shared fixtures not found at {FIXTURES}",
)

SOURCE_OF_DIR = {
    "bing": "bing",
    "duckduckgo": "duckduckgo",
    "openverse": "openverse",
    "wikimedia": "wikimedia",
    "flickr": "flickr",
    "google": "google",
}
# (dir, file) -> number of candidates the capture holds
EXPECTED = {
    ("bing", "gois_bing_images_async_2021-07.html"): 150,
    ("bing", "phrona_bing_images_async_rust-programming.html"): 35,
    ("bing", "retrievalgo_bing_images_search_golang-gopher.html"): 47,
    ("duckduckgo", "phrona_ddg_images_ijs_rust-programming.json"): 99,
    ("duckduckgo", "duckduckscrape_ijs_q-minecraft_safeoff_2022.json"): 100,
    ("duckduckgo", "duckduckscrape_ijs_noresults_2022.json"): 0,
    ("openverse", "openverse_tape_q-cat_page2_2022-09-07.json"): 20,
    ("openverse", "openverse_tape_q-cat_page3_2024-01-01.json"): 20,
    ("openverse", "openversefrontend_mock_data_q-cat_2021.json"): 20,
    ("openverse", "openverse_tape_q-querywithnoresults_2024.json"): 0,
    ("openverse", "openverse_tape_detail_f9384235_2022.json"): 1,
    ("wikimedia", "mediasearch_generator-search_q-cat_image.json"): 40,
    ("wikimedia", "mediasearch_generator-search_empty-with-suggestion.json"): 0,
    ("wikimedia", "mediasearch_imageinfo-extmetadata_tired-cat.json"): 1,
    ("wikimedia", "openversecatalog_wmc_raw.json"): 28,
    ("wikimedia", "openversecatalog_wmc_pretty1.json"): 9,
    ("wikimedia", "openversecatalog_image_data_example.json"): 1,
    ("flickr", "gois_flickr_photos_search_api_url_o_2021-07.json"): 100,
    ("flickr", "openversecatalog_flickr_photos_search_example_pretty.json"): 30,
    ("google", "gois_google_images_ichunk_rg_meta_2021-07.txt"): 100,
    ("google", "phrona_google_images_blocked_sorry_page.html"): 0,
    ("google", "searx_google_images_async_rg_s_q-south_2016_excerpt.json"): 2,
    ("google", "searx_google_images_imgres_q-south_2015_excerpt.html"): 1,
}
PROBLEM_RE = re.compile(r"blocked|empty|no_results|http_\d{3}|unknown_shape:.+")


def is_known_problem(problem: str | None) -> bool:
    return problem is not None and PROBLEM_RE.fullmatch(problem) is not None


def test_registry_names_and_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLICKR_API_KEY", "test-key")
    assert set(SOURCES) == {"bing", "duckduckgo", "openverse", "wikimedia", "flickr", "google"}
    for name in SOURCES:
        src = make_source(name)
        assert isinstance(src, SearchSource)
        assert src.name == name
        assert isinstance(src.reports_total, bool)
        req = src.build_request("red ford focus", None, 20)
        assert isinstance(req, HttpRequest) and req.url.startswith("https://")
        local = make_source(name, base_url="http://127.0.0.1:8123")
        assert local.build_request("red ford focus", None, 20).url.startswith("http://127.0.0.1:8123/")
    assert {n for n in SOURCES if make_source(n).reports_total} == {"openverse", "wikimedia", "flickr"}


def test_make_source_errors_are_clear() -> None:
    with pytest.raises(
        ValueError, match="unknown search source 'yahoo'; allowed: bing, duckduckgo, openverse"
    ):
        make_source("yahoo")
    with pytest.raises(
        ValueError, match="search source 'bing': .*'colour'.*options are: base_url, market, filters"
    ):
        make_source("bing", colour="red")
    with pytest.raises(ValueError, match=r"BingFilters\.size"):
        make_source("bing", filters={"size": "enormous"})


def test_make_source_accepts_filter_tables_from_config() -> None:
    bing = make_source(" Bing ", market="de-DE", filters={"size": "large", "color": "red"})
    assert isinstance(bing, BingSource)
    assert bing.filters == BingFilters(size="large", color="red") and bing.market == "de-DE"
    ddg = make_source("duckduckgo", filters={"size": "large"}, safe_search="off")
    assert ddg.filters == DuckDuckGoFilters(size="Large")  # type: ignore[attr-defined]


@needs_fixtures
@pytest.mark.parametrize(("where", "count"), sorted(EXPECTED.items()))
def test_parse_saved_on_every_capture(where: tuple[str, str], count: int) -> None:
    folder, name = where
    page = parse_saved(SOURCE_OF_DIR[folder], (FIXTURES / folder / name).read_bytes())
    assert isinstance(page, SearchPage)
    assert len(page.candidates) == count
    if count == 0:
        assert is_known_problem(page.problem)
    else:
        assert page.problem is None


@needs_fixtures
def test_every_capture_is_covered() -> None:
    on_disk = {
        (p.parent.name, p.name)
        for p in FIXTURES.glob("*/*")
        if p.is_file() and not p.name.endswith(".headers.json") and p.name != "SOURCES.md"
    }
    assert on_disk == set(EXPECTED)


@needs_fixtures
def test_parse_lines_one_object_per_candidate_then_the_summary() -> None:
    path = FIXTURES / "openverse" / "openverse_tape_q-cat_page3_2024-01-01.json"
    lines = list(parse_lines("openverse", path))
    assert len(lines) == 21
    objs = [json.loads(line) for line in lines]
    first = objs[0]
    assert list(first) == [
        "url",
        "thumbnail",
        "page_url",
        "title",
        "width",
        "height",
        "license",
        "license_url",
        "creator",
        "attribution",
    ]
    assert first["url"] == "https://live.staticflickr.com/3313/3481540500_c846c62863_b.jpg"
    assert first["license"] == "CC BY 2.0" and first["width"] == 716
    assert objs[-1] == {"next_cursor": "4", "total_hits": 10000, "problem": None, "count": 20}


@needs_fixtures
def test_parse_lines_says_why_a_page_is_empty(tmp_path: Path) -> None:
    blocked = json.loads(
        list(parse_lines("google", FIXTURES / "google" / "phrona_google_images_blocked_sorry_page.html"))[-1]
    )
    assert blocked["problem"] == "blocked" and blocked["count"] == 0 and "block" in blocked["note"]
    none = json.loads(
        list(parse_lines("duckduckgo", FIXTURES / "duckduckgo" / "duckduckscrape_ijs_noresults_2022.json"))[
            -1
        ]
    )
    assert none["problem"] == "no_results" and "no (more) results" in none["note"]
    token_page = tmp_path / "ddg.html"
    token_page.write_bytes(b'<html><script>vqd="4-123456789"</script></html>')
    last = json.loads(list(parse_lines("duckduckgo", token_page))[-1])
    assert (
        last["problem"] is None and last["next_cursor"].startswith("i.js?") and "next_cursor" in last["note"]
    )
    garbage = tmp_path / "junk.bin"
    garbage.write_bytes(b"\x00\x01\x02 not a page")
    last = json.loads(list(parse_lines("bing", garbage))[-1])
    assert last["problem"].startswith("unknown_shape:") and "format" in last["note"]


def test_parse_lines_missing_file_and_bad_source(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot read"):
        list(parse_lines("bing", tmp_path / "nope.html"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown search source"):
        list(parse_lines("altavista", tmp_path / "x.json"))


def _hostile_bodies() -> dict[str, bytes]:
    rng = random.Random(1234)
    return {
        "empty": b"",
        "spaces": b" \r\n\t ",
        "binary": bytes(rng.randrange(256) for _ in range(4096)),
        "gzip": gzip.compress(b'{"results": [{"url": "https://a.example/x.jpg"}]}'),
        "utf16": '{"results": []}'.encode("utf-16"),
        "nul": b"\x00" * 1000,
        "json_null": b"null",
        "json_number": b"12345",
        "json_string": b'"hello"',
        "json_list": b"[[], {}, null]",
        "json_wrong_types": b'{"results": "x", "photos": 3, "query": [], "continue": 7, "next": 5, "page": "a"}',
        "json_deep": b"[" * 100_000 + b"]" * 100_000,
        "json_truncated": b'{"results": [{"url": "https://a.exa',
        "html_truncated": b'<html><body><div class="dgControl"><a class="iusc" m="{&quot;murl&quot;:&quot;htt',
        "html_no_results": b"<!DOCTYPE html><html><head><title>x</title></head><body><p>Nothing</p></body></html>",
        "xml": b'<?xml version="1.0"?><rsp stat="fail"><err code="100" msg="Invalid API Key"/></rsp>',
        "huge_attr": b'<a class="iusc" m="' + b"A" * 2_000_000 + b'"></a>',
    }


HOSTILE = _hostile_bodies()


@pytest.mark.parametrize("source_name", sorted(SOURCES))
@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("cursor", [None, "2"])
def test_hostile_bodies_never_raise(source_name: str, kind: str, cursor: str | None) -> None:
    src = make_source(source_name)
    page = src.parse(200, {}, HOSTILE[kind], cursor)
    assert isinstance(page, SearchPage)
    assert page.candidates == ()
    assert page.problem is None and page.next_cursor is not None or is_known_problem(page.problem), page


@pytest.mark.parametrize("source_name", sorted(SOURCES))
@pytest.mark.parametrize("status", [301, 404, 429, 500, 503])
def test_error_statuses_become_problems(source_name: str, status: int) -> None:
    page = make_source(source_name).parse(status, {"retry-after": "5"}, b"<html>error</html>", None)
    assert page.candidates == ()
    assert page.problem in (f"http_{status}", "blocked")


def test_normalize_url() -> None:
    assert normalize_url("HTTPS://Example.COM:443/A/b?Q=1#frag") == "https://example.com/A/b?Q=1"
    assert normalize_url("http://EXAMPLE.com:80") == "http://example.com/"
    assert normalize_url("http://example.com:8080/x") == "http://example.com:8080/x"
    assert (
        normalize_url("https://example.com:80/x") == "https://example.com:80/x"
    )  # not the default for https
    assert normalize_url("  http://[2001:DB8::1]:80/p#x ") == "http://[2001:db8::1]/p"
    # credentials are never part of the key (carcrawl never keeps them: carcrawl.urlsafety)
    assert normalize_url("http://User:Pw@Host.example/") == "http://host.example/"
    assert normalize_url("http://a.example/%7Euser?x=1&y=2") == "http://a.example/%7Euser?x=1&y=2"
    # the same image reached through two sources collapses to one key
    assert normalize_url("https://live.staticflickr.com/1/2_b.jpg#top") == normalize_url(
        "HTTPS://LIVE.STATICFLICKR.COM:443/1/2_b.jpg"
    )
    # not a URL: returned stripped, never an exception
    assert normalize_url("not a url#x") == "not a url"
    assert normalize_url("http://a.example:99999/") == "http://a.example:99999/"
    assert normalize_url("http://[::1/") == "http://[::1/"


def test_redact_url() -> None:
    url = "https://api.flickr.com/services/rest/?method=flickr.photos.search&api_key=abc123&text=car"
    assert (
        redact_url(url)
        == "https://api.flickr.com/services/rest/?method=flickr.photos.search&api_key=***&text=car"
    )
    assert redact_url("https://x.example/?q=1") == "https://x.example/?q=1"
