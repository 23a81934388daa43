"""The sandbox's search engines, fetched over real loopback HTTP: each speaks its real engine's
format (checked against the captured responses in ../shared/fixtures/search), pages
deterministically, reports query-dependent totals, and blocks when told to."""

from __future__ import annotations

import html
import importlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from helpers import FIXTURES
from selectolax.lexbor import LexborHTMLParser

from carcrawl.sandbox import Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")

Q = "red ford f-150 truck"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(latency_ms=(0, 0), hosts=4, seed=3) as sandbox:
        yield sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, params=params or None, allow_redirects=False) as r:
        return r.status, dict(r.headers), await r.read()


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared missing)")
    return path


def bing_m(body: bytes) -> list[dict[str, Any]]:
    """What a real-Bing parser does: every a.iusc's m attribute, HTML-unescaped, as JSON."""
    tree = LexborHTMLParser(body)
    return [json.loads(a.attributes["m"]) for a in tree.css("a.iusc")]


def bing_m_regex(body: bytes) -> list[dict[str, Any]]:
    """The other way scrapers read Bing: a regex over the raw HTML, then html.unescape."""
    return [json.loads(html.unescape(m)) for m in re.findall(r'class="iusc"[^>]*?\sm="([^"]*)"', body.decode())]


# ------------------------------------------------------------------------------------ Bing
async def test_bing_async_fragment_parses_like_the_real_capture(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    real = fixture("bing/phrona_bing_images_async_rust-programming.html").read_bytes()
    real_items = bing_m(real)
    assert len(real_items) == 35 and bing_m_regex(real) == real_items  # both readers agree on the capture

    status, headers, body = await get(http, sb.engine_url("bing") + "/images/async", q=Q, first="1", count="35")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    items = bing_m(body)
    assert len(items) == 35
    assert bing_m_regex(body) == items
    assert set(real_items[0]) <= set(items[0]), "the sandbox's m JSON lacks keys the real one has"
    expected = sb.results("bing", Q)[:35]
    assert [i["murl"] for i in items] == [e.url for e in expected]
    assert all(urlsplit(i["murl"]).hostname in sb.host_addresses for i in items)
    assert all(i["turl"].startswith("http://127.0.0.") and i["t"] for i in items)
    # sizes ride on the detail link as in the real page
    hrefs = [a.attributes["href"] for a in LexborHTMLParser(body).css("a.iusc")]
    assert all(parse_qs(urlsplit(h).query)["expw"][0].isdigit() for h in hrefs)
    tree = LexborHTMLParser(body)
    assert tree.css_first("ul.dgControl_list") is not None
    assert "first=36" in tree.css_first("[data-nextUrl]").attributes["data-nexturl"]


async def test_bing_pages_tile_the_result_list_and_repeat_exactly(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    base = sb.engine_url("bing") + "/images/async"
    seen: list[str] = []
    first = 1
    while True:
        _, _, body = await get(http, base, q=Q, first=str(first), count="15")
        items = bing_m(body)
        if not items:
            break
        seen += [i["murl"] for i in items]
        first += len(items)
    assert seen == [r.url for r in sb.results("bing", Q)]
    assert len(seen) == sb.results_per_query
    again = (await get(http, base, q=Q, first="16", count="15"))[2]
    assert again == (await get(http, base, q=Q, first="16", count="15"))[2]


async def test_bing_full_search_page(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    status, _, body = await get(http, sb.engine_url("bing") + "/images/search", q=Q, first="1")
    assert status == 200
    tree = LexborHTMLParser(body)
    assert tree.css_first("title").text().startswith(Q)
    assert tree.css_first("#sb_form_q").attributes["value"] == Q
    assert len(bing_m(body)) == 35


async def test_bing_parser_of_the_project_reads_the_sandbox(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    bing = importlib.import_module("carcrawl.sources.bing")
    src = bing.BingSource(base_url=sb.engine_url("bing"))
    cursor, urls = None, []
    for _ in range(5):
        req = src.build_request(Q, cursor, 35)
        status, headers, body = await get(http, req.url)
        page = src.parse(status, headers, body, cursor)
        urls += [c.url for c in page.candidates]
        if page.problem or page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert urls == [r.url for r in sb.results("bing", Q)]
    assert page.candidates == () and page.problem == "no_results"  # the page after the last


# ------------------------------------------------------------------------------ DuckDuckGo
async def test_duckduckgo_vqd_flow_and_json_shape(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    real = json.loads(fixture("duckduckgo/phrona_ddg_images_ijs_rust-programming.json").read_bytes())
    base = sb.engine_url("duckduckgo")
    status, _, page = await get(http, base + "/", q=Q, iax="images", ia="images")
    assert status == 200
    m = re.search(rb'vqd="(4-\d+)"', page)
    assert m, "landing page carries no vqd token"
    vqd = m.group(1).decode()

    urls: list[str] = []
    params: dict[str, str] = {"q": Q, "o": "json", "p": "1", "s": "0", "vqd": vqd, "f": ",,,,,", "l": "us-en"}
    while True:
        status, headers, body = await get(http, base + "/i.js", **params)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        data = json.loads(body)
        assert set(real) - {"query_expansions", "next"} <= set(data)
        assert set(data["results"][0]) == set(real["results"][0])
        assert data["vqd"] == {"red%20ford%20f-150%20truck": vqd}
        urls += [r["image"] for r in data["results"]]
        if "next" not in data:
            break
        nxt = parse_qs(urlsplit(data["next"]).query)
        params = {k: v[0] for k, v in nxt.items()} | {"vqd": vqd, "f": ",,,,,"}
    assert urls == [r.url for r in sb.results("duckduckgo", Q)]


async def test_duckduckgo_refuses_a_wrong_or_missing_vqd(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    base = sb.engine_url("duckduckgo") + "/i.js"
    _, _, page = await get(http, sb.engine_url("duckduckgo") + "/", q="other query")
    other_vqd = re.search(rb'vqd="(4-\d+)"', page).group(1).decode()  # type: ignore[union-attr]
    assert (await get(http, base, q=Q, o="json", vqd="4-123"))[0] == 403
    assert (await get(http, base, q=Q, o="json"))[0] == 403
    assert (await get(http, base, q=Q, o="json", vqd=other_vqd))[0] == 403  # a token is per query


# ------------------------------------------------------------------------------- Openverse
async def test_openverse_json_shape_headers_and_paging(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    real = json.loads(fixture("openverse/openverse_tape_q-cat_page3_2024-01-01.json").read_bytes())
    real_headers = json.loads(fixture("openverse/openverse_tape_q-cat_page3_2024-01-01.headers.json").read_bytes())
    base = sb.engine_url("openverse") + "/v1/images/"
    status, headers, body = await get(http, base, q=Q, page="1", page_size="20")
    assert status == 200
    data = json.loads(body)
    assert set(real) <= set(data)
    assert set(real["results"][0]) <= set(data["results"][0])
    for k in (k for k in real_headers["headers"] if k.startswith("x-ratelimit")):
        assert k in {h.lower() for h in headers}, k
    item = data["results"][0]
    assert item["license"] and item["license_url"].startswith("https://creativecommons.org/")
    assert item["attribution"] and item["creator"]
    expected = sb.results("openverse", Q)
    assert data["result_count"] >= len(expected) and data["page_count"] == -(-len(expected) // 20)
    urls = [r["url"] for r in data["results"]]
    for page in range(2, data["page_count"] + 1):
        urls += [r["url"] for r in json.loads((await get(http, base, q=Q, page=str(page), page_size="20"))[2])["results"]]
    assert urls == [r.url for r in expected]
    assert (await get(http, base, q=Q, page=str(data["page_count"] + 1), page_size="20"))[0] == 404


async def test_a_query_with_no_results(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    real = json.loads(fixture("openverse/openverse_tape_q-querywithnoresults_2024.json").read_bytes())
    _, _, body = await get(http, sb.engine_url("openverse") + "/v1/images/", q="querywithnoresults")
    data = json.loads(body)
    assert {k: data[k] for k in ("result_count", "page_count", "results")} == {
        k: real[k] for k in ("result_count", "page_count", "results")
    }


# ------------------------------------------------------------------------------- Wikimedia
WM = {
    "action": "query",
    "format": "json",
    "generator": "search",
    "gsrnamespace": "6",
    "prop": "imageinfo",
    "iiprop": "url|size|mime|extmetadata",
    "gsrinfo": "totalhits",
}


async def test_wikimedia_generator_search_shape_and_continue(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    real = json.loads(fixture("wikimedia/mediasearch_generator-search_q-cat_image.json").read_bytes())
    real_page = next(iter(real["query"]["pages"].values()))
    base = sb.engine_url("wikimedia") + "/w/api.php"
    params = WM | {"gsrsearch": Q, "gsrlimit": "15"}
    urls: list[str] = []
    totals = set()
    while True:
        status, _, body = await get(http, base, **params)
        assert status == 200
        data = json.loads(body)
        totals.add(data["query"]["searchinfo"]["totalhits"])
        pages = sorted(data["query"]["pages"].values(), key=lambda p: p["index"])
        for p in pages:
            assert {"pageid", "ns", "title", "index", "imageinfo"} <= set(p) and p["ns"] == 6
            info = p["imageinfo"][0]
            assert {"size", "width", "height", "url", "descriptionurl", "mime"} <= set(real_page["imageinfo"][0])
            assert {"size", "width", "height", "url", "descriptionurl", "mime"} <= set(info)
            assert info["extmetadata"]["LicenseShortName"]["value"] and "<a " in info["extmetadata"]["Artist"]["value"]
            urls.append(info["url"])
        if "continue" not in data:
            assert "batchcomplete" in data
            break
        assert set(data["continue"]) == set(real["continue"])
        params = params | {k: str(v) for k, v in data["continue"].items()}
    assert urls == [r.url for r in sb.results("wikimedia", Q)]
    assert len(totals) == 1 and totals.pop() >= len(urls)


async def test_wikimedia_formatversion_2_and_errors(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    base = sb.engine_url("wikimedia") + "/w/api.php"
    data = json.loads((await get(http, base, **WM, gsrsearch=Q, formatversion="2"))[2])
    assert isinstance(data["query"]["pages"], list)
    err = json.loads((await get(http, base, **(WM | {"action": "parse"}), gsrsearch=Q))[2])
    assert err["error"]["code"] == "badvalue"
    err = json.loads((await get(http, base, **WM))[2])
    assert err["error"]["code"] == "missingparam"


# ---------------------------------------------------------------------------------- Google
def google_chunks(body: bytes) -> list[str]:
    text = body.decode().rstrip("\n")  # the capture was saved with a final newline
    assert text.startswith(")]}'\n")
    pos, out = 5, []
    while pos < len(text):
        semi = text.index(";", pos)
        n = int(text[pos:semi], 16)
        out.append(text[semi + 1 : semi + 1 + n])
        pos = semi + 1 + n
        if n == 0:
            break
    assert pos == len(text)
    return out


async def test_google_ichunk_framing_like_the_capture(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    real = google_chunks(fixture("google/gois_google_images_ichunk_rg_meta_2021-07.txt").read_bytes())
    real_meta = json.loads(LexborHTMLParser(real[2]).css_first("div.rg_meta").text())
    _, _, body = await get(http, sb.engine_url("google") + "/search", q=Q, tbm="isch", asearch="ichunk", ijn="0")
    chunks = google_chunks(body)
    assert len(chunks) == len(real) and chunks[1] == "[2]" and chunks[-1] == ""
    metas = [json.loads(d.text()) for d in LexborHTMLParser(chunks[2]).css("div.rg_meta")]
    assert metas and set(metas[0]) <= set(real_meta)
    assert {"ou", "tu", "ru", "pt", "ow", "oh"} <= set(metas[0])
    assert [m["ou"] for m in metas] == [r.url for r in sb.results("google", Q)[: len(metas)]]


# ------------------------------------------------------------------- totals and determinism
async def test_totals_prefer_the_models_real_body_type(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    async def totals(q: str) -> tuple[int, int]:
        ov = json.loads((await get(http, sb.engine_url("openverse") + "/v1/images/", q=q))[2])["result_count"]
        wm = json.loads((await get(http, sb.engine_url("wikimedia") + "/w/api.php", **WM, gsrsearch=q))[2])
        return ov, wm["query"]["searchinfo"]["totalhits"]

    for model, real_type in (("ford f-150", "truck"), ("honda odyssey", "van"), ("toyota rav4", "suv"),
                             ("toyota camry", "car")):
        ours = await totals(f"{model} {real_type}")
        for other in {"car", "suv", "truck", "van"} - {real_type}:
            theirs = await totals(f"{model} {other}")
            assert ours[0] > theirs[0] and ours[1] > theirs[1], (model, other, ours, theirs)
    assert await totals("audi a4 car") == await totals("audi a4 car")


async def test_results_are_deterministic_per_seed_and_differ_between_queries() -> None:
    async with Sandbox(latency_ms=(0, 0), hosts=4, seed=3) as a, Sandbox(latency_ms=(0, 0), hosts=4, seed=3) as b:
        def paths(s: Sandbox, q: str) -> list[str]:
            return [urlsplit(r.url).path for r in s.results("bing", q)]

        assert paths(a, Q) == paths(b, Q)
        assert paths(a, Q) != paths(a, "blue ford f-150 truck")
    async with Sandbox(latency_ms=(0, 0), hosts=4, seed=4) as c:
        assert paths(c, Q) != paths(a, Q)


async def test_results_hold_duplicates_near_duplicates_and_some_faults(sb: Sandbox) -> None:
    queries = [f"{c} ford mustang" for c in ("red", "blue", "black", "white", "silver")]
    items = [r for q in queries for r in sb.results("bing", q)]
    photos = [(r.photo, sb.truth(r.url).variant) for r in items if r.fault is None]
    assert len(set(photos)) < len(photos), "no exact duplicate under another URL"
    assert len({r.url for r in items}) == len(items), "the same URL listed twice by one engine"
    assert any(sb.truth(r.url).variant == "n" for r in items), "no near-duplicate re-encoding"
    faults = {r.fault for r in items if r.fault}
    assert faults and faults <= set(sb.demo_faults)
    labels = {sb.truth(r.url).label for r in items if r.fault is None}
    assert labels == {"vehicle", "other"}
    # engines overlap: the same URL is found by two engines
    assert set(r.url for r in sb.results("bing", Q)) & set(r.url for r in sb.results("duckduckgo", Q))


async def test_fault_rate_zero_gives_clean_results() -> None:
    async with Sandbox(latency_ms=(0, 0), hosts=2, fault_rate=0.0) as clean:
        items = [r for c in ("red", "blue", "green") for r in clean.results("bing", f"{c} van")]
        assert items and not any(r.fault or "/f/" in r.url for r in items)


# ---------------------------------------------------------------------------------- blocks
async def test_every_engine_blocks_after_n_requests_and_unblocks() -> None:
    async with Sandbox(latency_ms=(0, 0), hosts=2, block_after=2) as sb, aiohttp.ClientSession() as http:
        bing = sb.engine_url("bing") + "/images/async"
        for _ in range(2):
            assert bing_m((await get(http, bing, q=Q))[2])
        status, _, body = await get(http, bing, q=Q)
        assert status == 200 and not bing_m(body) and b"captcha" in body.lower()
        sb.set_blocked("bing", False)
        assert bing_m((await get(http, bing, q=Q))[2])

        sb.set_blocked("duckduckgo", True)
        assert (await get(http, sb.engine_url("duckduckgo") + "/", q=Q))[0] == 418
        vqd = __import__("carcrawl.sandbox.engines", fromlist=["x"]).ddg_vqd(Q, sb.seed)
        assert (await get(http, sb.engine_url("duckduckgo") + "/i.js", q=Q, o="json", vqd=vqd))[0] == 403

        sb.set_blocked("openverse", True)
        status, headers, body = await get(http, sb.engine_url("openverse") + "/v1/images/", q=Q)
        assert status == 429 and headers["Retry-After"] == "60" and b"throttled" in body

        sb.set_blocked("wikimedia", True)
        status, headers, body = await get(http, sb.engine_url("wikimedia") + "/w/api.php", **WM, gsrsearch=Q)
        assert json.loads(body)["error"]["code"] == "ratelimited" and headers["MediaWiki-API-Error"] == "ratelimited"

        sb.set_blocked("google", True)
        status, headers, _ = await get(http, sb.engine_url("google") + "/search", q=Q, tbm="isch")
        assert status == 302 and headers["Location"].startswith("/sorry/index")
        status, _, body = await get(http, sb.engine_url("google") + headers["Location"])
        real = fixture("google/phrona_google_images_blocked_sorry_page.html").read_bytes()
        assert status == 429
        assert b'id="captcha-form"' in body and b"unusual traffic from your computer network" in body
        assert body.split(b"<body")[0].count(b"<meta") == real.split(b"<body")[0].count(b"<meta")
        with pytest.raises(ValueError, match="unknown sandbox engine"):
            sb.set_blocked("altavista", True)
        assert sb.stats()["engines"]["google"]["blocked"] is True


# --------------------------------------------------------- the project's parsers, all engines
@pytest.mark.parametrize(
    ("module", "cls", "engine"),
    [
        ("carcrawl.sources.bing", "BingSource", "bing"),
        ("carcrawl.sources.duckduckgo", "DuckDuckGoSource", "duckduckgo"),
        ("carcrawl.sources.openverse", "OpenverseSource", "openverse"),
        ("carcrawl.sources.wikimedia", "WikimediaSource", "wikimedia"),
        ("carcrawl.sources.google", "GoogleSource", "google"),
    ],
)
async def test_project_sources_read_every_sandbox_engine(
    sb: Sandbox, http: aiohttp.ClientSession, module: str, cls: str, engine: str
) -> None:
    mod = importlib.import_module(module)
    src = getattr(mod, cls)(base_url=sb.engine_url(engine))
    cursor, urls, page = None, [], None
    for _ in range(10):
        req = src.build_request(Q, cursor, 20)
        status, headers, body = await get(http, req.url)
        page = src.parse(status, headers, body, cursor)
        assert page.problem in (None, "no_results"), page.problem
        urls += [c.url for c in page.candidates]
        if page.problem or page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert urls == [r.url for r in sb.results(engine, Q)]
