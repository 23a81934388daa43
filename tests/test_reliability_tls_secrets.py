"""TLS is verified by default (a self-signed host is refused with ``tls_error``), and API keys come
from the environment and never appear in the terminal output, the logs, the checkpoint or the
exported dataset's files -- even when the API answers with errors that echo the request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from helpers import FIXTURES, IMAGES, carcrawl_cmd, sandbox_in_thread

from carcrawl.config import load_settings
from carcrawl.models import Labels
from carcrawl.pipeline import Job, Pipeline
from carcrawl.urllists import UrlRow

pytestmark = pytest.mark.usefixtures("shared")

SECRET = "k3y-5ecret-0f-the-user-9f8e7d"


async def test_tls_is_verified_by_default_and_only_off_when_asked(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0) as sb:
        if "tls_self_signed" not in sb.layout.all_faults:
            pytest.skip("no openssl command to make the sandbox's self-signed certificate")
        urls = [sb.fault_url("tls_self_signed", i) for i in range(3)]
        rows = [UrlRow(u, Labels(), i) for i, u in enumerate(urls)]
        results = {}
        for verify in (True, False):
            overrides: dict[str, object] = {"crawl.out": str(tmp_path / f"v{verify}"), "classify.enabled": False,
                                            "crawl.allow_networks": ["127.0.0.0/8"], "download.per_host_interval": 0.0}
            if not verify:
                overrides["download.verify_tls"] = False
            s = load_settings(None, overrides)
            assert s.download.verify_tls is verify
            results[verify] = await Pipeline(s, Job(urls=lambda: iter(rows), fingerprint="t"), fresh=True).run()
    assert results[True].status["reasons"] == {"tls_error": 3}
    assert results[True].status["images"]["by_state"] == {}
    assert results[False].status["candidates"]["by_state"] == {"done": 3}


@contextmanager
def fake_flickr(image: bytes) -> Iterator[str]:
    """A Flickr REST API on loopback (the real captured response, its photo URLs pointing back
    here) that first fails in ways that echo the request -- the key included -- like real APIs do."""
    photos = json.loads((FIXTURES / "flickr" / "gois_flickr_photos_search_api_url_o_2021-07.json").read_text())
    seen = {"n": 0}
    base = {"url": ""}

    async def rest(request: web.Request) -> web.Response:
        seen["n"] += 1
        if seen["n"] == 1:  # a 500 whose body and headers echo the request, key and all
            return web.Response(status=500, text=f"internal error for {request.path_qs}",
                                headers={"X-Debug-Request": request.path_qs, "Retry-After": "0"})
        if seen["n"] == 2:
            body = {"stat": "fail", "code": 100, "message": f"Invalid API Key ({request.query.get('api_key')})"}
            return web.json_response(body)
        text = json.dumps(photos).replace("https://live.staticflickr.com", base["url"])
        return web.Response(text=text, content_type="application/json")

    async def img(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/services/rest/", rest)
    app.router.add_get("/{a}/{b}", img)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    base["url"] = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield base["url"]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def files_mentioning(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.timeout(180)
def test_the_flickr_key_never_reaches_output_logs_checkpoint_or_export(tmp_path: Path, vehicle_jpeg: bytes) -> None:
    with fake_flickr(vehicle_jpeg) as api:
        config = tmp_path / "c.toml"
        config.write_text(
            '[crawl]\nallow_networks = ["127.0.0.0/8"]\nsources = ["flickr"]\nper_query = 8\n'
            "[download]\nper_host_interval = 0.0\nmax_retries = 0\n"
            f'[engines.flickr]\nbase_url = "{api}"\nrate = 50.0\n'
        )
        env = {**os.environ, "FLICKR_API_KEY": SECRET, "COLUMNS": "200"}
        out = tmp_path / "out"
        crawl = subprocess.run(
            [*carcrawl_cmd(), "crawl", "--config", str(config), "--out", str(out), "--make", "ford", "--model",
             "mustang", "--max-queries", "3", "--no-classify"],
            capture_output=True, timeout=150, env=env, cwd=tmp_path,
        )
        assert crawl.returncode == 0, crawl.stderr[-3000:]
        status = subprocess.run([*carcrawl_cmd(), "status", str(out)], capture_output=True, timeout=60, env=env)
        status_json = subprocess.run([*carcrawl_cmd(), "status", "--json", str(out)], capture_output=True,
                                     timeout=60, env=env)
    st = json.loads(status_json.stdout)
    assert st["candidates"]["by_state"].get("done", 0) > 0, st  # the crawl really used the key and got results
    for stream in (crawl.stdout, crawl.stderr, status.stdout, status.stderr, status_json.stdout):
        assert SECRET.encode() not in stream
    assert files_mentioning(out, SECRET.encode()) == []
    export = subprocess.run([*carcrawl_cmd(), "export", str(out), "--no-dedup"], capture_output=True, timeout=120,
                            env=env)
    assert export.returncode == 0, export.stderr[-2000:]
    assert SECRET.encode() not in export.stdout + export.stderr
    assert files_mentioning(out, SECRET.encode()) == []
