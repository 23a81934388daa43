"""Every fault the sandbox's image hosts can commit, seen from a real HTTP client on loopback.

One check per name in ``FAULTS`` (a test fails if a fault has no check), plus faults chosen per
host and the seeded chaos mix."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from carcrawl.sandbox import FAULTS, RECOVERABLE, Sandbox
from carcrawl.sandbox.photos import sniff

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(
        latency_ms=(0, 0), hosts=3, fault_delay_s=30.0, trickle_bps=40.0, robots_disallow_hosts=(2,)
    ) as sandbox:
        yield sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


def decodes(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as im:
        im.load()
        return im.size


async def fetch(http: aiohttp.ClientSession, url: str, **kw: object) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.get(url, allow_redirects=False, **kw) as r:  # type: ignore[arg-type]
        return r, await r.read()


# ------------------------------------------------------------------------- one check per fault
async def slow_first_byte(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await fetch(http, sb.fault_url("slow_first_byte"), timeout=aiohttp.ClientTimeout(sock_read=0.3))


async def trickle(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    got = bytearray()
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(sb.fault_url("trickle"), timeout=aiohttp.ClientTimeout(total=0.8)) as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) > 1000
            async for chunk in r.content.iter_any():
                got += chunk
    assert 0 < len(got) < 200  # ~40 bytes/s: headers at once, then a trickle


async def reset(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        await fetch(http, sb.fault_url("reset"))


async def short_body(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientPayloadError, match="[Cc]ontent.?[Ll]ength|not enough data|payload"):
        await fetch(http, sb.fault_url("short_body"))


def status_check(code: int) -> Callable[[Sandbox, aiohttp.ClientSession], Awaitable[None]]:
    async def check(sb: Sandbox, http: aiohttp.ClientSession) -> None:
        r, _ = await fetch(http, sb.fault_url(f"http_{code}"))
        assert r.status == code

    return check


async def http_429(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, _ = await fetch(http, sb.fault_url("http_429"))
    assert r.status == 429 and "Retry-After" not in r.headers


async def http_429_retry_after(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, _ = await fetch(http, sb.fault_url("http_429_retry_after"))
    assert r.status == 429 and r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) > 0


async def http_429_retry_date(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, _ = await fetch(http, sb.fault_url("http_429_retry_date"))
    assert r.status == 429
    when = parsedate_to_datetime(r.headers["Retry-After"])  # an HTTP-date, not seconds
    assert when.timestamp() > time.time() - 1


async def flaky_503(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    url = sb.fault_url("flaky_503", 5)
    statuses = []
    for _ in range(3):
        r, body = await fetch(http, url)
        statuses.append(r.status)
        if r.status == 503:
            assert r.headers["Retry-After"] == "1"
    assert statuses == [503, 503, 200] and decodes(body)
    assert (await fetch(http, sb.fault_url("flaky_503", 6)))[0].status == 503  # counted per URL
    r, _ = await fetch(http, sb.fault_url("flaky_503", 7) + "?n=1")
    assert r.status == 200


async def redirect_chain(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.get(sb.fault_url("redirect_chain")) as r:
        body = await r.read()
        hosts = [urlsplit(str(h.url)).hostname for h in r.history] + [r.url.host]
    assert r.status == 200 and len(r.history) == 3 and decodes(body)
    assert len(set(hosts)) > 1  # the chain crosses hosts


async def redirect_loop(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    url = sb.fault_url("redirect_loop")
    r1, _ = await fetch(http, url)
    r2, _ = await fetch(http, r1.headers["Location"])
    assert r1.status == r2.status == 302 and urlsplit(r2.headers["Location"]).query == "hop=0"
    with pytest.raises(aiohttp.TooManyRedirects):
        async with http.get(url, max_redirects=10):
            pass


async def redirect_private(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    targets = set()
    for i in range(4):
        r, _ = await fetch(http, sb.fault_url("redirect_private", i))
        assert r.status == 302
        addr = ipaddress.ip_address(urlsplit(r.headers["Location"]).hostname)
        assert (addr.is_private or addr.is_link_local) and not addr.is_loopback
        targets.add(str(addr))
    assert "10.0.0.1" in targets and "169.254.169.254" in targets


def not_image(fault: str, start: bytes) -> Callable[[Sandbox, aiohttp.ClientSession], Awaitable[None]]:
    async def check(sb: Sandbox, http: aiohttp.ClientSession) -> None:
        r, body = await fetch(http, sb.fault_url(fault))
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
        assert body.startswith(start) and sniff(body) is None

    return check


async def empty(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, body = await fetch(http, sb.fault_url("empty"))
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg" and body == b""


async def endless(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    got = 0
    async with http.get(sb.fault_url("endless")) as r:
        assert "Content-Length" not in r.headers
        first = await r.content.readexactly(3)
        assert first == b"\xff\xd8\xff"
        while got < 20 * 1024 * 1024:  # far past any sane cap, and still going
            got += len(await r.content.readany())
        assert not r.content.at_eof()
        r.close()


async def gzip_bomb(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, body = await fetch(http, sb.fault_url("gzip_bomb"))
    assert r.headers["Content-Encoding"] == "gzip" and r.headers["Content-Type"] == "image/jpeg"
    assert len(body) < 1024 * 1024
    d = zlib.decompressobj(31)
    inflated, data = 0, body
    while data:
        inflated += len(d.decompress(data, 8 * 1024 * 1024))
        data = d.unconsumed_tail
    assert inflated >= 200 * 1024 * 1024  # over 200 MiB of zeros from under 1 MiB


async def png_bomb(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, body = await fetch(http, sb.fault_url("png_bomb"))
    assert r.headers["Content-Type"] == "image/png" and sniff(body) == "png"
    assert body[12:16] == b"IHDR" and struct.unpack(">II", body[16:24]) == (50_000, 50_000)
    assert len(body) < 1024 * 1024
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    # and it is a complete, valid PNG stream: the IDAT inflates to exactly the raw size
    n = struct.unpack(">I", body[33:37])[0]
    assert body[37:41] == b"IDAT"
    d = zlib.decompressobj()
    inflated, data = 0, body[41 : 41 + n]
    while data:
        inflated += len(d.decompress(data, 32 * 1024 * 1024))
        data = d.unconsumed_tail
    assert d.eof and inflated == 50_000 * (1 + 50_000 // 8)
    assert body.endswith(b"IEND\xaeB`\x82")


async def truncated_jpeg(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, body = await fetch(http, sb.fault_url("truncated_jpeg"))
    assert sniff(body) == "jpeg" and not body.endswith(b"\xff\xd9")
    assert int(r.headers["Content-Length"]) == len(body)  # the transfer itself is complete
    with pytest.raises(OSError):
        decodes(body)


async def wrong_ext(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    url = sb.fault_url("wrong_ext")
    r, body = await fetch(http, url)
    assert url.endswith(".png") and r.headers["Content-Type"] == "image/png"
    assert sniff(body) == "jpeg" and decodes(body)


async def wrong_type(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    r, body = await fetch(http, sb.fault_url("wrong_type"))
    assert r.headers["Content-Type"] == "application/octet-stream" and sniff(body) == "jpeg" and decodes(body)


async def robots_disallowed(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    url = sb.fault_url("robots_disallowed")
    base = f"http://{urlsplit(url).netloc}"
    _, robots = await fetch(http, base + "/robots.txt")
    rp = RobotFileParser()
    rp.parse(robots.decode().splitlines())
    assert not rp.can_fetch("carcrawl", url)
    assert rp.can_fetch("carcrawl", next(sb.image_urls(1)))  # the rest of the host is allowed
    r, body = await fetch(http, url)
    assert r.status == 200 and decodes(body)  # the server serves it; obeying is the client's job
    # host 2 (127.0.0.4) was started with a robots.txt that disallows everything
    _, robots = await fetch(http, f"http://{sb.host_addresses[2]}:{sb.layout.host_ports[2]}/robots.txt")
    rp = RobotFileParser()
    rp.parse(robots.decode().splitlines())
    assert not rp.can_fetch("carcrawl", sb.layout.photo_url(0, host=2))


def robots_tag(value: str) -> Callable[[Sandbox, aiohttp.ClientSession], Awaitable[None]]:
    async def check(sb: Sandbox, http: aiohttp.ClientSession) -> None:
        r, body = await fetch(http, sb.fault_url(value))
        assert r.headers["X-Robots-Tag"] == value and decodes(body)

    return check


async def unresolvable(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    url = sb.fault_url("unresolvable", 3)
    assert urlsplit(url).hostname.endswith(".invalid")  # type: ignore[union-attr]
    with pytest.raises(aiohttp.ClientConnectorError):
        await fetch(http, url)


async def tls_self_signed(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    if "tls_self_signed" not in sb.layout.all_faults:
        pytest.skip("no openssl command to make the sandbox certificate")
    url = sb.fault_url("tls_self_signed", 1)
    assert url.startswith("https://")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await fetch(http, url)
    r, body = await fetch(http, url, ssl=False)
    assert r.status == 200 and decodes(body)


CHECKS: dict[str, Callable[[Sandbox, aiohttp.ClientSession], Awaitable[None]]] = {
    "slow_first_byte": slow_first_byte,
    "trickle": trickle,
    "reset": reset,
    "short_body": short_body,
    **{f"http_{c}": status_check(c) for c in (404, 410, 500, 502, 503)},
    "http_429": http_429,
    "http_429_retry_after": http_429_retry_after,
    "http_429_retry_date": http_429_retry_date,
    "flaky_503": flaky_503,
    "redirect_chain": redirect_chain,
    "redirect_loop": redirect_loop,
    "redirect_private": redirect_private,
    "html_as_jpeg": not_image("html_as_jpeg", b"<!DOCTYPE html>"),
    "json_as_jpeg": not_image("json_as_jpeg", b"{"),
    "text_as_jpeg": not_image("text_as_jpeg", b"Image not available"),
    "empty": empty,
    "endless": endless,
    "gzip_bomb": gzip_bomb,
    "png_bomb": png_bomb,
    "truncated_jpeg": truncated_jpeg,
    "wrong_ext": wrong_ext,
    "wrong_type": wrong_type,
    "robots_disallowed": robots_disallowed,
    "noai": robots_tag("noai"),
    "noimageai": robots_tag("noimageai"),
    "unresolvable": unresolvable,
    "tls_self_signed": tls_self_signed,
}


async def test_every_fault_has_a_check() -> None:
    assert set(CHECKS) == set(FAULTS)
    assert set(RECOVERABLE) <= set(FAULTS)


@pytest.mark.parametrize("fault", FAULTS)
async def test_fault(sb: Sandbox, http: aiohttp.ClientSession, fault: str) -> None:
    await CHECKS[fault](sb, http)


# ----------------------------------------------------------------------------- selection
async def test_unknown_fault_is_404_and_a_clear_error(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    base = f"http://{sb.host_addresses[0]}:{sb.layout.host_ports[0]}"
    assert (await fetch(http, base + "/f/no_such_fault/1.jpg"))[0].status == 404
    assert (await fetch(http, base + "/img/9999/o/x.jpg"))[0].status == 404
    assert (await fetch(http, base + "/img/0/zz/x.jpg"))[0].status == 404
    with pytest.raises(ValueError, match="unknown sandbox fault"):
        sb.fault_url("no_such_fault")


async def test_faults_per_host() -> None:
    async with (
        Sandbox(latency_ms=(0, 0), hosts=3, fault_rate=0.0, host_faults={1: "http_503"}) as sb,
        aiohttp.ClientSession() as http,
    ):
        for url in sb.image_urls(6):
            r, body = await fetch(http, url)
            if urlsplit(url).hostname == sb.host_addresses[1]:
                assert r.status == 503
            else:
                assert r.status == 200 and decodes(body)
    with pytest.raises(ValueError, match="host_faults"):
        Sandbox(hosts=2, host_faults={5: "http_503"})


async def test_chaos_mixes_every_kind_of_fault_reproducibly() -> None:
    async with Sandbox(latency_ms=(0, 0), hosts=2, chaos=True, fault_rate=0.5, seed=9) as a:
        urls = list(a.image_urls(400))
        faults = {a.truth(u).fault for u in urls} - {None}
        assert len(faults) > len(FAULTS) // 2
        assert 100 < sum(a.truth(u).kind == "fault" for u in urls) < 300
        assert list(a.image_urls(400)) == urls
        pool_faults = {r.fault for q in ("a van", "a car", "a truck") for r in a.results("bing", q)} - {None}
        assert pool_faults - set(a.demo_faults), "chaos search results use only the demo mix"
    async with Sandbox(latency_ms=(0, 0), hosts=2, fault_rate=0.5, seed=9) as demo:
        faults = {demo.truth(u).fault for u in demo.image_urls(400)} - {None}
        assert faults == set(demo.demo_faults)


async def test_every_url_from_fault_url_is_distinct_per_index(sb: Sandbox) -> None:
    urls = {sb.fault_url(f, i) for f in FAULTS for i in range(3)}
    assert len(urls) == len(FAULTS) * 3
    assert all(sb.truth(sb.fault_url(f)).fault == f for f in FAULTS)


async def test_the_tls_host_leaves_nothing_in_the_temp_folder(tmp_path: Path) -> None:
    """The self-signed certificate lives only while it loads: a sandbox process started and stopped
    with its TLS host leaves its temp folder as it found it."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make the sandbox certificate")
    script = (
        "import asyncio\n"
        "from carcrawl.sandbox import Sandbox\n"
        "async def main():\n"
        "    async with Sandbox(hosts=1, latency_ms=(0, 0)) as sb:\n"
        "        assert 'tls_self_signed' in sb.layout.all_faults\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []
