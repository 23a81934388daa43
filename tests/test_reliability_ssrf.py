"""SSRF guard: URLs a stranger chose never reach this machine's loopback, private network, link-local
(cloud metadata), multicast or reserved addresses -- whatever spelling the URL uses, after DNS, and
on every redirect hop. A real server listens on loopback and counts what reaches it: nothing may."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from helpers import carcrawl_cmd, image_shas, serve

from carcrawl.config import DownloadSettings
from carcrawl.models import Failure
from carcrawl.net import AddressGuard, HttpClient

BLOCKED = [
    "127.0.0.1", "127.1.2.3", "0.0.0.0", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "198.18.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "192.0.2.1", "::1", "::", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fe80::1", "fe80::1%eth0", "fc00::1",
    "fd12:3456::1", "ff02::1", "2001:db8::1", "64:ff9b::7f00:1", "2002:7f00:1::1", "not-an-address",
]
ALLOWED = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", BLOCKED)
def test_guard_blocks_every_non_global_range(address: str) -> None:
    assert AddressGuard().is_blocked(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_guard_lets_public_addresses_through(address: str) -> None:
    assert not AddressGuard().is_blocked(address)


def test_an_explicit_allowlist_opens_only_what_it_names() -> None:
    g = AddressGuard(["127.0.0.2/32"])
    assert not g.is_blocked("127.0.0.2")
    assert g.is_blocked("127.0.0.1") and g.is_blocked("10.0.0.1")


class Target:
    """A real server on 127.0.0.1 and [::1] that counts every request that reaches it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.v4 = ""
        self.v6 = ""

    def routes(self, app: web.Application) -> None:
        async def any_path(request: web.Request) -> web.Response:
            self.hits.append(request.path_qs)
            return web.Response(body=b"\xff\xd8\xff\xe0" + bytes(200), content_type="image/jpeg")

        app.router.add_get("/{tail:.*}", any_path)


@pytest_asyncio.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    async with serve(t.routes, "127.0.0.1") as v4, serve(t.routes, "::1") as v6:
        t.v4, t.v6 = v4, v6
        yield t


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def spellings(t: Target) -> list[str]:
    """The same loopback target written every way a URL can write it."""
    p4, p6 = _port(t.v4), _port(t.v6)
    return [
        f"http://127.0.0.1:{p4}/a.jpg",
        f"http://localhost:{p4}/b.jpg",  # a name that resolves to loopback: caught after DNS
        f"http://2130706433:{p4}/c.jpg",  # decimal
        f"http://0177.0.0.1:{p4}/d.jpg",  # octal
        f"http://0x7f.0.0.1:{p4}/e.jpg",  # hex
        f"http://127.1:{p4}/f.jpg",  # short form
        f"http://0.0.0.0:{p4}/g.jpg",
        f"http://[::1]:{p6}/h.jpg",
        f"http://[::ffff:127.0.0.1]:{p4}/i.jpg",
        f"http://[::ffff:7f00:1]:{p4}/j.jpg",
        f"http://user:pw@127.0.0.1:{p4}/k.jpg",
        f"http://127.0.0.1.:{p4}/l.jpg",  # trailing dot
    ]


async def test_every_spelling_of_loopback_is_refused_and_nothing_arrives(target: Target) -> None:
    async with HttpClient(DownloadSettings(per_host_interval=0.0), "carcrawl-test") as client:
        for i, url in enumerate(spellings(target)):
            got = await client.fetch_image(i, url)
            assert isinstance(got, Failure) and got.reason == "blocked_address", (url, got)
    assert target.hits == []


def redirector(target: Target) -> object:
    p4, p6 = _port(target.v4), _port(target.v6)
    hops = {
        "v4": f"http://127.0.0.1:{p4}/x.jpg",
        "name": f"http://localhost:{p4}/x.jpg",
        "v6": f"http://[::1]:{p6}/x.jpg",
        "mapped": f"http://[::ffff:127.0.0.1]:{p4}/x.jpg",
        "decimal": f"http://2130706433:{p4}/x.jpg",
        "meta": "http://169.254.169.254/latest/meta-data/",
        "lan": "http://192.168.1.1/x.jpg",
    }

    def routes(app: web.Application) -> None:
        async def hop(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            n = int(request.query.get("n", "0"))
            if n < 2:  # a couple of allowed hops first: the guard must hold on every one
                raise web.HTTPFound(f"/r/{name}?n={n + 1}")
            raise web.HTTPFound(hops[name])

        app.router.add_get("/r/{name}", hop)

    routes.hops = hops  # type: ignore[attr-defined]
    return routes


async def test_redirects_to_private_addresses_are_refused_on_every_hop(target: Target) -> None:
    routes = redirector(target)
    async with serve(routes, "127.0.0.2") as base:  # type: ignore[arg-type]
        settings = DownloadSettings(per_host_interval=0.0, respect_robots=False)
        async with HttpClient(settings, "carcrawl-test", allow_networks=["127.0.0.2/32"]) as client:
            for i, name in enumerate(routes.hops):  # type: ignore[attr-defined]
                got = await client.fetch_image(i, f"{base}/r/{name}")
                assert isinstance(got, Failure) and got.reason == "blocked_address", (name, got)
    assert target.hits == []


def test_fetch_cli_stores_nothing_and_status_counts_blocked(tmp_path: Path) -> None:
    urls = [
        "http://127.0.0.1:9/a.jpg", "http://localhost:9/b.jpg", "http://2130706433:9/c.jpg",
        "http://0177.0.0.1:9/d.jpg", "http://0.0.0.0:9/e.jpg", "http://[::1]:9/f.jpg",
        "http://[::ffff:127.0.0.1]:9/g.jpg", "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/h.jpg", "http://[fe80::1]/i.jpg", "http://224.0.0.1/j.jpg",
    ]
    urls_file = tmp_path / "urls.txt"
    urls_file.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    subprocess.run([*carcrawl_cmd(), "fetch", str(urls_file), "--out", str(out), "--no-classify", "--quiet"],
                   check=True, timeout=120, cwd=tmp_path)
    st = json.loads(subprocess.run([*carcrawl_cmd(), "status", "--json", str(out)], check=True, timeout=60,
                                   capture_output=True, text=True).stdout)
    assert st["reasons"] == {"blocked_address": len(urls)}
    assert not image_shas(out)
