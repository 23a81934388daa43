"""Plain test helpers (import with ``from helpers import ...``): paths and a real loopback server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

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
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
