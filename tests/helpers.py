"""Plain test helpers (import with ``from helpers import ...``): paths and a real loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "images"
FIXTURES = SHARED / "fixtures" / "search"


@contextlib.asynccontextmanager
async def serve(routes: Callable[[web.Application], None], host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run a real aiohttp app on loopback; yields its base URL."""
    app = web.Application()
    routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def _loop_in_thread(name: str) -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a daemon thread, stopped and closed on the way out."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def serve_in_thread(routes: Callable[[web.Application], None], host: str = "127.0.0.1") -> Iterator[str]:
    """``serve`` on its own event loop in a background thread: the server goes on sending while
    the client's loop is busy (what fills a client's read buffer); yields its base URL."""
    with _loop_in_thread("server") as loop:
        entered = serve(routes, host)
        try:
            yield asyncio.run_coroutine_threadsafe(entered.__aenter__(), loop).result(30)
        finally:
            asyncio.run_coroutine_threadsafe(entered.__aexit__(None, None, None), loop).result(30)


@contextlib.contextmanager
def sandbox_in_thread(**kwargs: object) -> Iterator[Any]:
    """The real sandbox web on its own event loop in a background thread, so a crawler in this
    process or in a subprocess (which a test may SIGKILL) can use it, and its access log stays
    readable here."""
    from carcrawl.sandbox import Sandbox

    with _loop_in_thread("sandbox") as loop:
        sb = Sandbox(**kwargs)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(sb.start(), loop).result(60)
        try:
            yield sb
        finally:
            asyncio.run_coroutine_threadsafe(sb.stop(), loop).result(60)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def carcrawl_cmd() -> list[str]:
    return [sys.executable, "-m", "carcrawl.cli"]


def image_shas(out: Path) -> set[str]:
    """sha256 of every image file under out/images (excluding temp files)."""
    return {p.stem for p in (out / "images").glob("*/*/*.*")}


SANDBOX_ENGINES = ("bing", "duckduckgo", "openverse", "wikimedia")


def crawl_settings(out: Path, sb: Any | None = None, **overrides: object) -> Any:
    """Settings for an in-process crawl into ``out``: loopback allowed (explicitly), classify
    off, quick retries, and the sandbox's engines (fast rates) when ``sb`` is given."""
    from carcrawl.config import load_settings

    o: dict[str, object] = {
        "crawl.out": str(out),
        "crawl.allow_networks": ["127.0.0.0/8"],
        "classify.enabled": False,
        "download.backoff_base": 0.05,
        "download.max_retries": 1,
    }
    if sb is not None:
        for name in SANDBOX_ENGINES:
            o[f"engines.{name}.base_url"] = sb.engine_url(name)
            o[f"engines.{name}.rate"] = 50.0
            o[f"engines.{name}.concurrency"] = 2
    o.update(overrides)
    return load_settings(None, o)


def assert_status_counters_match_rows(checkpoint: Path) -> None:
    """The counters the triggers keep (what ``carcrawl status`` reads) equal a count of the rows."""
    from carcrawl.store import open_readonly
    from carcrawl.store.status import row_counters, trigger_counters

    con = open_readonly(checkpoint)
    try:
        kept = trigger_counters(con)
        assert kept is not None, f"{checkpoint}: no counters"
        counted = {table: {k: v for k, v in groups.items() if v[0]} for table, groups in row_counters(con).items()}
        assert kept == {t: g for t, g in counted.items() if g}
    finally:
        con.close()
