"""The sandbox's image hosts, access log, photo sets and process modes, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from helpers import IMAGES, SHARED
from PIL import Image

from carcrawl.sandbox import DEFAULT_PHOTO_DIR, AccessLog, Sandbox, SandboxProcess
from carcrawl.sandbox.photos import load_photos, sniff


def decodes(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as im:
        im.load()
        return im.size


# ------------------------------------------------------------------------------ access log
def test_access_log_concurrency_and_interval_math() -> None:
    log = AccessLog()
    for start, end in ((0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (3.0, 3.1)):
        log.record("a", "/x", start, end, 200)
    log.record("b", "/y", 0.0, 10.0, 200)
    assert log.max_concurrency("a") == 2  # (0.5,1.5) overlaps both neighbours, which only touch
    assert log.max_concurrency() == 3
    assert log.min_interval("a") == 0.5
    assert log.min_interval("b") is None
    assert log.counts() == {"a": 4, "b": 1} and log.hosts() == ["a", "b"]
    assert [r.start for r in log.requests("a")] == [0.0, 0.5, 1.0, 3.0]
    bounded = AccessLog(maxlen=3)
    for i in range(10):
        bounded.record("h", str(i), i, i + 0.5, 200)
    assert [r.path for r in bounded.requests()] == ["7", "8", "9"]
    log.clear()
    assert len(log) == 0 and log.max_concurrency("a") == 0


async def test_server_log_sees_real_concurrency_and_spacing() -> None:
    async with Sandbox(latency_ms=(300, 300), hosts=2, fault_rate=0.0) as sb, aiohttp.ClientSession() as http:
        host = sb.host_addresses[0]
        urls = [sb.layout.photo_url(i, host=0, token=f"c{i}") for i in range(5)]

        async def get(u: str) -> int:
            async with http.get(u) as r:
                await r.read()
                return r.status

        assert await asyncio.gather(*(get(u) for u in urls)) == [200] * 5
        assert sb.access_log.max_concurrency(host) == 5
        sb.access_log.clear()
        for u in urls[:3]:
            await get(u)
        log = sb.access_log
        assert log.max_concurrency(host) == 1
        assert log.min_interval(host) >= 0.3  # each request waited 300 ms server-side before the next began
        assert all(r.end - r.start >= 0.3 for r in log.requests(host))
        assert log.requests(sb.host_addresses[1]) == []


# ------------------------------------------------------------------------------ addresses
async def test_hosts_are_distinct_loopback_addresses() -> None:
    async with Sandbox(latency_ms=(0, 0), hosts=5, fault_rate=0.0) as sb, aiohttp.ClientSession() as http:
        addrs = sb.host_addresses
        assert addrs == [f"127.0.0.{i}" for i in range(2, 7)]
        peers = set()
        for addr, port in zip(addrs, sb.layout.host_ports, strict=True):
            reader, writer = await asyncio.open_connection(addr, port)
            peers.add(writer.get_extra_info("peername")[0])
            writer.write(f"GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n".encode())
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.") and addr.encode() in answer  # that address's own site
        assert peers == set(addrs)
        for u in sb.image_urls(10):
            async with http.get(u) as r:
                assert r.status == 200
        assert set(sb.access_log.hosts()) == set(addrs)
        assert all(urlsplit(u).hostname == "127.0.0.1" for u in sb.engine_urls.values())
        assert len(set(sb.engine_urls.values())) == 1  # one address for every engine
        async with http.get(sb.engine_url("bing") + "/images/async?q=x") as r:
            await r.read()
        assert sb.access_log.counts()["bing"] == 1
        async with http.get(f"http://{addrs[0]}:{sb.layout.host_ports[0]}/__stats") as r:
            stats = await r.json()
        assert stats["hosts"]["bing"] == 1 and stats["photos"] == len(sb.layout.photos)
        assert set(stats["engines"]) == {"bing", "duckduckgo", "openverse", "wikimedia", "google"}


def _free_port_block(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            socks = []
            for k in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    pytest.skip("no block of free ports")


async def test_a_fixed_port_is_used_by_every_site() -> None:
    port = _free_port_block(1)
    async with Sandbox(latency_ms=(0, 0), hosts=3, port=port) as sb:
        assert set(sb.layout.host_ports) == {port}
        # every engine answers on one address, so `crawl --sandbox URL` needs only that one
        assert set(sb.engine_urls.values()) == {f"http://127.0.0.1:{port}"}


# -------------------------------------------------------------------------- image serving
async def test_image_urls_spread_evenly_and_serve_real_photos() -> None:
    async with Sandbox(latency_ms=(0, 0), hosts=4, fault_rate=0.0) as sb, aiohttp.ClientSession() as http:
        urls = list(sb.image_urls(40))
        assert len(set(urls)) == 40
        assert set(Counter(urlsplit(u).hostname for u in urls).values()) == {10}
        assert list(sb.image_urls(5, start=38))[:2] == urls[38:40]
        for u in urls:
            async with http.get(u) as r:
                body = await r.read()
            t = sb.truth(u)
            assert r.status == 200 and t.kind == "image" and t.label in ("vehicle", "other")
            assert r.headers["Content-Type"] == "image/jpeg" and decodes(body)
        # a near-duplicate is a different file of the same photo, smaller
        async with http.get(sb.layout.photo_url(0, "n")) as r:
            near = await r.read()
        async with http.get(sb.layout.photo_url(0, "o")) as r:
            orig = await r.read()
        assert near != orig and decodes(near)[0] < decodes(orig)[0]


async def test_latency_and_bandwidth_are_applied_server_side() -> None:
    async with Sandbox(latency_ms=(40, 60), hosts=1, fault_rate=0.0, bandwidth=1_000_000) as sb:
        async with aiohttp.ClientSession() as http:
            sizes = {}
            for u in sb.image_urls(3):
                async with http.get(u) as r:
                    sizes[urlsplit(u).path] = len(await r.read())
                    assert int(r.headers["Content-Length"]) == sizes[urlsplit(u).path]
        for rec in sb.access_log.requests(sb.host_addresses[0]):
            # 40 ms of latency plus the body at 1 MB/s: a lower bound the server's own sleeps guarantee
            assert rec.end - rec.start >= 0.040 + sizes[rec.path] / 1_000_000 * 0.99


async def test_size_mix_and_a_custom_photo_folder(tmp_path: Path) -> None:
    src = sorted(DEFAULT_PHOTO_DIR.glob("vehicle__*.jpg"))[-1].read_bytes()
    (tmp_path / "vehicle").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "vehicle" / "a.jpg").write_bytes(src)
    with Image.open(io.BytesIO(src)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "PNG")
    (tmp_path / "other" / "b.png").write_bytes(buf.getvalue())
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    async with Sandbox(photos=tmp_path, latency_ms=(0, 0), hosts=2, fault_rate=0.0) as sb:
        assert [(p.name, p.label) for p in sb.layout.photos] == [("b.png", "other"), ("a.jpg", "vehicle")]
        async with aiohttp.ClientSession() as http:
            png_url = sb.layout.photo_url(0)
            async with http.get(png_url) as r:
                assert png_url.endswith(".png") and r.headers["Content-Type"] == "image/png"
                assert sniff(await r.read()) == "png"
            sizes = []
            for u in sb.image_urls(20, size_mix=True):
                async with http.get(u) as r:
                    body = await r.read()
                    assert r.status == 200 and decodes(body)
                    sizes.append(len(body))
        assert min(sizes) < 60_000 and max(sizes) > 500_000 and max(sizes) < 2_500_000


def test_photo_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="photo folder not found"):
        load_photos(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found"):
        load_photos(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": 0}, "hosts must be"),
        ({"hosts": 251}, "hosts must be"),
        ({"latency_ms": (50, 10)}, "latency_ms"),
        ({"bandwidth": 0}, "bandwidth"),
        ({"fault_rate": 1.5}, "fault_rate"),
        ({"results_per_query": -1}, "results_per_query"),
        ({"block_after": -1}, "block_after"),
        ({"demo_faults": ("nope",)}, "unknown fault"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sandbox(**kwargs)  # type: ignore[arg-type]


def test_layout_needs_a_started_sandbox() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        Sandbox().engine_url("bing")


# ------------------------------------------------------------------------ shipped photo set
def test_shipped_photo_set_is_small_labelled_and_credited() -> None:
    files = sorted(p for p in DEFAULT_PHOTO_DIR.iterdir() if p.suffix == ".jpg")
    assert 24 <= len(files) <= 40
    assert sum(p.stat().st_size for p in files) < 6 * 1024 * 1024
    labels = Counter(p.name.split("__", 1)[0] for p in files)
    assert set(labels) <= {"vehicle", "other", "interior"} and labels["vehicle"] >= 10 and labels["other"] >= 10
    for p in files:
        body = p.read_bytes()
        assert sniff(body) == "jpeg" and len(body) <= 155 * 1024, p.name
        w, h = decodes(body)
        assert min(w, h) >= 150, p.name
    credits = (DEFAULT_PHOTO_DIR / "CREDITS.md").read_text()
    rows = {m.group(1): m for m in re.finditer(r"^\| (\S+\.jpg) \| https://github\.com/(\S+) \| `([^`]+)` \| ([^|]+) \|", credits, re.M)}
    assert set(rows) == {p.name for p in files}
    allowed = ("MIT", "Apache-2.0", "BSD", "YOLO License", "Unlicense", "CC0")
    assert all(m.group(4).strip().startswith(allowed) for m in rows.values())
    sources = SHARED / "images" / "SOURCES.csv"
    if sources.exists():  # the credits agree with where the photos came from
        with sources.open(newline="") as f:
            by_path = {(r["repo"], r["path"]): r for r in csv.DictReader(f)}
        for name, m in rows.items():
            origin = by_path[(m.group(2), m.group(3))]
            assert origin["license_of_repo"] == m.group(4).strip() and name.startswith(origin["folder"] + "__")
            assert not origin["license_of_repo"].startswith(("unknown", "AGPL", "GPL"))


# --------------------------------------------------------------------------- process modes
def test_sandbox_process_serves_and_reports_cpu() -> None:
    proc = SandboxProcess(hosts=2, latency_ms=(0, 0), fault_rate=0.0)
    with proc as layout:
        assert proc.pid != os.getpid()
        urls = list(layout.image_urls(20))

        async def fetch_all() -> list[int]:
            async with aiohttp.ClientSession() as http:
                out = []
                for u in urls:
                    async with http.get(u) as r:
                        await r.read()
                        out.append(r.status)
                return out

        assert asyncio.run(fetch_all()) == [200] * 20
        stats = proc.stats()
        assert sum(stats["hosts"].values()) == 20
        assert proc.cpu_seconds_now() is not None
    assert proc.cpu_seconds is not None and proc.cpu_seconds > 0


def test_sandbox_process_start_failure_is_reported() -> None:
    with pytest.raises(RuntimeError, match="hosts must be"):
        SandboxProcess(hosts=0).start()


def test_standalone_entry_point_prints_urls_and_stops_on_sigint() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "carcrawl.sandbox", "--hosts", "2", "--latency-ms", "0", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("example fault URL"):
                break
        text = "".join(lines)
        bing = re.search(r"--sandbox (http://127\.0\.0\.1:\d+)", text)
        assert bing and "127.0.0.2:" in text and "127.0.0.3:" in text, text

        async def ask() -> bytes:
            async with aiohttp.ClientSession() as http, http.get(bing.group(1) + "/images/async?q=van") as r:
                return await r.read()

        assert b'class="iusc"' in asyncio.run(ask())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.usefixtures("shared")
async def test_the_shared_photo_folder_serves_with_its_labels() -> None:
    async with Sandbox(photos=IMAGES, latency_ms=(0, 0), hosts=2, fault_rate=0.0) as sb:
        labels = Counter(p.label for p in sb.layout.photos)
        assert labels["vehicle"] > 50 and labels["other"] > 50 and labels["interior"] >= 1
        assert json.dumps(sb.stats())  # serialisable
